"""The FineTuneJob resource as a whole, and its identity on the API server."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus

GROUP = "finetune.dev"
VERSION = "v1alpha1"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]
API_VERSION = f"{GROUP}/{VERSION}"


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class FineTuneJob(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus = Field(default_factory=FineTuneJobStatus)

    @classmethod
    def from_body(cls, body: Any) -> FineTuneJob:
        """Parse a raw object (dict or kopf Body); raises pydantic.ValidationError."""
        data = dict(body)
        data.setdefault("status", {})
        return cls.model_validate(
            {"metadata": dict(data["metadata"]), "spec": dict(data["spec"]),
             "status": dict(data.get("status") or {})}
        )

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"
