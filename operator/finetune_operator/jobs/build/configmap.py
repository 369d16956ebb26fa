"""The trainer config (docs/contracts.md) and the ConfigMap ``<job>-config`` that carries it.

The ConfigMap never holds a secret value: a hub token is a mounted Secret and the config only
names the file (``hubTokenFile``).
"""

from __future__ import annotations

import posixpath
from typing import Any

import yaml

from finetune_api.job import FineTuneJob
from finetune_api.spec import DatasetSource, SecretKeyRef
from finetune_api.trainer_config import (
    CHECKPOINT_MOUNT,
    CONFIG_FILE,
    CONFIG_MOUNT,
    DATASET_MOUNT,
    EVAL_DATASET_MOUNT,
    MODEL_MOUNT,
    JobRef,
    ReportConfig,
    TrainerConfig,
    TrainerPaths,
)
from finetune_operator.jobs.build.names import config_map_name, metadata

CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_FILE}"
HUB_TOKEN_MOUNT = "/var/run/secrets/finetune/hub"
HUB_TOKEN_FILE = "token"


def work_dir(job: FineTuneJob) -> str:
    """The job's own directory on the checkpoint volume, keyed by namespace/name/uid."""
    m = job.metadata
    return f"{CHECKPOINT_MOUNT}/finetune/{m.namespace}/{m.name}/{m.uid}"


def model_path(job: FineTuneJob) -> str:
    src = job.spec.model.source
    if src.pvc is not None:
        return _join(MODEL_MOUNT, src.pvc.path)
    if src.s3 is not None:
        return f"s3://{src.s3.bucket}/{src.s3.prefix}"
    assert src.hub is not None  # exactly one source (validated by the model)
    return src.hub.repo


def _source_path(src: DatasetSource, mount: str) -> str:
    if src.pvc is not None:
        return _join(mount, src.pvc.path)
    if src.config_map is not None:
        return f"{mount}/{src.config_map.key}"
    if src.s3 is not None:
        return f"s3://{src.s3.bucket}/{src.s3.key}"
    assert src.hub is not None
    return src.hub.repo


def dataset_path(job: FineTuneJob) -> str:
    return _source_path(job.spec.dataset.source, DATASET_MOUNT)


def eval_dataset_path(job: FineTuneJob) -> str | None:
    """spec.evaluation's test set in the pod (mounted at EVAL_DATASET_MOUNT), if any."""
    ev = job.spec.evaluation
    return None if ev is None else _source_path(ev.dataset.source, EVAL_DATASET_MOUNT)


def uses_hub(job: FineTuneJob) -> bool:
    """Whether the model or a dataset comes from a hub (else HF_HUB_OFFLINE=1)."""
    ev = job.spec.evaluation
    return (job.spec.model.source.hub is not None or job.spec.dataset.source.hub is not None
            or (ev is not None and ev.dataset.source.hub is not None))


def s3_credentials(job: FineTuneJob) -> list[tuple[str, str]]:
    """(role, Secret name) of every S3 source and output that names credentials: the pod gets
    each Secret's keys as FINETUNE_S3_<ROLE>_* environment variables (build/pod.py)."""
    spec = job.spec
    locs = [("model", spec.model.source.s3), ("dataset", spec.dataset.source.s3),
            ("evalDataset", spec.evaluation.dataset.source.s3 if spec.evaluation else None),
            ("output", spec.output.s3)]
    return [(role, loc.credentials_secret) for role, loc in locs
            if loc is not None and loc.credentials_secret]


def hub_token_ref(job: FineTuneJob) -> SecretKeyRef | None:
    """The Secret key holding the hub token: the model's, else the dataset's.

    The trainer config has a single ``hubTokenFile``; when the model and the dataset name
    different secrets, the model's wins.
    """
    model_hub = job.spec.model.source.hub
    if model_hub is not None and model_hub.token_secret_ref is not None:
        return model_hub.token_secret_ref
    data_hub = job.spec.dataset.source.hub
    if data_hub is not None and data_hub.token_secret_ref is not None:
        return data_hub.token_secret_ref
    return None


def trainer_config(job: FineTuneJob, report: ReportConfig | None = None) -> TrainerConfig:
    """``report`` is the operator's running report endpoint (URL + CA), or None (no push)."""
    m = job.metadata
    return TrainerConfig(
        job=JobRef(namespace=m.namespace, name=m.name, uid=m.uid),
        spec=job.spec,
        paths=TrainerPaths(
            model=model_path(job), dataset=dataset_path(job), work_dir=work_dir(job),
            eval_dataset=eval_dataset_path(job),
        ),
        hub_token_file=(
            f"{HUB_TOKEN_MOUNT}/{HUB_TOKEN_FILE}" if hub_token_ref(job) is not None else None
        ),
        report=report,
    )


def config_yaml(config: TrainerConfig) -> str:
    return yaml.safe_dump(config.to_wire(), sort_keys=False, default_flow_style=False)


def build_config_map(job: FineTuneJob, report: ReportConfig | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, config_map_name(job.metadata.name)),
        "data": {CONFIG_FILE: config_yaml(trainer_config(job, report))},
    }


def _join(mount: str, path: str) -> str:
    return posixpath.normpath(posixpath.join(mount, path)) if path else mount
