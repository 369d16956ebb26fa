"""The one launch path of every trainer pod: ``python -m finetune_trainer.launch [options] --
--config FILE``.

A small supervisor (no torch, so it starts at once) that starts the pod's training processes and
turns their outcome into the pod's exit code and termination message (docs/contracts.md, "Launch
and exit codes"). It replaces torchrun, whose agent re-raises the SIGTERM it got as an exception
(exit 1, counted as a failure) and answers a dead worker by sending SIGTERM to the others, which
the trainer reads as "save a checkpoint" and then waits in a collective for the dead rank until
the grace period ends.

Every job shape runs the same way: ``--nproc-per-node`` workers (``python -m finetune_trainer``)
with the ``env://`` variables torch.distributed, accelerate and DeepSpeed read (RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK/NODE_RANK, MASTER_ADDR, MASTER_PORT), also for a single
process (127.0.0.1 and a free port), so DeepSpeed on one GPU creates its process group instead of
looking for MPI. Several nodes use a static rendezvous: global rank 0 (on node 0) hosts the
TCPStore on MASTER_ADDR:MASTER_PORT, global rank = node rank * nproc + local rank.

Outcome:

* SIGTERM/SIGINT to the supervisor is forwarded once to every worker; they agree on a step,
  finish it, save every shard and the marker once, and exit 0. The supervisor then writes the
  result of local rank 0 (``reason: Preempted``) as the termination message and exits 0.
* A worker that exits non-zero (or dies from a signal) ends the group at once: the others are
  SIGKILLed (a SIGTERM would make them try to save with a missing rank), and the termination
  message names the rank and the cause (its own error message when it wrote one, else the exit
  status or signal). Exit 2 when the cause was an invalid config or data (exit 2), else 1.
* All workers exit 0: the result of local rank 0 is the termination message; exit 0.

Workers report through ``$FINETUNE_RESULT_FILE`` (one JSON termination message per rank); the
supervisor is the only writer of the termination log.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.memory import GPU_MEMORY_EXCEEDED
from finetune_trainer.progress import termination_message, write_termination_log

log = logging.getLogger("finetune_trainer.launch")

RESULT_ENV = "FINETUNE_RESULT_FILE"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
EXIT_INVALID = 2
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Topology:
    """Where this pod sits in the job: node ``node_rank`` of ``nnodes``, ``nproc`` each."""

    nnodes: int
    node_rank: int
    nproc: int
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc

    def worker_env(self, local_rank: int) -> dict[str, str]:
        """The env:// variables of one worker (what torchrun would set, minus its agent's)."""
        rank = self.node_rank * self.nproc + local_rank
        return {
            "RANK": str(rank), "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(self.world_size), "LOCAL_WORLD_SIZE": str(self.nproc),
            "GROUP_RANK": str(self.node_rank), "NODE_RANK": str(self.node_rank),
            "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port),
        }


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def topology_from(args: argparse.Namespace, env: dict[str, str]) -> Topology:
    """Options win over the pod env (NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_*)."""
    nnodes = args.nnodes or int(env.get("NNODES", "1"))
    node_rank = args.node_rank if args.node_rank is not None else int(env.get("NODE_RANK", "0"))
    nproc = args.nproc_per_node or int(env.get("NPROC_PER_NODE", "1"))
    if nnodes < 1 or nproc < 1 or not 0 <= node_rank < nnodes:
        raise ValueError(f"launch: node rank {node_rank} of {nnodes} nodes with {nproc} "
                         "processes per node is not a valid topology")
    addr = args.master_addr or env.get("MASTER_ADDR", "")
    port = args.master_port or int(env.get("MASTER_PORT", "0") or 0)
    if nnodes > 1 and not (addr and port):
        raise ValueError(f"launch: {nnodes} nodes need --master-addr and --master-port (the "
                         "rank-0 pod's DNS name and rendezvous port)")
    return Topology(nnodes, node_rank, nproc, addr or "127.0.0.1", port or free_port())


@dataclass
class Worker:
    local_rank: int
    rank: int
    pid: int
    result_file: Path
    status: int | None = None  # os.waitstatus_to_exitcode: >= 0 exit code, < 0 -signal

    def result(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = " (the kernel's OOM killer sends it when the pod exceeds its memory limit; check " \
           "spec.resources.memory)" if -code == signal.SIGKILL else ""
    return f"was killed by {name}{hint}"


def failure_message(w: Worker, world_size: int) -> str:
    """The cause of a dead worker: its own message when it wrote one, else how it ended."""
    res = w.result() or {}
    own = str(res.get("message") or "").strip()
    head = f"training process rank {w.rank} of {world_size} (pid {w.pid}) " + describe_exit(
        w.status if w.status is not None else 1)
    tail = "; the other processes were stopped" if world_size > 1 else ""
    return f"{head}: {own}{tail}" if own else head + tail


def error_termination(message: str, cause: str = "") -> str:
    return termination_message(reason="Error", message=message, final_step=0, adapter_path="",
                               merged_path="", metrics={}, checkpoint=None, cause=cause)


def failure_cause(w: Worker) -> str:
    """The cause a dead worker named in its result (GPUMemoryExceeded), else ''."""
    cause = (w.result() or {}).get("cause")
    return cause if cause == GPU_MEMORY_EXCEEDED else ""


def termination_log_path(worker_args: list[str], env: dict[str, str]) -> str:
    """``terminationLog`` from the trainer config (read leniently; the workers validate it)."""
    config = None
    for i, a in enumerate(worker_args):
        if a == "--config" and i + 1 < len(worker_args):
            config = worker_args[i + 1]
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
    config = config or env.get("FINETUNE_CONFIG")
    if config:
        try:
            import yaml

            data = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("terminationLog"), str):
                return str(data["terminationLog"])
        except Exception:  # the workers report a bad config themselves
            pass
    return DEFAULT_TERMINATION_LOG


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Workers are SIGKILLed if the supervisor dies (no orphan holding GPU memory)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Ignored until the trainer installs its stop handler (a few hundred ms in): a SIGTERM in
    # that window must not kill it; the supervisor repeats the SIGTERM until every worker exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class Supervisor:
    topo: Topology
    command: list[str]
    result_dir: Path
    base_env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)
    stopping: str | None = None
    first_failure: Worker | None = None

    def start(self) -> None:
        for local in range(self.topo.nproc):
            env = dict(self.base_env)
            env.update(self.topo.worker_env(local))
            if self.topo.nproc > 1:
                env.setdefault("OMP_NUM_THREADS", "1")
            result = self.result_dir / f"rank-{local}.json"
            env[RESULT_ENV] = str(result)
            pid = _spawn(self.command, env)
            self.workers.append(Worker(local, int(env["RANK"]), pid, result))
            if self.stopping is not None:  # the signal came while the workers were starting
                self.forward()
        log.info("launch: %d process(es), ranks %d-%d of %d, node %d of %d, rendezvous %s:%d",
                 self.topo.nproc, self.workers[0].rank, self.workers[-1].rank,
                 self.topo.world_size, self.topo.node_rank, self.topo.nnodes,
                 self.topo.master_addr, self.topo.master_port)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.status is None]

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping is None:
            self.stopping = signal.Signals(signum).name
            log.warning("launch: %s received: every process saves at its next step boundary",
                        self.stopping)
        self.forward()

    def forward(self) -> None:
        for w in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGTERM)

    def kill_rest(self) -> None:
        for w in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)

    def wait(self, poll: float = 0.05, repeat: float = 1.0) -> None:
        """Reap the workers; the first non-zero exit ends the group. While stopping, the
        SIGTERM is repeated every ``repeat`` seconds (the trainer acts on the first one)."""
        by_pid = {w.pid: w for w in self.workers}
        last_forward = time.monotonic()
        while self.live():
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(poll)
                if self.stopping is not None and time.monotonic() - last_forward >= repeat:
                    self.forward()
                    last_forward = time.monotonic()
                continue
            w = by_pid.get(pid)
            if w is None:
                continue
            w.status = os.waitstatus_to_exitcode(status)
            if w.status != 0 and self.first_failure is None:
                self.first_failure = w
                log.error("launch: %s", failure_message(w, self.topo.world_size))
                self.kill_rest()

    def outcome(self) -> tuple[int, str]:
        """(exit code, termination message) of the pod."""
        f = self.first_failure
        if f is not None:
            code = EXIT_INVALID if f.status == EXIT_INVALID else 1
            return code, error_termination(failure_message(f, self.topo.world_size),
                                           failure_cause(f))
        lead = self.workers[0].result()
        if lead is None:
            return 1, error_termination(
                f"training process rank {self.workers[0].rank} exited 0 without writing its "
                f"result to {self.workers[0].result_file}; this is a trainer bug, the log shows "
                "what it did last")
        return 0, json.dumps(lead, sort_keys=True)


def _spawn(command: list[str], env: dict[str, str]) -> int:
    """fork + exec (reaped with os.waitpid by ``Supervisor.wait``); stdout/stderr shared."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _die_with_parent()
            os.execvpe(command[0], command, env)
        except BaseException as e:
            os.write(2, f"launch: cannot start {command[0]}: {e}\n".encode())
        os._exit(127)
    return pid


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        i = argv.index("--")
        own, rest = argv[:i], argv[i + 1:]
    else:
        own, rest = argv, []
    p = argparse.ArgumentParser(
        prog="python -m finetune_trainer.launch",
        description="Run the trainer's processes of this pod and report their outcome. "
                    "Arguments after -- go to every worker (python -m finetune_trainer ...).")
    p.add_argument("--nnodes", type=int, default=0, help="nodes of the job (default $NNODES or 1)")
    p.add_argument("--node-rank", type=int, default=None,
                   help="this node's rank (default $NODE_RANK or 0)")
    p.add_argument("--nproc-per-node", type=int, default=0,
                   help="processes on this node, one per GPU (default $NPROC_PER_NODE or 1)")
    p.add_argument("--master-addr", default="", help="rank-0 pod address (several nodes)")
    p.add_argument("--master-port", type=int, default=0, help="rendezvous port (several nodes)")
    return p.parse_args(own), rest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("FINETUNE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args, rest = parse_args(list(sys.argv[1:] if argv is None else argv))
    env = dict(os.environ)
    termination_log = termination_log_path(rest, env)
    try:
        topo = topology_from(args, env)
    except ValueError as e:
        write_termination_log(termination_log, error_termination(str(e)))
        log.error("%s", e)
        return EXIT_INVALID
    command = [sys.executable, "-m", "finetune_trainer"]
    with tempfile.TemporaryDirectory(prefix="finetune-launch-") as tmp:
        sup = Supervisor(topo, [*command, *rest], Path(tmp), env)
        # Signals first: a SIGTERM that lands while the workers start is still forwarded.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, sup.on_signal)
        started = time.monotonic()
        sup.start()
        sup.wait()
        code, text = sup.outcome()
    write_termination_log(termination_log, text)
    log.info("launch: exit %d after %.1fs (%s)", code, time.monotonic() - started,
             json.loads(text).get("reason"))
    return code


if __name__ == "__main__":
    sys.exit(main())
