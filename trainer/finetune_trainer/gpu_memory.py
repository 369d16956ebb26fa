"""The job's GPU memory: its estimate (reported to the operator) and its containment.

A job with ``resources.gpuMemory`` shares a GPU with others. Before the model is loaded, the
trainer caps its own CUDA caching allocator at that share
(``torch.cuda.set_per_process_memory_fraction``), so a job that needs more than it asked for
fails itself with a CUDA out-of-memory error, never its neighbour. Such a failure ends the run
with the cause ``GPUMemoryExceeded`` in the termination message (docs/contracts.md), which the
operator tells apart from other failures. ``auto`` takes the estimate of
:mod:`finetune_api.memory` from the model's ``config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.memory import (
    CUDA_CONTEXT_BYTES,
    GPU_MEMORY_EXCEEDED,
    SHARE_ENV,
    Estimate,
    EstimateError,
    estimate_from_config,
    gib,
    share_bytes,
    status_of,
)
from finetune_api.spec import FineTuneJobSpec

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 4 * 2**20  # a config.json is a few KiB; more is not a config


class GPUMemoryExceeded(RuntimeError):
    """A CUDA out-of-memory error under the job's memory cap (``resources.gpuMemory``)."""

    cause = GPU_MEMORY_EXCEEDED


@dataclass(frozen=True)
class Cap:
    share: int       # bytes the job may use per GPU (resources.gpuMemory, or the estimate)
    total: int       # bytes of the device
    fraction: float  # what the allocator was limited to (of total)

    def describe(self) -> str:
        return (f"{gib(self.share)} of the GPU's {gib(self.total)} (allocator capped at "
                f"{self.fraction:.3f} of the device, the rest of the share is the CUDA context)")


def cap_fraction(share: int, total: int, context: int = CUDA_CONTEXT_BYTES) -> float:
    """The fraction of the device the caching allocator may hold so that the process (its
    allocations plus the CUDA context, which the allocator does not count) stays within
    ``share``: (share - context) / total, within (0, 1]. Raises ValueError for a share that
    cannot even hold the context or a device without memory."""
    if total <= 0:
        raise ValueError(f"the GPU reports {total} bytes of memory")
    if share <= context:
        raise ValueError(f"resources.gpuMemory {gib(share)} does not hold the CUDA context "
                         f"({gib(context)}); ask for more")
    return min(1.0, (share - context) / total)


def read_model_config(model_dir: str) -> dict[str, Any] | None:
    """The model's config.json (None when the model is not a local directory or has none)."""
    p = Path(model_dir) / "config.json"
    try:
        if not p.is_file() or p.stat().st_size > MAX_CONFIG_BYTES:
            return None
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def env_share(environ: Mapping[str, str]) -> int | None:
    """The share the operator gave this attempt (``FINETUNE_GPU_MEMORY_SHARE``: its DRA claim's
    memory, raised after an attempt ran out), bounded; None when unset or unreadable."""
    raw = environ.get(SHARE_ENV, "")
    if not raw.isdigit() or len(raw) > 16:
        return None
    value = int(raw)
    return value if 2**30 <= value <= 2**40 else None


def plan(spec: FineTuneJobSpec, model_config: dict[str, Any] | None,
         environ: Mapping[str, str] | None = None,
         ) -> tuple[Estimate | None, int | None, str]:
    """(the estimate, the share in bytes per GPU or None, a note) for this job: the share the
    operator set for this attempt when it set one, else resources.gpuMemory. A share of
    ``auto`` without an estimate is None: the job then runs uncapped, and the note says why."""
    if spec.resources.gpus == 0:
        return None, None, ""
    est: Estimate | None = None
    note = ""
    if model_config is not None:
        try:
            est = estimate_from_config(spec, model_config)
        except EstimateError as e:
            note = f"no GPU memory estimate: {e}"
    else:
        note = "no GPU memory estimate: the model directory has no readable config.json"
    share = env_share(environ if environ is not None else os.environ) or share_bytes(spec, est)
    if spec.resources.gpu_memory == "auto" and share is None:
        note += "; resources.gpuMemory auto cannot cap the job without it"
    return est, share, note


def report_of(est: Estimate | None, cap: Cap | None) -> dict[str, Any] | None:
    """The ``gpuMemory`` object of a progress report (camelCase), or None."""
    if est is None:
        return None
    st = status_of(est, "trainer", cap.share if cap else None)
    # the operator's own fields (the share it gave, its raises) are not the trainer's to report
    return st.model_dump(by_alias=True, exclude_none=True,
                         exclude={"message", "request", "raises", "attempt_share"})


def apply_cap(share: int, device: int) -> Cap:
    """Cap this process's CUDA caching allocator on ``device`` at ``share`` bytes (before the
    model is loaded). A share above the device's memory leaves it uncapped (fraction 1)."""
    import torch

    total = int(torch.cuda.get_device_properties(device).total_memory)
    fraction = cap_fraction(share, total)
    if share > total:
        log.warning("resources.gpuMemory %s is more than the GPU's %s: the job may use all of "
                    "it", gib(share), gib(total))
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    cap = Cap(share=share, total=total, fraction=fraction)
    log.info("GPU memory: capped at %s", cap.describe())
    return cap


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a CUDA out-of-memory error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def classify(exc: BaseException, cap: Cap | None, est: Estimate | None
             ) -> GPUMemoryExceeded | None:
    """The ``GPUMemoryExceeded`` failure an exception means, or None: only a CUDA
    out-of-memory error while the job was capped at its share is one (uncapped, the job had
    the whole GPU and the usual failure handling applies)."""
    if cap is None or not is_cuda_oom(exc):
        return None
    said = f"; the estimate was {gib(est.total)}" if est is not None else ""
    return GPUMemoryExceeded(
        f"{GPU_MEMORY_EXCEEDED}: CUDA ran out of memory within the job's share of "
        f"{gib(cap.share)} per GPU (resources.gpuMemory){said}: raise resources.gpuMemory, or "
        "lower training.batchSize / dataset.cutoffLen, or enable "
        "training.gradientCheckpointing")
