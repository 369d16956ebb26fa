"""Operator settings: environment variables (docs/contracts.md "Operator settings"), mirrored by
the Helm values and overridable by command-line flags.

Every setting ``foo_bar`` is read from ``FINETUNE_FOO_BAR`` and from the flag ``--foo-bar``; a flag
wins over the environment. Lists are comma-separated; ``namespace_priority_classes`` is JSON.
An invalid value fails at start with a :class:`SettingsError` that names the variable (or flag).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from finetune_api.spec import DEFAULT_GPU_RESOURCE

if TYPE_CHECKING:
    from finetune_api.job import FineTuneJob

ENV_PREFIX = "FINETUNE_"
MAX_BACKOFF_SECONDS = 600.0

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ClassName = Annotated[str, StringConstraints(pattern=_DNS_SUBDOMAIN, max_length=253)]
NamespaceName = Annotated[str, StringConstraints(pattern=_DNS_LABEL, max_length=63)]
ResourceName = Annotated[
    str,
    StringConstraints(
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9._]*[a-z0-9])?$",
        max_length=253,
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the variable or flag to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdmissionSettings(_Section):
    """Who may run what and in which order: watched namespaces, priority bands, aging, limits,
    the GPU resource (docs/scheduling.md)."""

    namespaces: list[NamespaceName] = Field(
        default_factory=list, description="namespaces to watch; empty = all"
    )
    admission_mode: Literal["native", "kueue"] = Field(
        default="native", description="who decides admission: native (this operator's queue, "
        "quotas, bands and preemption) or kueue (Kueue admits each job's Workload; "
        "docs/kueue.md)")
    allowed_priority_classes: list[ClassName] = Field(
        default_factory=lambda: ["finetune-high", "finetune-normal", "finetune-low"],
        min_length=1,
        description="global allow-list of PriorityClasses a job may name (the preempting band "
        "is granted per namespace in namespace_priority_classes)",
    )
    namespace_priority_classes: dict[NamespaceName, list[ClassName]] = Field(
        default_factory=dict,
        description="per-namespace allow-list; replaces the global list for that namespace",
    )
    default_priority_class: ClassName = "finetune-normal"
    preempting_priority_classes: list[ClassName] = Field(
        default_factory=lambda: ["finetune-critical"],
        description="bands that may preempt lower-priority running jobs",
    )
    aging_rate_per_minute: float = Field(default=10.0, ge=0, allow_inf_nan=False)
    aging_cap: int = Field(default=999, ge=0)
    max_running_jobs_per_namespace: int = Field(default=0, ge=0, description="0 = unlimited")
    max_reserved_idle_share: float = Field(
        default=0.5, ge=0, le=1, allow_inf_nan=False,
        description="reservations for large aged jobs keep at most this share of the free "
        "GPUs idle while smaller work waits (docs/scheduling.md)")
    min_runtime_before_preemption_seconds: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    gpu_resource: ResourceName = DEFAULT_GPU_RESOURCE
    shared_gpu_device_class: Annotated[
        str, StringConstraints(pattern=r"^$|" + _DNS_SUBDOMAIN, max_length=253)
    ] = Field(
        default="", description="DRA DeviceClass of GPUs shared by memory (consumable "
        "capacity): a job with resources.gpuMemory, 1 GPU and 1 pod takes a share of one "
        "through a ResourceClaim; empty = no sharing, every job takes whole GPUs "
        "(docs/scheduling.md)")
    shared_gpu_driver: Annotated[
        str, StringConstraints(pattern=_DNS_SUBDOMAIN, max_length=253)
    ] = Field(
        default="gpu.finetune.dev", description="the DRA driver whose ResourceSlices publish "
        "the shareable GPUs (devices with allowMultipleAllocations and a memory capacity)")
    max_gpus_per_node: int = Field(
        default=0, ge=0, description="largest node size in GPUs: a job asking more per node "
        "fails at once; 0 = no static limit (only the grace period applies)")
    serving_preemptible: bool = Field(
        default=False, description="a preempting training job may preempt a ModelServer "
        "(default: servers are never preempted by training; docs/serving.md)")


class TrainerSettings(_Section):
    """The trainer pods the operator creates: image, pull secrets, ServiceAccount, grace period."""

    trainer_image: str = Field(
        default="localhost/finetune-operator/trainer:0.1.0", min_length=1,
        description="default trainer image; fully qualified (registry host first)")
    trainer_image_pull_secrets: list[ClassName] = Field(
        default_factory=list, description="Secrets (in each job's namespace) trainer pods pull "
        "their image with")
    trainer_service_account: Annotated[
        str, StringConstraints(pattern=_DNS_SUBDOMAIN, max_length=253)
    ] = Field(
        default="default",
        description="ServiceAccount of trainer pods (needs no RBAC: its token is only "
        "for the report channel and is not mounted for the API server)",
    )
    grace_period_seconds: int = Field(default=120, ge=1)
    max_grace_period_seconds: int = Field(
        default=600, ge=1, le=86400,
        description="cap of trainer pods' termination grace period (which grows with the "
        "save time the trainer reports): how long a stopping pod may keep its GPUs")


class CycleSettings(_Section):
    """The scheduling cycle, its API budget and the passing states (docs/operator.md)."""

    admission_interval_seconds: float = Field(
        default=5.0, gt=0, allow_inf_nan=False,
        description="the policy reruns at least this often (aging, timers) without events")
    quiet_rounds: bool = Field(
        default=True,
        description="admission decides only what changed while every waiting job is held by "
        "its own namespace's quota (docs/operator.md); off: every round walks every job")
    min_cycle_interval_seconds: float = Field(
        default=0.2, ge=0, le=60, allow_inf_nan=False,
        description="debounce: a burst of watch events makes one cycle at most this often "
        "(a new job after a quiet admission round: at once)")
    max_concurrent_writes: int = Field(default=16, ge=1, le=256,
                                       description="API writes of one cycle in flight")
    api_timeout_seconds: float = Field(default=10.0, gt=0, le=300, allow_inf_nan=False)
    api_qps: float = Field(
        default=0.0, ge=0, le=100_000, allow_inf_nan=False,
        description="API requests per second, every call of the operator together (one "
        "token bucket, like client-go's QPS); 0 = no client-side limit")
    api_burst: int = Field(
        default=0, ge=0, le=1_000_000,
        description="requests the bucket lets through at once before api_qps applies; "
        "0 = twice api_qps (at least 1)")
    backoff_base_seconds: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    progress_write_interval_seconds: float = Field(
        default=30.0, ge=0, allow_inf_nan=False,
        description="status.progress is mirrored at most this often per job")
    queue_status_writes_per_second: float = Field(
        default=5.0, gt=0, allow_inf_nan=False,
        description="queue-text rewrites of all waiting jobs together, at most this rate")
    queue_status_interval_seconds: float = Field(
        default=60.0, ge=0, allow_inf_nan=False,
        description="a waiting job's queue position/reason is rewritten at most this often")
    pods_ready_timeout_seconds: float = Field(
        default=600.0, gt=0, allow_inf_nan=False,
        description="an admitted job whose pods do not all run by then goes back to the queue")
    max_pods_ready_requeues: int = Field(
        default=3, ge=0, description="requeues for pods that never start before the job fails")
    force_delete_margin_seconds: float = Field(
        default=60.0, ge=0, allow_inf_nan=False,
        description="a pod still terminating this long after its grace period on a "
        "NotReady or deleted node is force-deleted")
    unschedulable_grace_seconds: float = Field(
        default=900.0, ge=0, allow_inf_nan=False,
        description="a job that cannot fit the cluster/quota as it is now waits this long "
        "before it fails (a quota dip or a node being replaced is a passing state)")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, le=31_536_000,
        description="default seconds a finished job is kept before it is deleted, 0 = at once "
        "(the meaning of spec.ttlSecondsAfterFinished, which overrides it); empty = keep "
        "finished jobs")
    sweeps: bool = Field(default=True, description="run FineTuneSweeps (needs their CRD)")
    serving: bool = Field(default=False, description="run ModelServers (needs their CRD; "
                          "docs/serving.md)")
    server_image: str = Field(
        default="localhost/finetune-operator/server:0.1.0", min_length=1,
        description="default ModelServer runtime image (Dockerfile.server); fully qualified")


class LeaseSettings(_Section):
    """Leader election: the Lease the active replica holds (a standby waits)."""

    lease_duration_seconds: int = Field(default=15, ge=5, le=600)
    lease_renew_seconds: float = Field(default=5.0, gt=0, allow_inf_nan=False,
                                       description="leader renews its Lease this often")
    lease_retry_seconds: float = Field(default=2.0, gt=0, allow_inf_nan=False,
                                       description="a standby tries to acquire this often")


class EndpointSettings(_Section):
    """The health and metrics listeners."""

    health_port: Port = 8081
    health_stale_cycles: int = Field(
        default=10, ge=1, description="/healthz fails when the leader completed no cycle "
        "for this many admission intervals (plus 30 s)")
    metrics_port: Port = Field(default=8080, description="HTTPS port of /metrics (a bearer "
                               "token allowed to get the non-resource URL /metrics is needed)")
    metrics_tls_cert_file: str = Field(
        default="", description="serving certificate of /metrics (PEM); empty = the report "
        "channel's certificate")
    metrics_tls_key_file: str = Field(default="", description="its private key (PEM)")


class ReportSettings(_Section):
    """The report channel: trainers POST progress over HTTPS (docs/contracts.md)."""

    report_port: Port = Field(default=8443, description="HTTPS port trainers POST reports to")
    report_url: str = Field(
        default="", pattern=r"^(https://[^\s/?#]+(/[^\s?#]*)?)?$", max_length=2048,
        description="URL trainers POST reports to; empty = https://finetune-operator-reports."
        "<POD_NAMESPACE>.svc:<report port>/v1/reports, or https://127.0.0.1:<port>/v1/reports "
        "when the operator runs outside a cluster",
    )
    report_audience: str = Field(
        default="finetune.dev/operator", min_length=1, max_length=253,
        description="audience of the trainers' projected ServiceAccount tokens",
    )
    report_tls_cert_file: str = Field(
        default="", description="serving certificate (PEM); empty = a self-signed CA and "
        "certificate made at start (local development)",
    )
    report_tls_key_file: str = Field(default="", description="its private key (PEM)")
    report_tls_ca_file: str = Field(
        default="", description="CA bundle trainers verify the certificate with "
        "(default: the certificate file itself)",
    )
    report_request_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, allow_inf_nan=False,
        description="a report-port connection has this long for its TLS handshake and its "
        "whole request (headers and body), however slowly it sends; then it is closed")
    report_max_connections_per_address: int = Field(
        default=8, ge=1, le=1024,
        description="report-port connections served at once from one source address (32 in "
        "all); more are closed at once")
    report_reviews_per_second: float = Field(
        default=20.0, gt=0, le=10_000, allow_inf_nan=False,
        description="TokenReviews and SubjectAccessReviews the report port may send, all "
        "callers together (bursts of 5 seconds' worth); past it a caller gets 503 and "
        "Retry-After")


class OperatorSettings(BaseModel):
    """Every setting, grouped by the part of the operator that reads it. Each setting keeps its
    flat name: ``FINETUNE_<NAME>``, ``--<name>``; ``settings.<section>.<name>`` in code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    trainer: TrainerSettings = Field(default_factory=TrainerSettings)
    cycle: CycleSettings = Field(default_factory=CycleSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    endpoints: EndpointSettings = Field(default_factory=EndpointSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        """Flat ``{setting: value}`` (the environment, flags, tests) -> sections; a nested
        ``{section: {...}}`` passes as it is. Unknown names stay at the top and are refused."""
        if not isinstance(data, Mapping):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            section = SECTION_OF.get(key)
            if section is None:
                out[key] = value
            else:
                out.setdefault(section, {})[key] = value
        return out

    def value(self, name: str) -> Any:
        """A setting by its (flat) name, e.g. ``value("aging_cap")``."""
        return getattr(getattr(self, SECTION_OF[name]), name)

    def replace(self, **changes: Any) -> OperatorSettings:
        """A copy with some settings changed, by flat name, validated like the environment."""
        flat = {name: self.value(name) for name in SECTION_OF}
        flat.update(changes)
        return type(self).model_validate(flat)

    @model_validator(mode="after")
    def _consistent(self) -> OperatorSettings:
        trainer, admission = self.trainer, self.admission
        if trainer.grace_period_seconds > trainer.max_grace_period_seconds:
            raise ValueError(
                f"{env_name('grace_period_seconds')}={trainer.grace_period_seconds} is more than "
                f"{env_name('max_grace_period_seconds')}={trainer.max_grace_period_seconds}; "
                "lower the first or raise the second"
            )
        if admission.default_priority_class not in admission.allowed_priority_classes:
            raise ValueError(
                f"{env_name('default_priority_class')}={admission.default_priority_class} is not "
                f"in {env_name('allowed_priority_classes')} "
                f"({', '.join(admission.allowed_priority_classes)}); add it there or pick one of "
                "these"
            )
        for ns, classes in admission.namespace_priority_classes.items():
            if not classes:
                raise ValueError(
                    f"{env_name('namespace_priority_classes')}: namespace {ns} has an empty list, "
                    "which would reject every job there; remove the entry to use the global list"
                )
        ports = ("metrics_port", "health_port", "report_port")
        for i, a in enumerate(ports):
            for b in ports[i + 1:]:
                if self.value(a) == self.value(b):
                    raise ValueError(
                        f"{env_name(a)} and {env_name(b)} are both {self.value(a)}; "
                        "give them different ports"
                    )
        for cert, key in (("report_tls_cert_file", "report_tls_key_file"),
                          ("metrics_tls_cert_file", "metrics_tls_key_file")):
            if bool(self.value(cert)) != bool(self.value(key)):
                raise ValueError(
                    f"{env_name(cert)} and {env_name(key)} go together; set both (or neither, "
                    "for the default certificate)"
                )
        return self

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from ``FINETUNE_*`` variables (``os.environ`` when none is given)."""
        return _build(_raw_from_env(os.environ if environ is None else environ), sources={})

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> OperatorSettings:
        """Settings from the environment, overridden by the flags of :func:`add_arguments`."""
        raw = _raw_from_env(os.environ if environ is None else environ)
        sources: dict[str, str] = {}
        for field in SECTION_OF:
            value = getattr(args, field, None)
            if value is not None:
                raw[field] = _parse_text(field, value, flag_name(field))
                sources[field] = flag_name(field)
        return _build(raw, sources)

    def as_env(self) -> dict[str, str]:
        """The settings as ``FINETUNE_*`` variables (``from_env(s.as_env()) == s``)."""
        out: dict[str, str] = {}
        for field in SECTION_OF:
            value = self.value(field)
            if isinstance(value, list):
                text = ",".join(value)
            elif isinstance(value, dict):
                text = json.dumps(value, sort_keys=True)
            elif value is None:
                text = ""
            else:
                text = str(value)
            out[env_name(field)] = text
        return out

    # ---- policy helpers ------------------------------------------------------------------

    def watches(self, namespace: str) -> bool:
        """Whether the operator handles jobs in this namespace."""
        return not self.admission.namespaces or namespace in self.admission.namespaces

    def allowed_classes(self, namespace: str) -> list[str]:
        """PriorityClasses a job in this namespace may name (configured order)."""
        a = self.admission
        return list(a.namespace_priority_classes.get(namespace, a.allowed_priority_classes))

    def may_preempt(self, priority_class: str | None) -> bool:
        """Whether jobs of this band may preempt lower-priority running jobs."""
        return (priority_class is not None
                and priority_class in self.admission.preempting_priority_classes)

    def resolve_priority_class(self, job: FineTuneJob) -> tuple[str | None, str | None]:
        """``(class, None)`` for the class the job's pods get, or ``(None, message)`` when the
        job names a class (or falls back to a default) that its namespace does not allow."""
        ns = job.metadata.namespace
        allowed = self.allowed_classes(ns)
        wanted = job.spec.priority_class_name
        if wanted is None:
            default = self.admission.default_priority_class
            if default in allowed:
                return default, None
            return None, (
                f"no priorityClassName set and the default {default} is not "
                f"allowed in namespace {ns}; allowed: {', '.join(allowed)}; "
                "set spec.priorityClassName to one of these"
            )
        if wanted in allowed:
            return wanted, None
        return None, (
            f"priorityClassName {wanted} is not allowed in namespace {ns}; "
            f"allowed: {', '.join(allowed)}; ask your platform team or pick one of these"
        )

    def resolved_report_url(self, pod_namespace: str | None) -> str:
        """The URL trainers POST reports to: the setting, else derived from the operator's
        namespace (in a cluster) or the loopback address (outside one)."""
        if self.reports.report_url:
            return self.reports.report_url
        if pod_namespace:
            return (f"https://finetune-operator-reports.{pod_namespace}.svc:"
                    f"{self.reports.report_port}"
                    "/v1/reports")
        return f"https://127.0.0.1:{self.reports.report_port}/v1/reports"

    def backoff_seconds(self, failures: int) -> float:
        """Retry delay after the n-th failure: base * 2^(n-1), at most 10 minutes."""
        if failures <= 0:
            return 0.0
        exponent = min(failures - 1, 32)  # 2^32 * base is far past the cap already
        return min(self.cycle.backoff_base_seconds * math.pow(2, exponent), MAX_BACKOFF_SECONDS)


# setting name -> its section (flat names are unique across sections)
SECTIONS: dict[str, type[_Section]] = {
    "admission": AdmissionSettings,
    "trainer": TrainerSettings,
    "cycle": CycleSettings,
    "lease": LeaseSettings,
    "endpoints": EndpointSettings,
    "reports": ReportSettings,
}
SECTION_OF: dict[str, str] = {
    name: section for section, model in SECTIONS.items() for name in model.model_fields
}



def setting_fields() -> dict[str, FieldInfo]:
    """Every setting by its flat name, with its pydantic field (default, description)."""
    return {name: model.model_fields[name] for model in SECTIONS.values()
            for name in model.model_fields}


# ---- env / flag names and parsing ---------------------------------------------------------

_LIST_FIELDS = {
    "namespaces", "allowed_priority_classes", "preempting_priority_classes",
    "trainer_image_pull_secrets",
}
_JSON_FIELDS = {"namespace_priority_classes"}
# empty text = None ("not set"), so a unit of 0 keeps its plain meaning
_OPTIONAL_FIELDS = {"ttl_seconds_after_finished"}


def env_name(field: str) -> str:
    """``aging_cap`` -> ``FINETUNE_AGING_CAP``."""
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    """``aging_cap`` -> ``--aging-cap``."""
    return "--" + field.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (default None = keep the environment's value)."""
    group = parser.add_argument_group(
        "operator settings", "each flag overrides the FINETUNE_* variable of the same name"
    )
    for field, info in setting_fields().items():
        hint = "LIST" if field in _LIST_FIELDS else "JSON" if field in _JSON_FIELDS else "VALUE"
        default = info.get_default(call_default_factory=True)
        desc = info.description or field.replace("_", " ")
        group.add_argument(
            flag_name(field),
            dest=field,
            default=None,
            metavar=hint,
            help=f"{desc} (env {env_name(field)}, default {_show(default)})",
        )


def _parse_text(field: str, text: str, where: str) -> Any:
    if field in _OPTIONAL_FIELDS and not text.strip():
        return None
    if field in _LIST_FIELDS:
        return [part.strip() for part in text.split(",") if part.strip()]
    if field in _JSON_FIELDS:
        if not text.strip():
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise SettingsError(
                f"invalid operator settings: {where}: not valid JSON ({e.msg} at position "
                f"{e.pos}); expected an object "
                'like {"team-a": ["finetune-high", "finetune-normal"]}'
            ) from None
        if not isinstance(value, dict) or not all(
            isinstance(v, list) and all(isinstance(c, str) for c in v) for v in value.values()
        ):
            raise SettingsError(
                f"invalid operator settings: {where}: expected a JSON object of namespace -> "
                "list of PriorityClass names, "
                'like {"team-a": ["finetune-high", "finetune-normal"]}'
            )
        return value
    return text.strip()


def _raw_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for field in SECTION_OF:
        name = env_name(field)
        if name in environ:
            raw[field] = _parse_text(field, environ[name], name)
    return raw


def _build(raw: dict[str, Any], sources: dict[str, str]) -> OperatorSettings:
    try:
        return OperatorSettings.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = err["loc"]
            if len(loc) > 1 and loc[0] in SECTIONS:  # (section, setting, ...) -> the setting
                loc = loc[1:]
            msg = str(err["msg"]).removeprefix("Value error, ")
            if not loc:
                problems.append(msg)
                continue
            field = str(loc[0])
            where = sources.get(field, env_name(field))
            value = raw.get(field)
            detail = ".".join(str(p) for p in loc[1:])
            problems.append(
                f"{where}={_show(value)}: {msg}" + (f" (at {detail})" if detail else "")
            )
        raise SettingsError(
            "invalid operator settings: " + "; ".join(problems)
            + "; fix the environment variable (Helm value) or flag named here"
        ) from None


def _show(value: Any) -> str:
    if isinstance(value, list):
        return repr(",".join(str(v) for v in value))
    if isinstance(value, dict):
        return repr(json.dumps(value))
    return repr(value)
