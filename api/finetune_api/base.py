"""Base model shared by every API object: camelCase on the wire, unknown fields rejected."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads of its custom objects; everything else is kept
    as is."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")


class CustomObject(BaseModel):
    """A custom resource as the operator reads it: ``metadata``, ``spec`` and ``status`` (the
    subclass types the last two)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    metadata: ObjectMeta

    @classmethod
    def from_body(cls, body: Any) -> Self:
        """Parse a raw object (dict or kopf Body); raises pydantic.ValidationError."""
        data = dict(body)
        return cls.model_validate({"metadata": dict(data["metadata"]),
                                   "spec": dict(data["spec"]),
                                   "status": dict(data.get("status") or {})})

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """json_schema_extra carrying CEL rules: (rule, message[, fieldPath])."""
    out = []
    for r in rules:
        item = {"rule": r[0], "message": r[1]}
        if len(r) == 3:
            item["fieldPath"] = r[2]
        out.append(item)
    return {"x-kubernetes-validations": out}
