"""Equal specs share one parsed object; different ones never do."""

from __future__ import annotations

from finetune_operator.kube.intern import intern
from tests.builders.jobs import make_job


def test_equal_specs_and_sub_models_are_shared() -> None:
    a = intern(make_job("a", gpus=2).spec)
    b = intern(make_job("b", gpus=2).spec)
    c = intern(make_job("c", gpus=4).spec)
    assert a is b
    assert c is not a and c.resources.gpus == 4 and a.resources.gpus == 2
    assert c.training is a.training and c.dataset is a.dataset  # the equal parts are shared
    assert c.model_dump() == make_job("c", gpus=4).spec.model_dump()
