"""``python -m finetune_server --model PATH [--adapter NAME=PATH ...] [--port N] [--max-loras K]
[--max-model-len L] [--runtime auto|vllm|transformers]``: see :mod:`finetune_server`.

Exit codes: 0 on SIGTERM/SIGINT after a clean stop; 2 for a bad command line; 3 when the model
(``s3://``: its download, :mod:`finetune_server.fetch`) or a start-up adapter cannot be loaded
(the message names it and the cause); with the vllm runtime
the process becomes ``vllm serve`` (its exit codes). An exit-3 message is also the pod's
termination message (``$FINETUNE_TERMINATION_LOG``, default ``/dev/termination-log``, written
only where the kubelet made that file), so the ModelServer's status says it."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from . import fetch
from .args import Config, parse, resolve_runtime, vllm_command

log = logging.getLogger("finetune_server")
STOP_GRACE = 30.0  # seconds a running generation gets to finish after SIGTERM
TERMINATION_LOG = "/dev/termination-log"
MAX_TERMINATION_MESSAGE = 4096  # the kubelet keeps at most this much of it


def fatal(message: str) -> int:
    """Log why the runtime cannot start and leave it as the pod's termination message; 3."""
    log.error("%s", message)
    path = Path(os.environ.get("FINETUNE_TERMINATION_LOG", TERMINATION_LOG))
    if path.is_file():  # made by the kubelet (or the node agent); never created here
        try:
            path.write_text(message[:MAX_TERMINATION_MESSAGE])
        except OSError as e:
            log.warning("could not write the termination message to %s: %s", path, e)
    return 3


def run_vllm(cfg: Config) -> int:
    argv, env = vllm_command(cfg, sys.executable)
    log.info("runtime vllm: %s", " ".join(argv))
    os.execve(argv[0], argv, {**os.environ, **env})  # the pod's process becomes vLLM


def run_transformers(cfg: Config) -> int:
    from .engine import Engine, ServingError
    from .http import serve

    log.info("runtime transformers: loading %s", cfg.model)
    try:
        engine = Engine(cfg.model, cfg.served_model_name, cfg.max_loras, cfg.max_lora_rank,
                        cfg.max_model_len, cfg.dtype)
    except (OSError, ValueError) as e:
        return fatal(f"cannot load the base model {cfg.model}: {e}")
    for a in cfg.adapters:
        try:
            engine.load_adapter(a.name, a.path)
        except ServingError as e:
            return fatal(str(e))
        log.info("loaded adapter %s from %s", a.name, a.path)
    server = serve(engine, cfg.host, cfg.port)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    # the line a supervisor (or a test) waits for; the port is the bound one (--port 0 works)
    log.info("serving %s on http://%s:%s (max_model_len %d, adapters: %s)",
             cfg.served_model_name, host, port, engine.max_model_len,
             ", ".join(engine.adapters) or "none")
    server.serve_forever()
    # no new requests; a generation under way finishes (its client gets its answer) first
    engine.gate.idle(STOP_GRACE)
    server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse(argv)
    if fetch.is_s3(cfg.model):
        try:
            local = fetch.fetch(fetch.parse_uri(cfg.model, cfg.s3_endpoint, cfg.s3_region),
                                Path(cfg.s3_download_dir))
        except fetch.FetchError as e:
            return fatal(str(e))
        cfg = dataclasses.replace(cfg, model=str(local))
    runtime = resolve_runtime(cfg)
    return run_vllm(cfg) if runtime == "vllm" else run_transformers(cfg)


if __name__ == "__main__":
    sys.exit(main())
