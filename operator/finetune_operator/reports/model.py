"""Strict models of everything a trainer pod reports: progress reports and the termination
message (docs/contracts.md "Progress channel").

A pod runs code the operator does not control (``spec.image`` is the tenant's), so its reports
are parsed like hostile input, once, at the edge: a size limit before anything is decoded, a
nesting-depth scan before ``json.loads``, no NaN/Infinity, no duplicate keys, then one pydantic
model in strict mode (no bool-as-int, no "12" as 12), with bounds on every number, length limits
on every string and relative, ``..``-free paths; numbers and times that steer the operator (save
time, ETA, loss, ...) are then clamped to plausible ranges, and times are written zero-padded.
Whatever passes can go to status and metrics unchecked; whatever fails raises
:class:`BadReport` with a reason from :data:`REJECT_REASONS` (a small fixed set: the ``reason``
label of ``finetune_report_rejected_total``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_api.times import parse_rfc3339, rfc3339

MAX_REPORT_BYTES: Final = 16 * 1024
MAX_TERMINATION_BYTES: Final = 4096  # what the kubelet keeps of a termination message
MAX_DEPTH: Final = 4  # report -> checkpoint -> value; termination -> metrics/checkpoint -> value
MAX_INT: Final = 2**53 - 1  # exact in every JSON implementation (and in float64 gauges)
MAX_PATH: Final = 256
MAX_MESSAGE: Final = 1024
MAX_METRICS: Final = 32
# Numbers that steer the operator are clamped to these ranges (a report that passes the types
# is kept; its values are made harmless): saveSeconds sizes the next pod's grace period (also
# capped by the operator setting max_grace_period_seconds), etaSeconds the expected end.
MAX_SAVE_SECONDS: Final = 86400.0  # one day
MAX_ETA_SECONDS: Final = 31536000.0  # one year
MAX_LOSS: Final = 1e6
MAX_LEARNING_RATE: Final = 10.0
MAX_EPOCH: Final = 1e6
MAX_RATE: Final = 1e12  # tokens per second
MAX_METRIC: Final = 1e15

# The reason label of finetune_report_rejected_total. Fixed: never a tenant-chosen string.
REJECT_REASONS: Final = (
    "unauthenticated",  # no token, or TokenReview said no / wrong audience / not a pod's token
    "too-large",        # body over MAX_REPORT_BYTES (termination message over 4 KiB)
    "rate-limited",     # the pod reports faster than the server allows
    "not-json",         # not UTF-8 JSON, NaN/Infinity, duplicate keys, not an object
    "too-deep",         # nested deeper than MAX_DEPTH
    "invalid",          # JSON, but not the model (types, bounds, extra keys, paths)
    "unknown-pod",      # authenticated, but the operator does not expect reports from it
)
RejectReason = Literal[
    "unauthenticated", "too-large", "rate-limited", "not-json", "too-deep", "invalid",
    "unknown-pod",
]


class BadReport(ValueError):
    """A report that is dropped. ``reason`` is one of :data:`REJECT_REASONS`; ``detail`` is for
    the operator's log (it may quote the pod's input, shortened), never for a status."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


# ---- field types -----------------------------------------------------------------------------

Count = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
Real = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1e300, le=1e300)]
NonNegReal = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=1e300)]


def clamped(low: float, high: float) -> AfterValidator:
    """Clamp a number that passed its type and bounds to [low, high]."""
    return AfterValidator(lambda v: min(max(v, low), high))

_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
_METRIC_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_./:-]{0,63}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _relative_path(value: str) -> str:
    """A path relative to the job's work dir: segments of [A-Za-z0-9._-], no '.' or '..'."""
    if value == "":
        return value
    if len(value) > MAX_PATH:
        raise ValueError(f"path is longer than {MAX_PATH} characters")
    if value.startswith("/"):
        raise ValueError("path must be relative to the job's work dir, not absolute")
    for seg in value.split("/"):
        if seg in (".", ".."):
            raise ValueError("path must not contain '.' or '..' segments")
        if not _SEGMENT.fullmatch(seg):
            raise ValueError("path segments may only use letters, digits, '.', '_' and '-'")
    return value


def _rfc3339(value: Any) -> Any:
    """An RFC 3339 timestamp string -> aware UTC datetime ('' -> None)."""
    if value is None or isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    if value == "":
        return None
    return parse_rfc3339(value)


def _rfc3339_text(value: dt.datetime | None) -> str | None:
    return None if value is None else rfc3339(value)


Timestamp = Annotated[
    dt.datetime | None,
    BeforeValidator(_rfc3339),
    PlainSerializer(_rfc3339_text, return_type=str | None),
]
RelPath = Annotated[str, Field(strict=True, max_length=MAX_PATH), AfterValidator(_relative_path)]
# spec.output.s3's URIs and the pinned sources (issue 26): bounded, printable, no control chars.
MAX_URI: Final = 1100  # s3:// + a 63-character bucket + a 1024-character prefix + /merged/
S3Uri = Annotated[str, Field(strict=True, max_length=MAX_URI,
                             pattern=r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\x00-\x1f\x7f]*)?$")]
SourceUri = Annotated[str, Field(strict=True, max_length=256,
                                 pattern=r"^[a-z0-9]{1,16}://[^\x00-\x1f\x7f]*$")]
Revision = Annotated[str, Field(strict=True, max_length=128, pattern=r"^[A-Za-z0-9._:+/=-]*$")]


def _message(value: Any) -> Any:
    """Control characters (except newline/tab) dropped; cut to MAX_MESSAGE characters."""
    if not isinstance(value, str):
        return value  # the str type rejects it
    value = _CONTROL.sub("", value)
    return value if len(value) <= MAX_MESSAGE else value[: MAX_MESSAGE - 12] + " [truncated]"


def _metrics(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) > MAX_METRICS:
            raise ValueError(f"at most {MAX_METRICS} metrics")
        for key in value:
            if not isinstance(key, str) or not _METRIC_KEY.fullmatch(key):
                raise ValueError("metric names are 1-64 characters of [A-Za-z0-9_./:-]")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=False,  # camelCase keys only: one spelling per field
        extra="forbid",
        strict=True,
        frozen=True,
        hide_input_in_errors=True,  # errors name the field, never echo the pod's value
    )

    def to_wire(self) -> dict[str, Any]:
        """camelCase JSON-ready dict without unset optionals (timestamps as ...Z strings)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class CheckpointReport(_Strict):
    step: Count
    path: RelPath
    saved_at: Timestamp = None
    save_seconds: Annotated[NonNegReal, clamped(0, MAX_SAVE_SECONDS)] | None = None


MAX_GPU_BYTES: Final = 2**50  # 1 PiB: an estimate part beyond it is not one GPU's
GpuBytes = Annotated[int, Field(strict=True, ge=0, le=MAX_GPU_BYTES)]


class GpuMemoryReport(_Strict):
    """The trainer's GPU memory estimate per GPU from config.json (status.gpuMemory)."""

    per_gpu: GpuBytes
    weights: GpuBytes = 0
    gradients: GpuBytes = 0
    optimizer: GpuBytes = 0
    activations: GpuBytes = 0
    overhead: GpuBytes = 0
    margin: GpuBytes = 0
    parameters: Annotated[int, Field(strict=True, ge=0, le=10**13)] = 0
    trainable: Annotated[int, Field(strict=True, ge=0, le=10**13)] = 0
    share: GpuBytes | None = None
    source: Literal["trainer"] = "trainer"


class ProgressReport(_Strict):
    """One progress report (docs/contracts.md). Every field is bounded; see module doc."""

    step: Count
    total_steps: Count | None = None
    epoch: Annotated[NonNegReal, clamped(0, MAX_EPOCH)] | None = None
    loss: Annotated[Real, clamped(-MAX_LOSS, MAX_LOSS)] | None = None
    learning_rate: Annotated[NonNegReal, clamped(0, MAX_LEARNING_RATE)] | None = None
    tokens_per_second: Annotated[NonNegReal, clamped(0, MAX_RATE)] | None = None
    eta_seconds: Annotated[NonNegReal, clamped(0, MAX_ETA_SECONDS)] | None = None
    updated_at: Timestamp = None
    resumed_from_step: Count | None = None
    state: Literal["loading", "training", "saving", "done"] | None = None
    checkpoint: CheckpointReport | None = None
    gpu_memory: GpuMemoryReport | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProgressReport:
        if self.total_steps and self.step > self.total_steps:
            raise ValueError("step is greater than totalSteps")
        return self


class SourceReport(_Strict):
    """One resolved source: which bytes the attempt trained on (status.sources)."""

    source: Literal["model", "dataset", "evalDataset"]
    uri: SourceUri
    revision: Revision = ""
    version_id: Revision = ""


class TerminationMessage(_Strict):
    """The trainer's last word, written to the termination log at exit."""

    reason: Literal["Completed", "Preempted", "Error"]
    message: Annotated[str, BeforeValidator(_message)] = ""
    final_step: Count = 0
    adapter_path: RelPath = ""
    merged_path: RelPath = ""
    metrics: Annotated[
        dict[str, Annotated[Real, clamped(-MAX_METRIC, MAX_METRIC)]], BeforeValidator(_metrics)
    ] = Field(default_factory=dict)
    checkpoint: CheckpointReport | None = None
    adapter_uri: S3Uri | None = None
    merged_uri: S3Uri | None = None
    sources: list[SourceReport] | None = Field(default=None, max_length=3)
    # why it failed, when the trainer knows a cause the operator acts on (issue 24)
    cause: Literal["GPUMemoryExceeded"] | None = None


_M = TypeVar("_M", bound=_Strict)


# ---- parsing ---------------------------------------------------------------------------------


def _depth_at_most(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests arrays/objects at most ``limit`` deep (strings skipped).

    Runs before ``json.loads`` so a pathological body never reaches the recursive decoder."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key[:40]!r}")
        out[key] = value
    return out


def _decode(raw: bytes | str, limit: int) -> dict[str, Any]:
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > limit:
        raise BadReport("too-large", f"{size} bytes, more than the limit of {limit}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadReport("not-json", "not UTF-8") from None
    if not _depth_at_most(text, MAX_DEPTH):
        raise BadReport("too-deep", f"nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:
        raise BadReport("not-json", str(e)[:120]) from None
    if not isinstance(value, dict):
        raise BadReport("not-json", f"a JSON {type(value).__name__}, not an object")
    return value


def _explain(e: ValidationError) -> str:
    """Field paths and messages only (no input values: they are the pod's)."""
    parts = []
    for err in e.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(report)"
        parts.append(f"{loc}: {err['msg']}"[:160])
    return "; ".join(parts)


def _validate(model: type[_M], raw: bytes | str, limit: int) -> _M:
    value = _decode(raw, limit)
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise BadReport("invalid", _explain(e)) from None


def parse_report(raw: bytes) -> ProgressReport:
    """A progress report body -> :class:`ProgressReport`, or :class:`BadReport`."""
    return _validate(ProgressReport, raw, MAX_REPORT_BYTES)


def check_termination(raw: str) -> TerminationMessage:
    """A termination message -> :class:`TerminationMessage`, or :class:`BadReport`."""
    return _validate(TerminationMessage, raw, MAX_TERMINATION_BYTES)


def parse_termination(
    raw: str, on_reject: Callable[[BadReport], None] | None = None
) -> TerminationMessage | None:
    """The trainer's termination message, or None. Never raises.

    None for an empty message, for plain text (``FallbackToLogsOnError`` puts the log tail
    there when a trainer crashes before writing one: not a rejection) and for anything that
    looks like JSON but is not a valid message (then ``on_reject`` is called with the reason,
    e.g. to count and log it)."""
    try:
        if not raw or not raw.lstrip().startswith("{"):
            return None
        return check_termination(raw)
    except BadReport as e:
        if on_reject is not None:
            on_reject(e)
        return None
    except Exception as e:  # the contract: whatever the pod wrote, the caller gets None
        if on_reject is not None:
            on_reject(BadReport("invalid", f"{type(e).__name__}"))
        return None

