"""The pod's launch path (``python -m finetune_trainer.launch``) with two real training
processes on the CPU (gloo), real signals: SIGTERM -> every rank saves, exit 0, exact resume;
a dead rank ends the group at once with the cause; the env:// contract of every job shape."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from finetune_trainer import checkpoint as ck
from finetune_trainer.launch import (
    Topology,
    Worker,
    describe_exit,
    failure_message,
    termination_log_path,
    topology_from,
)
from tests.builders.trainer import config_dict, read_json, write_config

from .helpers import Run, child_pids, max_diff, progress_step, start_launcher, wait_until

pytestmark = pytest.mark.trainer

NPROC = 2
MAX_STEPS = 14
ADAPTER = "output/adapter/adapter_model.safetensors"


def _tokens_seen(work: Path, step: int) -> int:
    state = json.loads((work / f"checkpoints/checkpoint-{step}/trainer_state.json").read_text())
    return int(state["num_input_tokens_seen"])


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"RANK="):
            return int(kv[5:])
    return None


@pytest.fixture(scope="module")
def baseline2(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Run]:
    """The uninterrupted two-process run (once per module)."""
    cache: list[Run] = []

    def get() -> Run:
        if not cache:
            r = Run(tmp_path_factory.mktemp("baseline2"), tiny_model, {})
            assert r.launch(NPROC) == 0, r.output()
            cache.append(r)
        return cache[0]

    return get


def test_two_processes_sigterm_then_resume_is_exact(baseline2: Callable[[], Run],
                                                    tiny_model: Path, tmp_path: Path) -> None:
    base = baseline2()
    assert base.term()["reason"] == "Completed" and base.term()["finalStep"] == MAX_STEPS
    assert "ranks 0-1 of 2" in base.output()

    r = Run(tmp_path / "stopped", tiny_model, {})
    proc = start_launcher(r.config, r.log, NPROC)
    wait_until("step 7", lambda: progress_step(r.progress) >= 7, proc, r.log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, r.output()
    term = r.term()
    stopped = term["finalStep"]
    assert term["reason"] == "Preempted", term
    assert 7 <= stopped < MAX_STEPS and term["checkpoint"]["step"] == stopped
    assert ck.is_complete(r.work / f"checkpoints/checkpoint-{stopped}", "uid-1234")
    log = r.log.read_text(errors="replace")
    # both ranks got the signal and stopped on the same step; the marker was written once
    assert log.count("finetune_trainer.stop: SIGTERM received") == NPROC
    assert log.count(f"checkpoint checkpoint-{stopped} saved") == 1
    assert not list((r.work / "checkpoints").glob(".tmp-*"))

    assert r.launch(NPROC) == 0, r.output()
    term2 = r.term()
    assert term2["reason"] == "Completed" and term2["finalStep"] == MAX_STEPS
    assert r.prog()["resumedFromStep"] == stopped
    assert max_diff(base.work / ADAPTER, r.work / ADAPTER) <= 1e-6
    assert term2["metrics"]["evalLoss"] == pytest.approx(base.term()["metrics"]["evalLoss"],
                                                         abs=1e-6)
    # tokens are counted without a per-micro-batch sync, and exactly across the preemption
    assert _tokens_seen(r.work, MAX_STEPS) == _tokens_seen(base.work, MAX_STEPS) > 0


def test_two_node_gang_sigterm_then_resume_is_exact(baseline2: Callable[[], Run],
                                                    tiny_model: Path, tmp_path: Path) -> None:
    """Two supervisors as two nodes of one process each (static rendezvous on node 0, as the
    pods of a multi-node job meet through the headless Service): the same ranks as one node
    with two processes, so the same result; SIGTERM to both (the operator stops the whole
    gang), then resume."""
    from finetune_trainer.launch import free_port

    base = baseline2()
    r = Run(tmp_path / "gang", tiny_model, {})
    logs = [r.root / "node0.log", r.root / "node1.log"]
    # each pod has its own termination log: node 1 gets its own config pointing at another one
    cfg1 = yaml.safe_load(r.config.read_text())
    cfg1["terminationLog"] = str(r.root / "node1.termination.json")
    config1 = write_config(r.root / "config-node1.yaml", cfg1)

    def start() -> list[subprocess.Popen[bytes]]:
        port = free_port()
        return [start_launcher(r.config if n == 0 else config1, logs[n], 1, node=(n, 2, port))
                for n in (0, 1)]

    nodes = start()
    wait_until("step 7", lambda: progress_step(r.progress) >= 7, nodes[0], logs[0])
    for p in nodes:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(120) for p in nodes] == [0, 0], logs[1].read_text()[-3000:]
    term = r.term()  # node 0's (rank 0's) termination message
    stopped = term["finalStep"]
    assert term["reason"] == "Preempted" and term["checkpoint"]["step"] == stopped
    term1 = json.loads((r.root / "node1.termination.json").read_text())  # global rank 1's
    assert term1["reason"] == "Preempted" and term1["checkpoint"]["step"] == stopped, term1
    assert "ranks 1-1 of 2, node 1 of 2" in logs[1].read_text()

    nodes = start()
    assert [p.wait(300) for p in nodes] == [0, 0], logs[0].read_text()[-3000:]
    assert r.term()["reason"] == "Completed" and r.prog()["resumedFromStep"] == stopped
    assert max_diff(base.work / ADAPTER, r.work / ADAPTER) <= 1e-6


def test_a_killed_rank_ends_the_group_with_the_cause(tiny_model: Path, tmp_path: Path) -> None:
    r = Run(tmp_path / "killed", tiny_model, {})
    proc = start_launcher(r.config, r.log, NPROC)
    wait_until("step 2", lambda: progress_step(r.progress) >= 2, proc, r.log)
    ranks = {_rank_of(p): p for p in child_pids(proc.pid)}
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)
    # without the supervisor, rank 0 would wait in a collective for the dead rank
    rc = proc.wait(120)
    assert rc == 1, r.output()
    term = r.term()
    assert term["reason"] == "Error"
    assert term["message"].startswith(f"training process rank 1 of 2 (pid {ranks[1]}) was "
                                      "killed by SIGKILL"), term
    assert "the other processes were stopped" in term["message"]
    assert not Path(f"/proc/{ranks[0]}").exists(), "rank 0 is gone with the group"


def test_invalid_config_through_the_launcher_exits_2(tiny_model: Path, tmp_path: Path) -> None:
    data = config_dict(tiny_model, tmp_path / "w", spec={"training": {"learningRate": -1}})
    cfg = write_config(tmp_path / "c.yaml", data)
    proc = start_launcher(cfg, tmp_path / "log", NPROC)
    assert proc.wait(120) == 2
    msg = read_json(data["terminationLog"])["message"]
    assert msg.startswith("training process rank ") and "exited with code 2" in msg
    assert "spec.training.learningRate" in msg, msg


# --- the pure parts --------------------------------------------------------------------------


def _args(**kw: object) -> argparse.Namespace:
    base = {"nnodes": 0, "node_rank": None, "nproc_per_node": 0, "master_addr": "",
            "master_port": 0}
    base.update(kw)
    return argparse.Namespace(**base)


def test_single_process_gets_the_env_contract() -> None:
    """One process (also DeepSpeed on one GPU) gets RANK/WORLD_SIZE/MASTER_* so the process
    group is created from env:// instead of MPI discovery."""
    t = topology_from(_args(), {})
    env = t.worker_env(0)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("0", "0", "1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and 0 < int(env["MASTER_PORT"]) < 65536


def test_multi_node_ranks_follow_the_node_rank() -> None:
    t = topology_from(_args(), {"NNODES": "3", "NODE_RANK": "2", "NPROC_PER_NODE": "4",
                                "MASTER_ADDR": "bot-a1-0.bot-workers.ns.svc",
                                "MASTER_PORT": "29500"})
    assert t == Topology(3, 2, 4, "bot-a1-0.bot-workers.ns.svc", 29500)
    env = t.worker_env(1)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == ("9", "1", "12")
    assert (env["NODE_RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", "4")
    assert env["MASTER_PORT"] == "29500"
    # options win over the env
    assert topology_from(_args(nproc_per_node=2), {"NPROC_PER_NODE": "8"}).nproc == 2


@pytest.mark.parametrize("env,match", [
    ({"NNODES": "2"}, "need --master-addr and --master-port"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
     "node rank 2 of 2 nodes"),
])
def test_bad_topology_is_refused(env: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        topology_from(_args(), env)


def test_failure_message_prefers_the_rank_own_message(tmp_path: Path) -> None:
    res = tmp_path / "rank-1.json"
    w = Worker(1, 5, 4242, res, status=1)
    assert failure_message(w, 8) == ("training process rank 5 of 8 (pid 4242) exited with "
                                     "code 1; the other processes were stopped")
    res.write_text(json.dumps({"reason": "Error", "message": "RuntimeError: CUDA error"}))
    assert failure_message(w, 8).endswith("exited with code 1: RuntimeError: CUDA error; "
                                          "the other processes were stopped")
    assert "OOM killer" in describe_exit(-signal.SIGKILL)
    assert describe_exit(-signal.SIGSEGV) == "was killed by SIGSEGV"


def test_termination_log_path_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("terminationLog: /tmp/x/term.json\n")
    assert termination_log_path(["--config", str(cfg)], {}) == "/tmp/x/term.json"
    assert termination_log_path([f"--config={cfg}"], {}) == "/tmp/x/term.json"
    assert termination_log_path([], {"FINETUNE_CONFIG": str(cfg)}) == "/tmp/x/term.json"
    assert termination_log_path([], {}) == "/dev/termination-log"
