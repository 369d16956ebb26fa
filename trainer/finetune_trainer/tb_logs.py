"""TensorBoard logs (``logs/`` under the work dir) written beside training, not in its way.

The writing is HF's own ``TensorBoardCallback`` (same tags, same event files), run on a thread
of its own: importing TensorBoard (its protobuf event writer, about 0.25 s of start-up on the
reference machine) and writing each event happen there, while the main thread loads the model
and trains. The step loop only puts a copy of the logs on a queue.

Best effort, as before: when TensorBoard cannot be imported or a write fails, one warning is
logged and training goes on. :meth:`BackgroundTensorBoard.close` (train.run, on the way out)
waits a bounded time for the queued events; the writer is closed at the end of training.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

_CLOSE = None


class BackgroundTensorBoard(TrainerCallback):
    """Forwards on_train_begin/on_log/on_train_end to HF's TensorBoardCallback on a thread."""

    def __init__(self, logs_dir: Path) -> None:
        self.logs_dir = logs_dir
        self._queue: queue.SimpleQueue[tuple[str, Any, Any, dict[str, Any]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="tensorboard", daemon=True)
        self._thread.start()

    # -- main thread: snapshot and enqueue ------------------------------------------------------

    def _put(self, event: str, args: Any, state: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        snapshot = SimpleNamespace(is_world_process_zero=True, global_step=state.global_step,
                                   is_hyper_param_search=False, trial_name=None)
        self._queue.put((event, args, snapshot, kwargs))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        # the thread reads the model's config (never changed while training) for its text
        extra = {"model": kwargs["model"]} if "model" in kwargs else {}
        self._put("on_train_begin", args, state, **extra)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> Any:
        self._put("on_log", args, state, logs=dict(logs or {}))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._put("on_train_end", args, state)

    def close(self, timeout: float = 10.0) -> None:
        """Let the thread write what is queued (at most ``timeout`` s), then stop it."""
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("TensorBoard: events still unwritten after %.0fs; leaving them", timeout)

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
            from transformers.integrations import TensorBoardCallback

            self.logs_dir.mkdir(parents=True, exist_ok=True)
            callback: Any = TensorBoardCallback(
                tb_writer=SummaryWriter(log_dir=str(self.logs_dir)))
            callback.logging_dir = str(self.logs_dir)  # a writer re-opened after the end
        except Exception as e:  # best effort: no logs/, training goes on
            log.warning("TensorBoard unavailable (%s); no logs/ written", e)
            callback = None
        failed = False
        while (item := self._queue.get()) is not _CLOSE:
            if callback is None or failed:
                continue
            event, args, state, kwargs = item
            try:
                getattr(callback, event)(args, state, None, **kwargs)
            except Exception as e:  # best effort, as above
                log.warning("TensorBoard: cannot write %s (%s); no more logs/ events", event, e)
                failed = True
        if callback is not None and callback.tb_writer is not None:
            callback.tb_writer.close()

