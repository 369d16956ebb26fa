"""The config the operator writes (ConfigMap) and the trainer reads: one schema, no drift.

It embeds the job's FineTuneJobSpec unchanged, plus where things are mounted in the pod.
"""

from __future__ import annotations

from pydantic import Field

from finetune_api.base import ApiModel
from finetune_api.spec import FineTuneJobSpec

# Mount points inside trainer pods (the builders and the local node agent use the same ones).
MODEL_MOUNT = "/mnt/model"
DATASET_MOUNT = "/mnt/dataset"
EVAL_DATASET_MOUNT = "/mnt/eval-dataset"
CHECKPOINT_MOUNT = "/mnt/checkpoints"
CONFIG_MOUNT = "/etc/finetune"
CONFIG_FILE = "config.yaml"

# The projected ServiceAccount token trainers authenticate their reports with (build/pod.py).
REPORT_TOKEN_DIR = "/var/run/secrets/finetune.dev/report"
REPORT_TOKEN_FILE = f"{REPORT_TOKEN_DIR}/token"

# S3 credentials reach the trainer as environment variables from the job's Secrets
# (spec.*.s3.credentialsSecret), one set per role so sources and output may use different ones:
# FINETUNE_S3_<ROLE>_<KEY>, the Secret keys being the usual AWS names. Never in the ConfigMap.
S3_ROLES = ("model", "dataset", "evalDataset", "output")
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
# The trainer's record of the resolved sources on the job's volume (<workDir>/<this>).
SOURCES_FILE = "sources.json"


def s3_env_name(role: str, key: str) -> str:
    """FINETUNE_S3_MODEL_AWS_ACCESS_KEY_ID, FINETUNE_S3_EVALDATASET_AWS_SECRET_ACCESS_KEY, ..."""
    if role not in S3_ROLES or key not in S3_CREDENTIAL_KEYS:
        raise ValueError(f"unknown S3 role {role!r} or key {key!r}")
    return f"FINETUNE_S3_{role.upper()}_{key}"


class JobRef(ApiModel):
    namespace: str
    name: str
    uid: str


class TrainerPaths(ApiModel):
    model: str = Field(description="local directory of the model, the hub repo id, or the "
                       "s3:// URI of the model's prefix")
    dataset: str = Field(description="local file (jsonl/json), the hub dataset repo id, or the "
                         "s3:// URI of the data file")
    work_dir: str = Field(
        description="per-job directory on the checkpoint volume, keyed by the job uid: "
        "checkpoints/, output/, logs/ live under it"
    )
    eval_dataset: str | None = Field(
        default=None, description="spec.evaluation's test set: local file, or the hub repo id")


class ReportConfig(ApiModel):
    """Where the trainer POSTs its progress reports (the operator's report channel)."""

    url: str = Field(description="https URL of the operator's POST /v1/reports endpoint")
    ca_pem: str = Field(description="PEM of the CA the trainer verifies the operator's "
                        "certificate with (public; no secret)")
    token_file: str = Field(
        default=REPORT_TOKEN_FILE,
        description="projected ServiceAccount token (audience: the operator); read at every "
        "report, since the kubelet rotates it",
    )


class ProgressConfig(ApiModel):
    file: str | None = Field(default=None, description="also write each report to this JSON file")
    min_interval_seconds: float = Field(default=5.0, ge=0.0)


class TrainerConfig(ApiModel):
    job: JobRef
    spec: FineTuneJobSpec
    paths: TrainerPaths
    progress: ProgressConfig = Field(default_factory=ProgressConfig)
    report: ReportConfig | None = Field(
        default=None, description="the operator's report endpoint; none = no progress push"
    )
    termination_log: str = "/dev/termination-log"
    hub_token_file: str | None = Field(
        default=None, description="file holding the hub token (mounted Secret); never logged"
    )
