"""The memory cap on a real GPU: a process capped at its share cannot allocate past it, and
the out-of-memory error it gets is classified GPUMemoryExceeded. Skips without a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = r"""
import json, torch
from finetune_trainer import gpu_memory as g
GiB = 2**30
total = torch.cuda.get_device_properties(0).total_memory
big = torch.empty(4 * GiB, dtype=torch.uint8, device="cuda")  # uncapped: fits
del big
torch.cuda.empty_cache()
cap = g.apply_cap(3 * GiB, 0)
ok = torch.empty(1 * GiB, dtype=torch.uint8, device="cuda")
try:
    torch.empty(4 * GiB, dtype=torch.uint8, device="cuda")
    out = {"capped": False}
except Exception as e:
    ex = g.classify(e, cap, None)
    out = {"capped": True, "cause": ex.cause if ex else None, "fraction": cap.fraction,
           "total": total}
print(json.dumps(out))
"""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no NVIDIA GPU on this machine "
                    "(torch.cuda.is_available() is False)")
def test_cap_stops_the_process_at_its_share() -> None:
    # its own process: the cap holds for the whole process
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["capped"] is True
    assert out["cause"] == "GPUMemoryExceeded"
    assert 0 < out["fraction"] < 3 * 2**30 / out["total"]
