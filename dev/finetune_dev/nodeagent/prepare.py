"""From a pod object to what to run: volumes on the host, then one Launch per container."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from finetune_dev.nodeagent import env, network, runner, volumes
from finetune_dev.nodeagent.paths import log_path, pid_file, termination_file
from finetune_dev.nodeagent.sources import Objects, Unsupported


def prepare_pod(core: client.CoreV1Api, pod: dict[str, Any], root: Path, pdir: Path,
                allocatable: dict[str, str], api: tuple[str, int],
                now: datetime) -> tuple[list[tuple[str, runner.Launch]], volumes.Volumes]:
    """Materialize volumes (fsGroup applied) and resolve every container's env, argv, mounts and
    identity; a pod behind a headless Service gets its names and ports (network.py). Raises
    NotReady (retry later) or Unsupported (fail the pod)."""
    meta, spec = pod["metadata"], pod["spec"]
    if spec.get("initContainers") or spec.get("ephemeralContainers"):
        raise Unsupported("init and ephemeral containers are not supported by the node agent; "
                          "put the steps into the container's command")
    pdir.mkdir(parents=True, exist_ok=True)
    objects = Objects(core, meta["namespace"])
    vols = volumes.prepare(core, objects, pod, pdir, root, allocatable, now)
    psc = spec.get("securityContext") or {}
    if psc.get("fsGroup"):
        volumes.apply_fs_group(vols, int(psc["fsGroup"]),
                               psc.get("fsGroupChangePolicy") == "OnRootMismatch")
    net = network.prepare(core, pod, root)
    hosts = None
    if net.hosts is not None:
        hosts = pdir / "hosts"
        hosts.write_text(net.hosts)
        hosts.chmod(0o644)
    launches = []
    for c in spec["containers"]:
        name = c["name"]
        ident = runner.identity(pod, c)
        home = pdir / "home" / name
        home.mkdir(parents=True, exist_ok=True)
        if ident.uid is not None:
            shutil.chown(home, ident.uid, ident.gid or 0)
        base = env.base_env(pod, api[0], api[1], str(home))
        e = network.translate_env(env.container_env(objects, pod, c, base, allocatable),
                                  net.ports)
        launches.append((name, runner.Launch(
            argv=network.translate_argv(env.container_argv(c, e), net.ports), env=e,
            mounts=runner.mounts(c, vols, termination_file(pdir, name), e, hosts),
            workdir=c.get("workingDir") or "/", identity=ident,
            log=log_path(root, meta["namespace"], meta["name"], meta["uid"], name),
            pid_file=pid_file(pdir, name), image=c.get("image", ""),
            read_only_root=bool((c.get("securityContext") or {}).get("readOnlyRootFilesystem")))))
    return launches, vols
