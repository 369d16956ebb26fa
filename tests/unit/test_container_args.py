"""The node agent's container runner: a resolved pod container -> `podman run` arguments (pure;
tests/image runs them for real)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_dev.nodeagent.container import READ_ONLY_SWITCH, run_args
from finetune_dev.nodeagent.env import SYSTEM_PATH, interpreter_bin
from finetune_dev.nodeagent.runner import Identity, Launch, Mount

pytestmark = pytest.mark.unit


def _launch(tmp_path: Path, **kw: object) -> Launch:
    pdir = tmp_path / "pods" / "ns_p_uid"
    args: dict = dict(
        argv=["python", "-m", "finetune_trainer", "--config", "/etc/finetune/config.yaml"],
        env={"PATH": f"{interpreter_bin()}:{SYSTEM_PATH}", "HOME": str(pdir / "home" / "trainer"),
             "FINETUNE_JOB_UID": "u1", "HF_HOME": "/tmp/huggingface"},
        mounts=[Mount(tmp_path / "model", "/mnt/model", True),
                Mount(tmp_path / "ckpt", "/mnt/checkpoints", False)],
        workdir="/", identity=Identity(1000, 1000, (1000,), True, True),
        log=pdir / "trainer.log", pid_file=pdir / "trainer.pid",
        image="localhost/finetune-operator/trainer:0.1.0")
    args.update(kw)
    return Launch(**args)


def _pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def test_pod_identity_mounts_env_and_command(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(READ_ONLY_SWITCH, raising=False)
    args = run_args(_launch(tmp_path), "node-1", "finetune-x")
    assert args[:2] == ["run", "--rm"] and "--read-only" not in args
    assert _pairs(args, "--user") == ["1000:1000"] and _pairs(args, "--group-add") == ["1000"]
    assert _pairs(args, "--cap-drop") == ["ALL"]
    assert _pairs(args, "--security-opt") == ["no-new-privileges"]
    assert _pairs(args, "--mount") == [
        f"type=bind,source={tmp_path / 'model'},destination=/mnt/model,ro=true",
        f"type=bind,source={tmp_path / 'ckpt'},destination=/mnt/checkpoints"]
    # the image's PATH and HOME, not the agent's interpreter and pod directory
    assert _pairs(args, "--env") == ["FINETUNE_JOB_UID=u1", "HF_HOME=/tmp/huggingface"]
    i = args.index("--entrypoint")
    assert json.loads(args[i + 1]) == ["python"]
    assert args[i + 2:] == ["localhost/finetune-operator/trainer:0.1.0", "-m",
                            "finetune_trainer", "--config", "/etc/finetune/config.yaml"]


def test_read_only_root_from_the_pod_or_the_agent(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(READ_ONLY_SWITCH, raising=False)
    assert "--read-only" in run_args(_launch(tmp_path, read_only_root=True), "n", "c")
    monkeypatch.setenv(READ_ONLY_SWITCH, "1")
    args = run_args(_launch(tmp_path), "n", "c")
    assert "--read-only" in args and "--read-only-tmpfs=false" in args


def test_a_container_without_an_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no image"):
        run_args(_launch(tmp_path, image=""), "n", "c")
