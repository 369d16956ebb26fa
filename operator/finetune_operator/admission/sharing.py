"""GPU sharing by memory: which device each shared job's pod takes, pure.

A *shared job* declares ``resources.gpuMemory`` (explicit, or ``auto`` = the estimate of
``finetune_api.memory``), asks one GPU and runs one pod: it takes a *share* of one device's
memory instead of the whole device. Every other GPU job (no ``gpuMemory``, more than one GPU
per pod, or a gang of several pods) is a *whole* job and takes whole devices only.

Rules (``pack``):

* **Best fit by memory.** Shared jobs are placed one by one in the order given (the policy's
  queue order), each on the device that allows sharing, is on an eligible node, and has the
  least free memory that still holds its share; ties by node name, then device index. So
  partly used devices fill up before an empty one is broken into, and empty devices stay whole
  for whole jobs.
* **Never over a device.** The shares on a device never sum to more than its capacity; a job
  whose share fits no device waits, with the largest free share in the reason
  (``needs 24.0 GiB on one GPU; largest free share 12.0 GiB``).
* **Whole jobs take whole devices.** A device that holds any share, or that a whole job holds,
  is not free for a whole job (``whole_free``); a shared job never lands on a device a whole job
  holds, nor on one that does not allow sharing.
* **Quota by memory fraction.** A share counts against GPU quota as its fraction of the
  device's memory, rounded *up* to 1/100 GPU (``quota_charge``: 10 GiB on an 80 GiB device is
  0.13 GPU, never less than 0.01, never more than 1); a whole GPU counts 1. Quota is kept in
  hundredths of a GPU (``QUOTA_UNITS``) so the sums are exact integers.

How the policy calls it (today ``jobs/decide.py`` ``_with_sharing`` through
``admission/devices.py``, on a pool of shared GPUs apart from whole ones; inside ``admit()``
for devices that serve both, which is not built):

1. Build the devices from the node's DRA ResourceSlices (one ``Device`` per GPU: node, index,
   memory capacity, whether it allows sharing) with the shares of the running shared jobs on
   them, and ``held=True`` on the devices that running whole jobs hold.
2. Hand whole jobs ``whole_free(devices)`` per node as their free GPUs (``NodeInfo.free``), so
   ``Pool`` never counts a device with a share; after admitting a whole job on a node, mark
   its devices with ``take_whole``.
3. Walk the queue; for a shared job call ``pack(devices, [job], quota_free)`` with the
   namespace's free quota in hundredths (``to_units`` of the ResourceQuota's free GPUs, minus
   what this walk already took); on a placement continue with ``Packing.devices`` and charge
   ``Placement.charge`` hundredths; an ``Unplaced`` gives the wait code and reason as they stand.
   ``pack`` over the whole list does the same for a walk of shared jobs only.

The placement is a preference: the kube-scheduler allocates the ResourceClaim (DRA consumable
capacity) and may pick another device with room; the sums hold there too, since the scheduler
never over-allocates a device's capacity either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from finetune_operator.admission.model import WaitCode

QUOTA_UNITS = 100  # quota is counted in hundredths of a GPU
GiB = 2**30


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _gpus(units: int) -> str:
    return f"{units / QUOTA_UNITS:.2f} GPU"


def quota_charge(memory: int, capacity: int) -> int:
    """Hundredths of a GPU that a share of `memory` bytes on a device of `capacity` bytes counts
    against quota: its fraction of the device, rounded up, between 1 and 100."""
    if capacity <= 0:
        raise ValueError(f"device capacity must be positive, got {capacity}")
    return min(QUOTA_UNITS, max(1, -(-memory * QUOTA_UNITS // capacity)))


def to_units(gpus: int) -> int:
    """Whole GPUs (a ResourceQuota's free requests) in quota hundredths."""
    return gpus * QUOTA_UNITS


def is_shared(gpus: int, nodes: int, memory: int | None) -> bool:
    """Whether a job shares a device: it has a memory share, one GPU and one pod. Anything
    else (whole GPUs, several per pod, a gang) takes whole devices."""
    return memory is not None and gpus == 1 and nodes == 1


@dataclass(frozen=True, kw_only=True)
class Share:
    """Memory of one device that one job's pod holds."""

    job: str  # the job's key (namespace/name)
    memory: int  # bytes
    namespace: str = ""


@dataclass(frozen=True, kw_only=True)
class Device:
    """One GPU: its memory, whether it may be shared, and what holds it."""

    node: str
    index: int
    capacity: int  # bytes of memory
    shareable: bool = True  # the device allows several claims (DRA consumable capacity)
    shares: tuple[Share, ...] = ()
    held: bool = False  # a whole job holds it

    @property
    def used(self) -> int:
        return self.capacity if self.held else sum(s.memory for s in self.shares)

    @property
    def free(self) -> int:
        """Memory a new share may take (0 on a held device or one that does not share)."""
        if self.held or not self.shareable:
            return 0
        return max(0, self.capacity - self.used)

    @property
    def whole_free(self) -> bool:
        """Free for a whole job: nobody holds it and it carries no share."""
        return not self.held and not self.shares

    @property
    def key(self) -> tuple[str, int]:
        return self.node, self.index


@dataclass(frozen=True, kw_only=True)
class SharedJob:
    """A job asking one GPU with a memory share, for its single pod."""

    key: str  # namespace/name
    memory: int  # bytes per GPU: resources.gpuMemory, or the estimate for auto
    namespace: str = ""
    nodes: frozenset[str] | None = None  # eligible nodes (nodeSelector, taints); None: all


@dataclass(frozen=True, kw_only=True)
class Placement:
    job: SharedJob
    node: str
    index: int
    charge: int  # quota hundredths (quota_charge on the device it took)


@dataclass(frozen=True, kw_only=True)
class Unplaced:
    job: SharedJob
    code: WaitCode  # CAPACITY, QUOTA or NO_NODES
    reason: str
    never: bool = False  # no eligible device that allows sharing could ever hold the share


@dataclass(frozen=True, kw_only=True)
class Packing:
    placed: tuple[Placement, ...] = ()
    waiting: tuple[Unplaced, ...] = ()  # in the order given
    devices: tuple[Device, ...] = ()  # the devices with the new shares on them
    quota_free: Mapping[str, int] | None = None  # hundredths left per namespace

    def placement_of(self, key: str) -> Placement | None:
        return next((p for p in self.placed if p.job.key == key), None)


def whole_free(devices: Iterable[Device]) -> dict[str, int]:
    """Per node, the devices a whole job may take (no share, not held)."""
    out: dict[str, int] = {}
    for d in devices:
        out[d.node] = out.get(d.node, 0) + int(d.whole_free)
    return out


def take_whole(devices: Sequence[Device], node: str, gpus: int) -> tuple[Device, ...]:
    """The devices after a whole job takes `gpus` whole-free devices of `node` (lowest index
    first). Raises ValueError when the node has fewer."""
    free = sorted(d.index for d in devices if d.node == node and d.whole_free)
    if len(free) < gpus:
        raise ValueError(f"node {node} has {len(free)} whole-free GPU(s), {gpus} asked")
    taken = set(free[:gpus])
    return tuple(replace(d, held=True) if d.node == node and d.index in taken else d
                 for d in devices)


def quota_used(devices: Iterable[Device]) -> dict[str, int]:
    """Quota hundredths the shares on these devices charge, per namespace."""
    out: dict[str, int] = {}
    for d in devices:
        for s in d.shares:
            out[s.namespace] = out.get(s.namespace, 0) + quota_charge(s.memory, d.capacity)
    return out


def pack(devices: Iterable[Device], jobs: Iterable[SharedJob],
         quota_free: Mapping[str, int] | None = None) -> Packing:
    """Place `jobs` in order, best fit by memory (see the module docstring).

    `quota_free`: hundredths of a GPU each namespace may still take; a namespace missing from it
    (or None) is unlimited. Pure and deterministic: the result depends on the devices as a set
    and on the jobs' order, not on the devices' order."""
    state = {d.key: d for d in sorted(devices, key=lambda d: d.key)}
    room = None if quota_free is None else dict(quota_free)
    placed: list[Placement] = []
    waiting: list[Unplaced] = []
    for job in jobs:
        got = _place(state.values(), job, room)
        if isinstance(got, Unplaced):
            waiting.append(got)
            continue
        d = state[(got.node, got.index)]
        state[d.key] = replace(d, shares=(*d.shares, Share(job=job.key, memory=job.memory,
                                                           namespace=job.namespace)))
        if room is not None and job.namespace in room:
            room[job.namespace] -= got.charge
        placed.append(got)
    return Packing(placed=tuple(placed), waiting=tuple(waiting), devices=tuple(state.values()),
                   quota_free=room)


def _place(devices: Iterable[Device], job: SharedJob,
           room: Mapping[str, int] | None) -> Placement | Unplaced:
    if job.memory <= 0:
        raise ValueError(f"{job.key}: a share must be positive, got {job.memory} bytes")
    eligible = [d for d in devices if d.shareable and (job.nodes is None or d.node in job.nodes)]
    if not eligible:
        return Unplaced(job=job, code=WaitCode.NO_NODES, never=True,
                        reason="no GPU that allows sharing on a node matching "
                        "resources.nodeSelector/tolerations; remove resources.gpuMemory to "
                        "take a whole GPU, or wait for nodes")
    largest = max(d.capacity for d in eligible)
    if job.memory > largest:
        return Unplaced(job=job, code=WaitCode.CAPACITY, never=True,
                        reason=f"needs {_gib(job.memory)} on one GPU; the largest GPU that "
                        f"allows sharing has {_gib(largest)}: lower resources.gpuMemory or "
                        "spread the job over more GPUs")
    fits = sorted((d.free - job.memory, d.key, d) for d in eligible if d.free >= job.memory)
    if not fits:
        return Unplaced(job=job, code=WaitCode.CAPACITY,
                        reason=f"needs {_gib(job.memory)} on one GPU; largest free share "
                        f"{_gib(max(d.free for d in eligible))}")
    left = None if room is None else room.get(job.namespace)
    for _, _, d in fits:
        charge = quota_charge(job.memory, d.capacity)
        if left is None or charge <= left:
            return Placement(job=job, node=d.node, index=d.index, charge=charge)
    least = min(quota_charge(job.memory, d.capacity) for _, _, d in fits)
    return Unplaced(job=job, code=WaitCode.QUOTA,
                    reason=f"its share counts {_gpus(least)} of quota; namespace "
                    f"{job.namespace} has {_gpus(max(0, left or 0))} left")
