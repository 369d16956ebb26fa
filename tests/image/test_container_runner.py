"""The node agent's container runner for real (podman, the operator image as a small image):
SIGTERM reaches the container's process and its exit code comes back; SIGKILL to the podman
client (a grace period over) removes the container too; a restarted agent removes what a
previous one left running."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from finetune_dev.nodeagent import container, runner
from finetune_dev.nodeagent.runner import Identity, Launch

from ..kube import short_id, wait_for
from .conftest import Image, podman

pytestmark = pytest.mark.image

WAIT_FOR_TERM = ("import signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
                 "print('ready', flush=True)\n"
                 "time.sleep(600)\n")


def _launch(tmp_path: Path, image: Image, argv: list[str]) -> Launch:
    return Launch(argv=argv, env={"PYTHONUNBUFFERED": "1"}, mounts=[], workdir="/",
                  identity=Identity(1000, 1000, (), True, True), log=tmp_path / "c.log",
                  pid_file=tmp_path / f"{short_id()}.pid", image=image.ref)


def _exists(name: str) -> bool:
    return bool(podman("ps", "--all", "--quiet", "--filter", f"name=^{name}$").stdout.strip())


@pytest.fixture
def containers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(container.SWITCH, "1")


def test_sigterm_reaches_the_container_and_its_exit_code_returns(
        containers: None, operator_image: Image, tmp_path: Path) -> None:
    launch = _launch(tmp_path, operator_image, ["python", "-c", WAIT_FOR_TERM])
    proc = runner.start(launch, f"node-{short_id()}")
    wait_for("the container's process to start", lambda: "ready" in launch.log.read_text(), 60)
    runner.signal_group(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 7, launch.log.read_text()
    wait_for("the container removed (--rm)", lambda: not _exists(container.container_name(launch)),
             30)


def test_sigkill_removes_the_container_and_reap_clears_leftovers(
        containers: None, operator_image: Image, tmp_path: Path) -> None:
    node = f"node-{short_id()}"
    launch = _launch(tmp_path, operator_image, ["sleep", "600"])
    proc = runner.start(launch, node)
    name = container.container_name(launch)
    wait_for("the container running", lambda: _exists(name), 60)
    runner.signal_group(proc.pid, signal.SIGKILL)  # PID 1 `sleep` would ignore SIGTERM
    proc.wait(30)
    assert not _exists(name), "the container outlived its killed podman client"
    # an agent that died leaves its containers running: the next one removes them
    left = _launch(tmp_path, operator_image, ["sleep", "600"])
    runner.start(left, node)
    wait_for("the container running", lambda: _exists(container.container_name(left)), 60)
    assert container.reap(node)
    assert not _exists(container.container_name(left))
