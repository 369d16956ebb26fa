"""Shared GPUs through Dynamic Resource Allocation, pure: what the operator reads of the DRA
ResourceSlices and ResourceClaims, and the admission of shared jobs (``sharing.py`` packs).

Devices that may be shared are the GPUs the configured DRA driver publishes with
``allowMultipleAllocations`` and a ``memory`` capacity (consumable capacity, Kubernetes v1.36
beta): each ResourceClaim allocated on one takes part of its memory. The kube-scheduler
allocates the claims; the operator counts what they hold (``ClaimUse``) to decide which shared
job fits where, and places each admitted shared job's pod on a node with room (a preference;
the scheduler never over-allocates a device's capacity either).

Shared GPUs are a pool of their own: a node that publishes them does not also advertise the
``nvidia.com/gpu`` extended resource (the same GPU is never offered twice), so whole-GPU and
gang jobs never land on them and shared jobs never take a whole device.

Quota: a share counts against the namespace's GPU quota as its memory fraction of the device,
rounded up to 1/100 GPU (``sharing.quota_charge``); the ResourceQuota does not see claims, so
the policy adds the shares to its ``used``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_api.quantity import quantity
from finetune_operator.admission.model import Quota, WaitCode
from finetune_operator.admission.sharing import (
    QUOTA_UNITS,
    Device,
    Share,
    SharedJob,
    Unplaced,
    pack,
)

MAX_BYTES = 2**50  # a capacity or share beyond this is not a GPU's (bounded parse)


@dataclass(frozen=True)
class SharedGpu:
    """One shareable device a ResourceSlice publishes."""

    pool: str
    name: str
    node: str
    index: int
    capacity: int  # bytes of memory


@dataclass(frozen=True)
class ClaimUse:
    """Memory of one device that one allocated ResourceClaim holds."""

    namespace: str
    job_uid: str  # the operator's claims carry their job's uid (label); "" for anyone else's
    pool: str
    device: str
    memory: int | None  # consumed capacity; None: the whole device (no capacity consumed)


def _bytes(value: Any) -> int | None:
    try:
        n = int(quantity(value))
    except (ValueError, ArithmeticError, TypeError):
        return None
    return n if 0 < n <= MAX_BYTES else None


def slim_slice(obj: Mapping[str, Any], driver: str) -> tuple[SharedGpu, ...]:
    """The shareable GPUs of one ResourceSlice of ``driver`` (none of another driver's)."""
    spec = obj.get("spec") or {}
    node = spec.get("nodeName")
    if spec.get("driver") != driver or not isinstance(node, str) or not node:
        return ()
    pool = str((spec.get("pool") or {}).get("name") or "")
    out: list[SharedGpu] = []
    for i, d in enumerate(spec.get("devices") or []):
        if not isinstance(d, Mapping) or d.get("allowMultipleAllocations") is not True:
            continue
        cap = _bytes(((d.get("capacity") or {}).get("memory") or {}).get("value"))
        idx = ((d.get("attributes") or {}).get("index") or {}).get("int")
        if cap is None or not isinstance(d.get("name"), str):
            continue
        out.append(SharedGpu(pool=pool, name=d["name"], node=node, capacity=cap,
                             index=idx if isinstance(idx, int) and 0 <= idx < 4096 else i))
    return tuple(out)


def slim_claim(obj: Mapping[str, Any], driver: str, job_label: str) -> tuple[ClaimUse, ...]:
    """What an allocated ResourceClaim holds of ``driver``'s devices (nothing while pending)."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace") or "")
    uid = str((meta.get("labels") or {}).get(job_label) or "")
    alloc = ((obj.get("status") or {}).get("allocation") or {}).get("devices") or {}
    out: list[ClaimUse] = []
    for r in alloc.get("results") or []:
        if not isinstance(r, Mapping) or r.get("driver") != driver:
            continue
        used = (r.get("consumedCapacity") or {}).get("memory")
        out.append(ClaimUse(namespace=ns, job_uid=uid, pool=str(r.get("pool") or ""),
                            device=str(r.get("device") or ""),
                            memory=_bytes(used) if used is not None else None))
    return tuple(out)


@dataclass(frozen=True)
class SharedRunning:
    """A shared job holding (or about to hold) a share: its claim may not be allocated yet."""

    uid: str
    key: str
    namespace: str
    memory: int
    node: str | None  # where its pod is bound or was placed


@dataclass(frozen=True)
class SharedQueued:
    uid: str
    key: str
    namespace: str
    memory: int
    nodes: frozenset[str] | None = None  # nodes it may run on (node selector); None: any


@dataclass
class SharedRound:
    admit: dict[str, tuple[str, int]] = field(default_factory=dict)  # uid -> (node, charge)
    wait: dict[str, Unplaced] = field(default_factory=dict)


def devices_now(gpus: Iterable[SharedGpu], uses: Iterable[ClaimUse],
                running: Sequence[SharedRunning]) -> tuple[list[Device], set[str]]:
    """The shareable devices with what every allocated claim holds on them, plus the shares
    of this operator's running shared jobs whose claim is not allocated yet (placed on their
    node, best fit), so nothing is handed out twice; and the uids whose claim is allocated."""
    by_key = {(g.pool, g.name): g for g in gpus}
    shares: dict[tuple[str, str], list[Share]] = {k: [] for k in by_key}
    allocated: set[str] = set()
    for u in uses:
        g = by_key.get((u.pool, u.device))
        if g is None:
            continue
        if u.job_uid:
            allocated.add(u.job_uid)
        shares[(g.pool, g.name)].append(Share(job=u.job_uid or f"{u.namespace}/claim",
                                              memory=u.memory or g.capacity,
                                              namespace=u.namespace))
    devices = [Device(node=g.node, index=g.index, capacity=g.capacity,
                      shares=tuple(shares[(g.pool, g.name)])) for g in by_key.values()]
    pending = [SharedJob(key=r.key, memory=r.memory, namespace=r.namespace,
                         nodes=frozenset({r.node}) if r.node else None)
               for r in running if r.uid not in allocated]
    if pending:
        devices = list(pack(devices, pending).devices)
    return devices, allocated


def with_shares_used(quotas: Sequence[Quota], units: Mapping[str, int],
                     resource: str) -> list[Quota]:
    """The quotas with the namespaces' shares added to ``used`` (rounded up to whole GPUs:
    whole jobs see a share as the GPU fraction it takes, never less)."""
    out = []
    for q in quotas:
        extra = -(-units.get(q.namespace, 0) // QUOTA_UNITS) if q.resource == resource else 0
        out.append(q if not extra else Quota(namespace=q.namespace, resource=q.resource,
                                             hard=q.hard, used=q.used + extra, name=q.name,
                                             scopes=q.scopes))
    return out


def admit_shared(devices: Sequence[Device], queued: Sequence[SharedQueued],
                 quota_free: Mapping[str, int]) -> SharedRound:
    """Place the queued shared jobs in the order given (the queue's) by memory, best fit;
    ``quota_free``: hundredths of a GPU each namespace may still take (absent: no quota)."""
    jobs = [SharedJob(key=q.uid, memory=q.memory, namespace=q.namespace, nodes=q.nodes)
            for q in queued]
    got = pack(devices, jobs, quota_free)
    out = SharedRound()
    for p in got.placed:
        out.admit[p.job.key] = (p.node, p.charge)
    for w in got.waiting:
        out.wait[w.job.key] = w
    return out


__all__ = ["ClaimUse", "SharedGpu", "SharedQueued", "SharedRound", "SharedRunning", "WaitCode",
           "admit_shared", "devices_now", "slim_claim", "slim_slice",
           "with_shares_used"]
