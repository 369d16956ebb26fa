"""Shared (interned) spec models: jobs whose spec, or parts of it, are equal share one parsed
object. A parsed FineTuneJobSpec costs ~7.5 KB of Python objects; jobs made from one template
(a sweep, a team's pipeline) differ in a field or two, so most sub-models (model, dataset,
training, resources, ...) are equal across thousands of jobs. Specs are never mutated after
parsing (the state machine copies only the status), which is what makes sharing safe."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)
_MAX = 8192
_table: OrderedDict[tuple[type, str], BaseModel] = OrderedDict()


def intern(model: M) -> M:
    """The shared instance equal to ``model`` (its nested models interned first)."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            shared = intern(value)
            if shared is not value:
                updates[name] = shared
    if updates:
        model = model.model_copy(update=updates)
    key = (type(model), model.model_dump_json())
    hit = _table.get(key)
    if hit is not None:
        _table.move_to_end(key)
        return hit  # type: ignore[return-value]
    _table[key] = model
    if len(_table) > _MAX:
        _table.popitem(last=False)
    return model
