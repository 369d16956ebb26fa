"""Progress reports as the report channel hands them on: typed (``reports.model``)."""

from __future__ import annotations

from typing import Any

from finetune_operator.reports.model import ProgressReport


def report(wire: dict[str, Any]) -> ProgressReport:
    """A report from its wire form (camelCase keys), validated as the channel does."""
    return ProgressReport.model_validate(wire)
