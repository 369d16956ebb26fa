"""Trainer fixtures: a tiny model and tokenizer built locally (no network)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune_dev.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3-compatible store (SeaweedFS, built from the Go module proxy on first use and
    cached under ~/.cache/finetune-operator) on free local ports; stopped after the session."""
    from finetune_dev import s3server

    server = s3server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()
