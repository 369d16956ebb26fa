"""Cluster-tier fixtures shared by several modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.builders.policy import Policy, installed_policy
from tests.kube import Cluster


@pytest.fixture
def policy(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
           make_namespace: Callable[..., str], request: pytest.FixtureRequest
           ) -> Iterator[Policy]:
    """The chart's policy; indirect parametrization deep-merges more chart values."""
    with installed_policy(cluster, make_namespace, getattr(request, "param", {})) as p:
        yield p
