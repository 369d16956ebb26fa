"""``python -m finetune_server --model PATH [--adapter NAME=PATH ...] [--port N] [--max-loras K]
[--max-model-len L] [--runtime auto|vllm|transformers]``: see :mod:`finetune_server`.

Exit codes: 0 on SIGTERM/SIGINT after a clean stop; 2 for a bad command line; 3 when the model
(``s3://``: its download, :mod:`finetune_server.fetch`) or a start-up adapter cannot be loaded
(the message names it and the cause); with the vllm runtime
the process becomes ``vllm serve`` (its exit codes)."""

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
        log.error("cannot load the base model %s: %s", cfg.model, e)
        return 3
    for a in cfg.adapters:
        try:
            engine.load_adapter(a.name, a.path)
        except ServingError as e:
            log.error("%s", e)
            return 3
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
            log.error("%s", e)
            return 3
        cfg = dataclasses.replace(cfg, model=str(local))
    runtime = resolve_runtime(cfg)
    return run_vllm(cfg) if runtime == "vllm" else run_transformers(cfg)


if __name__ == "__main__":
    sys.exit(main())
