"""The FineTuneJob resource as a whole, and its identity on the API server."""

from __future__ import annotations

from pydantic import Field

from finetune_api.base import CustomObject
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
API_VERSION = f"{GROUP}/{VERSION}"


class FineTuneJob(CustomObject):
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)
