"""Pinned versions of the local control-plane components and where they are cached."""

from __future__ import annotations

import os
from pathlib import Path

KUBERNETES = "v1.36.3"
ETCD = "v3.6.16"
KWOK = "v0.8.0"
HELM = "v3.21.4"


def cache_root() -> Path:
    """Binaries live outside the checkout so fresh clones and CI reuse them."""
    override = os.environ.get("FINETUNE_CACHE_DIR")
    base = Path(override) if override else Path.home() / ".cache" / "finetune-operator"
    return base


def bin_dir(component: str, version: str) -> Path:
    return cache_root() / f"{component}-{version}" / "bin"
