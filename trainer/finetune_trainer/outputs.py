"""After a successful run: the model card next to each exported directory, then the upload to
``spec.output.s3`` (the adapter, and the merged model when asked), whose URIs go back to the
operator in the termination message (status.output)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetune_api.trainer_config import TrainerConfig
from finetune_trainer import model_card, s3
from finetune_trainer.sources import Resolved

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    adapter_uri: str = ""
    merged_uri: str = ""


def publish(cfg: TrainerConfig, sources: list[Resolved], adapter_rel: str, merged_rel: str,
            step: int, metrics: dict[str, float], attempt: str,
            stopped: Callable[[], bool] = lambda: False) -> Published:
    """Cards, then uploads (rank 0 only). ``cfg`` is the resolved one (local model path).
    Raises s3.DownloadStopped on SIGTERM between files, ConfigError for a bucket that cannot be
    written (exit 2), anything else for retryable failures."""
    work_dir = Path(cfg.paths.work_dir)
    for rel, kind in ((adapter_rel, "adapter"), (merged_rel, "merged")):
        if rel:
            model_card.write(work_dir / rel, cfg, kind, sources, step, metrics, attempt,
                             tokenizer_dir=cfg.paths.model)
    out = cfg.spec.output.s3
    if out is None:
        return Published()
    c = s3.client(out, "output")
    prefix = out.prefix.rstrip("/")
    adapter_uri = merged_uri = ""
    if adapter_rel:
        adapter_uri = s3.upload_dir(c, out.bucket, f"{prefix}/adapter", work_dir / adapter_rel,
                                    stopped)
    if merged_rel and (out.merged or cfg.spec.method == "full"):
        merged_uri = s3.upload_dir(c, out.bucket, f"{prefix}/merged", work_dir / merged_rel,
                                   stopped)
    return Published(adapter_uri, merged_uri)
