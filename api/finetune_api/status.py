"""FineTuneJob status: written only by the operator."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from finetune_api.base import ApiModel

Phase = Literal["Queued", "Admitted", "Running", "Preempting", "Suspended", "Succeeded", "Failed"]
ConditionType = Literal["Admitted", "Running", "Preempted", "Suspended", "Complete", "Failed"]


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


# the places status.queue.position states exactly; a job further back says only that
# (positionAtLeast), so that a burst of arrivals ahead of thousands of waiting jobs rewrites
# at most this many statuses per namespace instead of most of them
EXACT_QUEUE_POSITIONS = 10


def shown_position(position: int) -> int:
    """A place in a queue as a waiting job's status shows it: 1-10 exact, any place further
    back ``EXACT_QUEUE_POSITIONS + 1`` ("11th or later": the status is not rewritten while the
    job moves around back there; the exact place is the visibility endpoint's)."""
    return min(position, EXACT_QUEUE_POSITIONS + 1)


def position_words(position: int) -> str:
    """A shown position in words: "3", "11 or later"."""
    return (f"{position}" if position <= EXACT_QUEUE_POSITIONS
            else f"{EXACT_QUEUE_POSITIONS + 1} or later")


class QueueStatus(ApiModel):
    position: int | None = Field(
        default=None, description="the place among the namespace's waiting jobs (1 = next), "
        f"set while it is one of the first {EXACT_QUEUE_POSITIONS}")
    position_at_least: int | None = Field(
        default=None, description=f"set instead of position when the job is further back "
        f"({EXACT_QUEUE_POSITIONS + 1}: its place is at least that); not rewritten while it "
        "moves around back there. The exact place: kubectl finetune list --queue")
    reason: str = ""

    @classmethod
    def waiting(cls, position: int | None, reason: str) -> QueueStatus:
        """A waiting job's queue status from its shown position (``shown_position``)."""
        if position is not None and position > EXACT_QUEUE_POSITIONS:
            return cls(position_at_least=EXACT_QUEUE_POSITIONS + 1, reason=reason)
        return cls(position=position, reason=reason)


class Progress(ApiModel):
    summary: str = Field(default="", description="step/totalSteps for kubectl get, e.g. 1200/3000")
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    updated_at: str | None = None
    resumed_from_step: int | None = None


class CheckpointStatus(ApiModel):
    step: int = 0
    path: str = ""
    saved_at: str | None = None
    save_seconds: float | None = None


class OutputStatus(ApiModel):
    adapter_path: str = ""
    merged_path: str = ""
    adapter_uri: str = Field(default="", description="where output.s3 holds the adapter, "
                             "s3://bucket/prefix/adapter/")
    merged_uri: str = Field(default="", description="where output.s3 holds the merged model")
    metrics: dict[str, float] = Field(default_factory=dict)


class SourceRevision(ApiModel):
    """Exactly which bytes a source is: resolved by the first attempt, used by every later one."""

    source: str = Field(description="model, dataset or evalDataset")
    uri: str = Field(description="hub://<repo> or s3://<bucket>/<key or prefix>")
    revision: str = Field(description="the hub commit hash, the S3 object's ETag, or for an S3 "
                          "prefix the sha256 of its listing (keys, ETags, versions)")
    version_id: str = Field(default="", description="the S3 object version, when the bucket is "
                            "versioned")


class GpuMemoryStatus(ApiModel):
    """The job's GPU memory estimate per GPU, in bytes (finetune_api.memory)."""

    per_gpu: int = Field(default=0, ge=0, description="peak bytes one GPU holds (the total)")
    weights: int = Field(default=0, ge=0)
    gradients: int = Field(default=0, ge=0)
    optimizer: int = Field(default=0, ge=0)
    activations: int = Field(default=0, ge=0)
    overhead: int = Field(default=0, ge=0, description="CUDA context and fragmentation")
    margin: int = Field(default=0, ge=0, description="the safety margin (10%)")
    parameters: int = Field(default=0, ge=0)
    trainable: int = Field(default=0, ge=0)
    share: int | None = Field(
        default=None, ge=0, description="the cap the trainer set on its CUDA memory "
        "(resources.gpuMemory), bytes per GPU")
    request: int | None = Field(
        default=None, ge=0, le=2**40, description="bytes of one GPU the next attempt asks as "
        "its share after the last one ran out of memory (raised x1.5, at most 3 times); "
        "absent: resources.gpuMemory, or the estimate for auto")
    raises: int = Field(default=0, ge=0, le=100, description="times the share was raised after "
                        "GPUMemoryExceeded (not counted as failures)")
    attempt_share: int | None = Field(
        default=None, ge=0, le=2**40, description="bytes of a shared GPU (a DRA ResourceClaim "
        "of the shared device class) the current attempt holds; absent: whole GPUs")
    source: Literal["spec", "trainer"] = Field(
        default="spec", description="spec: from spec.model.config, before the job ran; "
        "trainer: from the model's config.json, reported by the trainer")
    message: str = Field(default="", max_length=512,
                         description="why there is no estimate, when there is none")


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = None
    queue: QueueStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
    progress: Progress | None = None
    checkpoint: CheckpointStatus | None = None
    preemptions: int = 0
    failures: int = 0
    attempt: int = 0
    lost_steps: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    admitted_at: str | None = None
    queued_since: str | None = None
    effective_priority_class: str | None = None
    retry_after: str | None = Field(default=None, description="after a failure: not before")
    stop_reason: str | None = Field(
        default=None, description="why the running attempt is being stopped (preemption/suspend)"
    )
    progress_attempt: int | None = Field(
        default=None, description="the attempt whose trainer reported status.progress"
    )
    start_requeues: int = Field(
        default=0, description="times an admitted attempt went back to the queue because its "
        "pods never started (pods-ready timeout, pod creation refused)")
    unschedulable_since: str | None = Field(
        default=None, description="since when the job cannot fit the cluster or quota as it is")
    first_queued_at: str | None = Field(
        default=None, description="first queue entry: aging counts from here, so a preempted "
        "or suspended job keeps its place")
    active_seconds: float = Field(
        default=0.0, description="time admitted in earlier attempts (activeDeadlineSeconds)")
    output: OutputStatus | None = None
    sources: list[SourceRevision] = Field(
        default_factory=list, description="the resolved revision of each model and data source "
        "(pinned by the first attempt)")
    gpu_memory: GpuMemoryStatus | None = Field(
        default=None, description="the job's GPU memory estimate per GPU and its breakdown")
    observed_generation: int | None = None
