"""Entrypoint: ``python -m finetune_trainer --config FILE`` (or ``finetune-trainer``).

This is one training process. Pods run it through the supervisor ``python -m
finetune_trainer.launch`` (every job shape, docs/contracts.md "Launch and exit codes"), which
sets ``$FINETUNE_RESULT_FILE``: then every rank writes its result there and the supervisor writes
the pod's termination message. Run directly (tests, local runs), local rank 0 writes the
termination log itself.

Exit codes: 0 completed, or stopped by SIGTERM after saving a checkpoint; 2 invalid config or
data (the message names the field, file and line); 1 any other failure. A one-object JSON
termination message is written at exit in every case.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from finetune_trainer.config import ConfigError, load_config
from finetune_trainer.gpu_memory import GPUMemoryExceeded
from finetune_trainer.launch import RESULT_ENV
from finetune_trainer.progress import termination_message, write_termination_log
from finetune_trainer.stop import StopFlag

log = logging.getLogger("finetune_trainer")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def report_result(termination_log: str, text: str) -> None:
    """This rank's result: to the supervisor's file when launched by it (every rank), else to
    the termination log (local rank 0 only: one writer per pod)."""
    result = os.environ.get(RESULT_ENV)
    if result:
        write_termination_log(result, text)
    elif os.environ.get("LOCAL_RANK", "0") == "0":
        write_termination_log(termination_log, text)


def _fail(path: str, code: int, message: str, cause: str = "") -> int:
    log.error("%s", message)
    report_result(path, termination_message(
        reason="Error", message=message, final_step=0, adapter_path="", merged_path="",
        metrics={}, checkpoint=None, cause=cause))
    return code


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown (seconds with torch and a process group): the
    result is written and every byte that matters is already fsynced and closed, and the grace
    period is better spent elsewhere. The process group is torn down only on success (with a
    dead peer, a collective teardown could block)."""
    if code == 0:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort on the way out
            pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None, fast_exit: bool = True) -> int:
    parser = argparse.ArgumentParser(prog="finetune-trainer",
                                     description="Fine-tune an LLM as the operator configured.")
    parser.add_argument("--config", help="trainer config YAML (default: $FINETUNE_CONFIG)")
    args = parser.parse_args(argv)
    _setup_logging()

    # SIGTERM is honoured from the start: the flag is acted on at the first step boundary.
    flag = StopFlag()
    flag.install()
    termination_log = DEFAULT_TERMINATION_LOG
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _fail(termination_log, 2, str(e))
    termination_log = cfg.termination_log

    from transformers.utils import logging as hf_logging

    from finetune_trainer import train

    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    try:
        outcome = train.run(cfg, flag=flag)
    except ConfigError as e:
        return _fail(termination_log, 2, str(e))
    except GPUMemoryExceeded as e:  # out of memory within resources.gpuMemory
        log.exception("training failed")
        return _fail(termination_log, 1, str(e), cause=e.cause)
    except Exception as e:
        log.exception("training failed")
        return _fail(termination_log, 1, f"{type(e).__name__}: {e}")
    report_result(termination_log, outcome.termination())
    log.info("%s: %s", outcome.reason, outcome.message)
    if fast_exit and (outcome.reason == "Preempted" or os.environ.get(RESULT_ENV)):
        _exit_now(0)
    return 0


if __name__ == "__main__":
    code = main()
    if os.environ.get(RESULT_ENV):  # under the supervisor: the result is written, leave now
        _exit_now(code)
    sys.exit(code)
