"""API models: the single source of the FineTuneJob CRD and the trainer config."""

from finetune_api.base import ObjectMeta
from finetune_api.job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import Condition, FineTuneJobStatus

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "Condition", "FineTuneJob",
    "FineTuneJobSpec", "FineTuneJobStatus", "ObjectMeta",
]
