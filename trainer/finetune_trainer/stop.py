"""SIGTERM/SIGINT -> a flag the training loop honours at the next optimizer-step boundary.

Light on purpose (no torch at import): the entrypoint installs it before loading anything.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

log = logging.getLogger(__name__)


class StopFlag:
    """Set by SIGTERM/SIGINT; the training loop acts on it at the next optimizer-step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self.received_at: float | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            self.received_at = time.time()
            # Logging from a signal handler is safe enough for a one-off line on CPython.
            log.warning("%s received: saving a checkpoint at the next step boundary, then exiting",
                        self.signal_name)

    def agreed(self, device: Any = None) -> bool:
        """True when any rank got the signal (all ranks must stop at the same step)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        import torch

        t = torch.tensor([1 if self.requested else 0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())
