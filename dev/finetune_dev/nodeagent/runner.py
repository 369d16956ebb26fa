"""Run one container as a local process in a private mount namespace.

`unshare --mount --propagation private -- bash -c SCRIPT`: the script bind-mounts each
volume's host directory at its mountPath (read-only remount where asked) and the per-container
termination-message file at terminationMessagePath, then `exec`s the command (through `setpriv`
for runAsUser/runAsGroup/fsGroup). The process is the leader of its own session and process
group, so signals go to the whole group. Mount points that do not exist are created on the host
(empty directories/files such as /mnt/model or /dev/termination-log): the namespace isolates
mounts, not the file system.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_dev.nodeagent.env import SYSTEM_PATH, expand
from finetune_dev.nodeagent.sources import NotReady, Unsupported
from finetune_dev.nodeagent.volumes import Volumes

SETUP_FAILED = 128  # exit code of a failed mount/exec set-up (a kubelet's StartError is 128 too)
SETUP_PREFIX = "node-agent: "
TOOLS = ("unshare", "mount", "mkdir", "setpriv", "bash", "env")


@dataclass(frozen=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True)
class Identity:
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    drop_all_caps: bool = False


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    mounts: list[Mount]
    workdir: str
    identity: Identity
    log: Path
    pid_file: Path
    image: str = ""  # used by the optional container runner (container.py) only
    read_only_root: bool = False


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise RuntimeError(f"{name} not found; the node agent needs util-linux (unshare, mount, "
                           "setpriv): apt-get install util-linux mount")
    return path


def identity(pod: dict[str, Any], container: dict[str, Any]) -> Identity:
    """runAsUser/runAsGroup (container over pod), fsGroup + supplementalGroups as groups."""
    psc, csc = pod["spec"].get("securityContext") or {}, container.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    gid = csc.get("runAsGroup", psc.get("runAsGroup"))
    if csc.get("runAsNonRoot", psc.get("runAsNonRoot")) and not uid:
        raise NotReady("CreateContainerConfigError",
                       "runAsNonRoot is set but no runAsUser: the node agent has no image user, so "
                       "the container would run as root; set securityContext.runAsUser")
    groups = [g for g in [psc.get("fsGroup"), *(psc.get("supplementalGroups") or [])] if g]
    drop = (csc.get("capabilities") or {}).get("drop") or []
    return Identity(uid, gid, tuple(dict.fromkeys(groups)),
                    csc.get("allowPrivilegeEscalation") is False, "ALL" in drop)


def make_sub_path(volume: Path, sub: Path) -> None:
    """Create a missing subPath as the kubelet does: each new directory gets the volume's own
    mode (and, by the setgid bit, its group), so what fsGroup made writable stays writable."""
    mode = volume.stat().st_mode & 0o7777
    for part in sub.parts:
        volume = volume / part
        if not volume.exists():
            volume.mkdir()
            volume.chmod(mode)


def mounts(container: dict[str, Any], vols: Volumes, term_file: Path,
           env: dict[str, str], hosts: Path | None = None) -> list[Mount]:
    """volumeMounts (subPath/subPathExpr honoured) + the termination-message file (+ the pod's
    /etc/hosts, read-only, when it has one), parents first."""
    out = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in vols.dirs:
            raise Unsupported(f"volumeMount {m['name']!r} names no volume of the pod")
        src = vols.dirs[m["name"]]
        sub = m.get("subPath") or expand(m.get("subPathExpr", ""), env)
        if sub:
            if Path(sub).is_absolute() or ".." in Path(sub).parts:
                raise Unsupported(f"subPath {sub!r} must be relative and stay inside the volume")
            make_sub_path(src, Path(sub))
            src = src / sub
        read_only = bool(m.get("readOnly")) or m["name"] in vols.read_only
        out.append(Mount(src, m["mountPath"], read_only))
    path = container.get("terminationMessagePath") or "/dev/termination-log"
    out.append(Mount(term_file, path, False))
    if hosts is not None:
        out.append(Mount(hosts, "/etc/hosts", True))
    return sorted(out, key=lambda m: len(Path(m.target).parts))


def _hidden_interpreter_paths() -> dict[str, list[str]]:
    """Interpreter dirs behind a directory others cannot enter (e.g. /root, 0700), by that dir."""
    needed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                            os.path.dirname(os.path.realpath(sys.executable)))}
    needed = {p for p in needed if not any(p.startswith(q + "/") for q in needed)}
    out: dict[str, list[str]] = {}
    for p in sorted(needed):
        parts = Path(p).parts
        for i in range(2, len(parts)):
            anc = str(Path(*parts[:i]))
            if not os.stat(anc).st_mode & 0o001:
                out.setdefault(anc, []).append(p)
                break
    return out


def _interpreter_paths() -> set[str]:
    """What `python` in a pod needs from this host: the interpreter, the venv and the import
    roots (an editable install of this project lives in its checkout), outermost only."""
    cands = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                           os.path.dirname(os.path.realpath(sys.executable)),
                                           *sys.path) if p and os.path.isdir(p)}
    return {p for p in cands if not any(p.startswith(q + "/") for q in cands)}


def _shadowed_interpreter_paths(mounts: list[Mount]) -> list[str]:
    """Interpreter paths that a volume mount would hide (e.g. a checkout under /tmp, and the
    pod's /tmp emptyDir): they are bound again on top, read-only."""
    targets = [os.path.normpath(m.target) for m in mounts]
    return sorted(p for p in _interpreter_paths()
                  if any(p == t or p.startswith(t.rstrip("/") + "/") for t in targets))


def script(launch: Launch) -> str:
    """The set-up script run inside the new mount namespace. Every source is opened first (fds
    10+) and bound from /proc/self/fd, so a mount over e.g. /tmp cannot hide a later source."""
    q = shlex.quote
    mount, mkdir = tool("mount"), tool("mkdir")
    hidden = _hidden_interpreter_paths() if launch.identity.uid else {}
    shadowed = _shadowed_interpreter_paths(launch.mounts)
    sources = [m.source for m in launch.mounts] + [Path(p) for ps in hidden.values() for p in ps]
    sources += [Path(p) for p in shadowed]
    fd = {src: 10 + i for i, src in enumerate(dict.fromkeys(sources))}
    lines = [f'fail() {{ echo "{SETUP_PREFIX}$*" >&2; exit {SETUP_FAILED}; }}']
    lines += [f"exec {n}<{q(str(src))} || fail cannot open {q(str(src))}" for src, n in fd.items()]

    def bind(src: Path, target: str, read_only: bool) -> None:
        t = q(target)
        lines.append(f"{mount} --no-canonicalize --bind /proc/self/fd/{fd[src]} {t} "
                     f"|| fail cannot bind-mount {q(str(src))} at {t}")
        if read_only:
            lines.append(f"{mount} -o remount,bind,ro {t} || fail cannot remount {t} read-only")

    for m in launch.mounts:
        t = q(m.target)
        if m.source.is_dir():
            lines.append(f"{mkdir} -p {t} || fail cannot create mount point {t}")
        else:
            parent = q(str(Path(m.target).parent))
            lines.append(f"{mkdir} -p {parent} && {{ [ -e {t} ] || : > {t}; }}"
                         f" || fail cannot create mount point {t}")
        bind(m.source, m.target, m.read_only)
    # a non-root user cannot enter e.g. /root (0700): hide it behind an empty tmpfs and
    # re-expose only the interpreter's directories, read-only
    for blocked, paths in hidden.items():
        lines.append(f"{mount} -t tmpfs -o mode=0755 node-agent-hide {q(blocked)}")
        for p in paths:
            lines.append(f"{mkdir} -p {q(p)}")
            bind(Path(p), p, True)
    for p in shadowed:
        lines.append(f"{mkdir} -p {q(p)}")
        bind(Path(p), p, True)
    lines += [f"exec {n}<&-" for n in fd.values()]
    ident = launch.identity
    lines.append(f"cd {q(launch.workdir)} || fail cannot enter workingDir {q(launch.workdir)}")
    argv0, path = q(launch.argv[0]), q(launch.env.get("PATH", ""))
    lines.append(f"PATH={path} command -v {argv0} >/dev/null || fail executable file not found "
                 f"in PATH: {argv0}")
    prefix: list[str] = []
    if ident.uid is not None or ident.gid is not None or ident.groups:
        groups = ",".join(map(str, ident.groups))
        prefix = [tool("setpriv"), f"--reuid={ident.uid or 0}", f"--regid={ident.gid or 0}",
                  f"--groups={groups}" if groups else "--clear-groups"]
    elif ident.no_new_privs or ident.drop_all_caps:
        prefix = [tool("setpriv")]
    prefix += ["--no-new-privs"] * ident.no_new_privs + ["--bounding-set=-all"] * \
        ident.drop_all_caps
    if prefix:
        prefix.append("--")
    # the container's env is set only here, so nothing in it (BASH_ENV, ...) affects the set-up
    env = [tool("env"), "-i", *(f"{k}={v}" for k, v in launch.env.items())]
    lines.append("exec " + " ".join(q(a) for a in env + prefix + launch.argv))
    return "\n".join(lines) + "\n"


def start(launch: Launch, node: str) -> subprocess.Popen[bytes]:
    """Start the container process; pid, start time and node go to launch.pid_file. With
    FINETUNE_NODEAGENT_CONTAINERS=1, from its image under podman instead (container.py)."""
    from finetune_dev.nodeagent import container

    if container.enabled():
        return container.start(launch, node)
    launch.log.parent.mkdir(parents=True, exist_ok=True)
    with open(launch.log, "ab") as log:
        proc = subprocess.Popen(
            [tool("unshare"), "--mount", "--propagation", "private", "--", tool("bash"), "-c",
             script(launch)],
            env={"PATH": SYSTEM_PATH}, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, cwd="/", close_fds=True)
    launch.pid_file.write_text(f"{proc.pid} {start_time(proc.pid)} {node}\n")
    return proc


def start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, to tell it from a reused pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def signal_group(pid: int, sig: int) -> None:
    if sig == signal.SIGKILL:
        from finetune_dev.nodeagent import container

        container.remove(pid)  # a container outlives its killed podman client
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def reap_orphans(root: Path, node: str, grace: float = 10.0) -> list[int]:
    """Stop processes a previous agent of `node` left behind (pid files): SIGTERM, grace, KILL."""
    from finetune_dev.nodeagent import container

    if container.enabled():
        container.reap(node)
    alive = []
    for pf in Path(root).glob("pods/*/*.pid"):
        with suppress(ValueError, OSError, IndexError):
            fields = pf.read_text().split()
            pid, started = int(fields[0]), int(fields[1])
            if fields[2] == node and start_time(pid) == started:
                alive.append((pid, started))
    for pid, _ in alive:
        signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(start_time(p) == s for p, s in alive):
        time.sleep(0.1)
    for pid, started in alive:
        if start_time(pid) == started:
            signal_group(pid, signal.SIGKILL)
    return [pid for pid, _ in alive]


def termination_message(term_file: Path, log: Path, policy: str, exit_code: int) -> str:
    """The termination-message file (at most 4 KiB); with FallbackToLogsOnError and a failure,
    the log's last 80 lines (at most 2 KiB) when the file is empty. Set-up failures: their line."""
    try:
        msg = term_file.read_bytes()[:4096].decode(errors="replace")
    except FileNotFoundError:
        msg = ""
    tail = ""
    if exit_code != 0 and not msg.strip():
        with suppress(FileNotFoundError):
            tail = "\n".join(log.read_bytes()[-16384:].decode(errors="replace").splitlines()[-80:])
        setup = [ln for ln in tail.splitlines() if ln.startswith(SETUP_PREFIX)]
        if exit_code == SETUP_FAILED and setup:
            return setup[-1]
        if policy == "FallbackToLogsOnError":
            return tail[-2048:]
    return msg
