"""Run a pod's container from its image with podman, instead of as a local process (optional).

Switched on by FINETUNE_NODEAGENT_CONTAINERS=1 in the agent's environment (`make demo IMAGES=1`,
the image tests). The pod is resolved exactly as for a process (volumes on the host, env, argv,
identity); only the start differs: `podman run` with the image, the command and args as its
entrypoint, every volume bind-mounted at its mountPath (read-only where asked), the runAsUser/
runAsGroup/fsGroup identity, no-new-privileges and dropped capabilities, the host network (pods
reach the API server and the operator at 127.0.0.1, as processes do) and, with
readOnlyRootFilesystem (or FINETUNE_NODEAGENT_READ_ONLY_ROOT=1 for every container), a read-only
root file system without podman's extra tmpfs mounts.

podman runs through scripts/images/podman.sh (the image cache's storage and this host's runtime
settings; FINETUNE_PODMAN overrides it). Signals to the process group reach the container through
podman's signal proxy; a SIGKILL (grace period over) removes the container as well, since the
container does not die with its podman client.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from hashlib import sha1
from pathlib import Path

from finetune_dev.nodeagent.env import SYSTEM_PATH, interpreter_bin
from finetune_dev.nodeagent.runner import Launch, start_time

SWITCH = "FINETUNE_NODEAGENT_CONTAINERS"
READ_ONLY_SWITCH = "FINETUNE_NODEAGENT_READ_ONLY_ROOT"
PODMAN_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "images" / "podman.sh"
LABEL = "finetune-operator.nodeagent"

_running: dict[int, str] = {}  # podman client pid -> container name
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get(SWITCH) == "1"


def podman() -> list[str]:
    if os.environ.get("FINETUNE_PODMAN"):
        return [os.environ["FINETUNE_PODMAN"]]
    if not PODMAN_SCRIPT.exists():
        raise RuntimeError(f"{SWITCH}=1 needs {PODMAN_SCRIPT} (this checkout's podman wrapper) or "
                           "FINETUNE_PODMAN; build the images first with `make images`")
    return [str(PODMAN_SCRIPT)]


def container_name(launch: Launch) -> str:
    """One name per pod container (its pid file is per pod uid and container)."""
    return "finetune-" + sha1(str(launch.pid_file).encode()).hexdigest()[:16]


def container_env(launch: Launch) -> dict[str, str]:
    """The container's env without what only a host process needs: the agent's interpreter
    first on PATH and a HOME in the agent's pod directory (the image provides both)."""
    env = dict(launch.env)
    if env.get("PATH") == f"{interpreter_bin()}:{SYSTEM_PATH}":
        del env["PATH"]
    if env.get("HOME", "").startswith(str(launch.pid_file.parent) + "/"):
        del env["HOME"]
    return env


def run_args(launch: Launch, node: str, name: str) -> list[str]:
    """`podman run` arguments for one launch (pure)."""
    if not launch.image:
        raise RuntimeError("the container has no image; the container runner needs one")
    args = ["run", "--rm", "--replace", "--name", name, "--label", f"{LABEL}={node}",
            "--pull", "never", "--network", "host", "--workdir", launch.workdir]
    if launch.read_only_root or os.environ.get(READ_ONLY_SWITCH) == "1":
        args += ["--read-only", "--read-only-tmpfs=false"]
    ident = launch.identity
    if ident.uid is not None or ident.gid is not None:
        args += ["--user", f"{ident.uid or 0}:{ident.gid or 0}"]
    for g in ident.groups:
        args += ["--group-add", str(g)]
    if ident.no_new_privs:
        args += ["--security-opt", "no-new-privileges"]
    if ident.drop_all_caps:
        args += ["--cap-drop", "ALL"]
    for m in launch.mounts:
        args += ["--mount", f"type=bind,source={m.source},destination={m.target}"
                 + (",ro=true" if m.read_only else "")]
    for k, v in container_env(launch).items():
        args += ["--env", f"{k}={v}"]
    args += ["--entrypoint", json.dumps(launch.argv[:1]), launch.image, *launch.argv[1:]]
    return args


def start(launch: Launch, node: str) -> subprocess.Popen[bytes]:
    """Start `podman run` for the launch (its own session); pid file as for a process."""
    name = container_name(launch)
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with open(launch.log, "ab") as log:
        proc = subprocess.Popen([*podman(), *run_args(launch, node, name)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", close_fds=True)
    with _lock:
        _running[proc.pid] = name
    launch.pid_file.write_text(f"{proc.pid} {start_time(proc.pid)} {node}\n")
    return proc


def remove(pid: int) -> None:
    """After a SIGKILL to a podman client: remove its container too (no-op for processes)."""
    with _lock:
        name = _running.pop(pid, None)
    if name is not None:
        subprocess.run([*podman(), "rm", "--force", "--ignore", "--time", "0", name],
                       stdin=subprocess.DEVNULL, capture_output=True, check=False)


def reap(node: str) -> list[str]:
    """Remove containers a previous agent of `node` left running."""
    out = subprocess.run([*podman(), "ps", "--all", "--quiet", "--filter",
                          f"label={LABEL}={node}"], capture_output=True, text=True, check=False)
    ids = out.stdout.split()
    if ids:
        subprocess.run([*podman(), "rm", "--force", "--time", "0", *ids], capture_output=True,
                       check=False)
    return ids
