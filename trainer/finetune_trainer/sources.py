"""Model and data sources resolved to exact bytes, pinned by the first attempt.

Before anything is loaded, rank 0 turns every source into local files and a revision:

* hub (model or dataset): the download's commit hash (``snapshot_download`` of the spec's
  ``revision``, or of the pinned commit on a later attempt);
* s3 dataset: the object's ETag and version id (a HEAD; a spec ``versionId`` is used as is);
* s3 model: each object's ETag and version id under the prefix; the revision is the sha256 of
  that listing;
* pvc and configMap: the mounted path (no revision: a volume keeps no history).

The first attempt writes them to ``<workDir>/sources.json`` (durable, before downloading);
every later attempt reads that file and uses exactly those revisions: the hub commit, the S3
version id, or (unversioned bucket) the ETag as ``If-Match``, which fails with a clear message
when the object changed. S3 downloads are cached on the job's volume under
``<workDir>/s3-cache/``, keyed by the revision, so a later attempt downloads nothing.

The other ranks wait for rank 0's ``ready-<attempt>`` marker (checking the stop flag), then use
the same local paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.spec import DatasetSource
from finetune_api.trainer_config import SOURCES_FILE, TrainerConfig
from finetune_trainer import s3
from finetune_trainer.checkpoint import write_atomic
from finetune_trainer.config import ConfigError

log = logging.getLogger(__name__)

CACHE_DIR = "s3-cache"
COMPLETE = ".complete"


class SourcesStopped(Exception):
    """SIGTERM while downloading or waiting for the sources: nothing to resume yet."""


@dataclass
class Resolved:
    role: str                 # model | dataset | evalDataset
    uri: str                  # hub://repo, s3://bucket/key, pvc://claim/path, configmap://name/key
    revision: str = ""        # hub commit, S3 ETag, or sha256 of an S3 prefix listing
    version_id: str = ""
    local: str = ""           # what the trainer reads
    objects: list[s3.ObjectRef] = field(default_factory=list)

    def pin(self) -> dict[str, Any]:
        return {"uri": self.uri, "revision": self.revision, "versionId": self.version_id,
                "objects": [o.to_wire() for o in self.objects]}

    def status(self) -> dict[str, str]:
        """The entry of the termination message (status.sources), bounded in size."""
        out = {"source": self.role, "uri": _clip(self.uri, 256),
               "revision": _clip(self.revision, 128)}
        if self.version_id:
            out["versionId"] = _clip(self.version_id, 128)
        return out


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def pins_file(work_dir: Path) -> Path:
    return work_dir / SOURCES_FILE


def load_pins(work_dir: Path) -> dict[str, dict[str, Any]]:
    p = pins_file(work_dir)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p}: cannot read the pinned sources ({e}); delete the file to "
                          "resolve the sources again") from None
    return data if isinstance(data, dict) else {}


def listing_digest(objects: list[s3.ObjectRef]) -> str:
    """The revision of an S3 prefix: sha256 over its keys, ETags and versions."""
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"{o.key}\t{o.etag}\t{o.version_id}\n".encode())
    return h.hexdigest()


def _relative(key: str, prefix: str) -> str:
    rel = key[len(prefix):].lstrip("/")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"spec.model.source.s3: the object {key!r} has an empty, '.' or '..' "
                          "path segment below the prefix and cannot be written into the model "
                          "directory; rename it")
    return rel


def _wait(cond: Callable[[], bool], stopped: Callable[[], bool], what: str) -> None:
    while not cond():
        if stopped():
            raise SourcesStopped(f"stopped while waiting for {what}")
        time.sleep(0.2)


class _Resolver:
    def __init__(self, cfg: TrainerConfig, pins: dict[str, dict[str, Any]],
                 stopped: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.work_dir = Path(cfg.paths.work_dir)
        self.pins = pins
        self.stopped = stopped

    def _pin(self, role: str, uri: str) -> dict[str, Any] | None:
        pin = self.pins.get(role)
        return pin if pin is not None and pin.get("uri") == uri else None

    def _record(self, r: Resolved) -> None:
        """Persist a newly resolved source before downloading it (every later attempt)."""
        self.pins[r.role] = r.pin()
        write_atomic(pins_file(self.work_dir), json.dumps(self.pins, indent=1, sort_keys=True))
        log.info("pinned %s %s at %s%s", r.role, r.uri, r.revision,
                 f" (version {r.version_id})" if r.version_id else "")

    # --- hub -------------------------------------------------------------------------------

    def _hub(self, role: str, repo: str, revision: str, repo_type: str,
             patterns: list[str] | None) -> tuple[Resolved, Path]:
        from huggingface_hub import snapshot_download

        from finetune_trainer.model import read_hub_token

        uri = f"hub://{repo}" if repo_type == "model" else f"hub://datasets/{repo}"
        pin = self._pin(role, uri)
        local = Path(snapshot_download(
            repo, repo_type=repo_type, revision=pin["revision"] if pin else revision,
            allow_patterns=patterns, token=read_hub_token(self.cfg.hub_token_file),
            cache_dir=str(self.work_dir / "hub-cache")))
        r = Resolved(role, uri, revision=local.name, local=str(local))  # snapshots/<commit>
        if pin is None:
            self._record(r)
        return r, local

    # --- s3 --------------------------------------------------------------------------------

    def _s3_model(self) -> Resolved:
        loc = self.cfg.spec.model.source.s3
        assert loc is not None
        prefix = loc.prefix.rstrip("/") + "/"
        uri = s3.uri(loc.bucket, prefix)
        pin = self._pin("model", uri)
        c = s3.client(loc, "model")
        if pin is not None:
            objects = [s3.ObjectRef.from_wire(o) for o in pin.get("objects", [])]
        else:
            objects = s3.list_prefix(c, loc.bucket, prefix)
        rev = listing_digest(objects)
        local = self.work_dir / CACHE_DIR / f"model-{rev[:24]}"
        r = Resolved("model", uri, revision=rev, local=str(local), objects=objects)
        if pin is None:
            self._record(r)
        if (local / COMPLETE).is_file():
            log.info("model: %s at %s from the cache (%d files)", uri, rev[:12], len(objects))
            return r
        fetched = 0
        for o in objects:
            dest = local / _relative(o.key, prefix)
            if dest.is_file() and dest.stat().st_size == o.size:
                continue  # renamed into place by an earlier, interrupted attempt: complete
            s3.download(c, loc.bucket, o, dest, self.stopped)
            fetched += 1
        write_atomic(local / COMPLETE, rev)
        log.info("model: downloaded %d of %d files of %s", fetched, len(objects), uri)
        return r

    def _s3_data(self, role: str, src: DatasetSource) -> Resolved:
        loc = src.s3
        assert loc is not None
        uri = s3.uri(loc.bucket, loc.key)
        pin = self._pin(role, uri)
        c = s3.client(loc, role)
        if pin is not None:
            (obj,) = [s3.ObjectRef.from_wire(o) for o in pin["objects"]]
        else:
            obj = s3.head(c, loc.bucket, loc.key, loc.version_id or "")
        key = hashlib.sha256(f"{uri}\t{obj.etag}\t{obj.version_id}".encode()).hexdigest()
        dest = self.work_dir / CACHE_DIR / f"{role}-{key[:24]}" / posixpath.basename(loc.key)
        r = Resolved(role, uri, revision=obj.etag, version_id=obj.version_id, local=str(dest),
                     objects=[obj])
        if pin is None:
            self._record(r)
        if dest.is_file() and dest.stat().st_size == obj.size:
            log.info("%s: %s (ETag %s) from the cache", role, uri, obj.etag)
        else:
            s3.download(c, loc.bucket, obj, dest, self.stopped)
            log.info("%s: downloaded %s (%d bytes, ETag %s)", role, uri, obj.size, obj.etag)
        return r

    # --- every source ----------------------------------------------------------------------

    def model(self) -> Resolved:
        src = self.cfg.spec.model.source
        if src.s3 is not None:
            return self._s3_model()
        if src.hub is not None:
            r, _ = self._hub("model", src.hub.repo, src.hub.revision, "model", None)
            return r
        assert src.pvc is not None
        return Resolved("model", f"pvc://{src.pvc.claim_name}/{src.pvc.path}",
                        local=self.cfg.paths.model)

    def dataset(self, role: str, src: DatasetSource, path: str) -> Resolved:
        if src.s3 is not None:
            return self._s3_data(role, src)
        if src.hub is not None:
            from finetune_trainer.data_formats import DATA_SUFFIXES, pick_split_file

            r, local = self._hub(role, src.hub.repo, src.hub.revision, "dataset",
                                 [f"*{s}" for s in DATA_SUFFIXES])
            r.local = str(pick_split_file(list(local.rglob("*")), src.hub.split, src.hub.repo))
            return r
        if src.pvc is not None:
            return Resolved(role, f"pvc://{src.pvc.claim_name}/{src.pvc.path}", local=path)
        assert src.config_map is not None
        return Resolved(role, f"configmap://{src.config_map.name}/{src.config_map.key}",
                        local=path)


def prepare(cfg: TrainerConfig, is_main: bool, tag: str,
            stopped: Callable[[], bool]) -> tuple[TrainerConfig, list[Resolved]]:
    """Resolve (rank 0) or wait for (other ranks) every source; returns the config with local
    paths and the resolved sources. Raises SourcesStopped on SIGTERM."""
    work_dir = Path(cfg.paths.work_dir)
    ready = work_dir / CACHE_DIR / f"ready-{tag}"
    if is_main:
        for old in ready.parent.glob("ready-*"):  # an earlier attempt's
            old.unlink(missing_ok=True)
        resolver = _Resolver(cfg, load_pins(work_dir), stopped)
        try:
            out = [resolver.model(),
                   resolver.dataset("dataset", cfg.spec.dataset.source, cfg.paths.dataset)]
            ev = cfg.spec.evaluation
            if ev is not None and cfg.paths.eval_dataset is not None:
                out.append(resolver.dataset("evalDataset", ev.dataset.source,
                                            cfg.paths.eval_dataset))
        except s3.DownloadStopped as e:
            raise SourcesStopped(str(e)) from None
        ready.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(ready, json.dumps([{**r.pin(), "role": r.role, "local": r.local}
                                        for r in out]), durable=False)
    else:
        _wait(ready.is_file, stopped, "rank 0 to download the model and data")
        out = [Resolved(d["role"], d["uri"], d["revision"], d["versionId"], d["local"])
               for d in json.loads(ready.read_text(encoding="utf-8"))]
    local = {r.role: r.local for r in out}
    paths = cfg.paths.model_copy(update={
        "model": local["model"], "dataset": local["dataset"],
        "eval_dataset": local.get("evalDataset", cfg.paths.eval_dataset)})
    return cfg.model_copy(update={"paths": paths}), out
