"""A pod's volumes as host directories.

PVC -> `<root>/pvc/<ns>/<claim>` (stable, survives pods; no PV/StorageClass is consulted),
emptyDir (any medium) -> `<pod dir>/volumes/<name>` (mode 0777), hostPath -> the path itself,
configMap / secret / downwardAPI / projected -> files written once at pod start (no live updates).
A projected serviceAccountToken is minted with the TokenRequest API, bound to the pod, and
re-minted at 80% of its lifetime by `refresh_tokens`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from finetune_dev.nodeagent.paths import pvc_dir
from finetune_dev.nodeagent.sources import (
    NotReady,
    Objects,
    Unsupported,
    field_value,
    raw,
    resource_value,
)

DEFAULT_MODE = 0o644


@dataclass
class Token:
    path: Path
    source: dict[str, Any]
    issued: datetime
    expires: datetime
    mode: int


@dataclass
class Volumes:
    dirs: dict[str, Path] = field(default_factory=dict)
    tokens: list[Token] = field(default_factory=list)
    owned: list[tuple[Path, bool]] = field(default_factory=list)  # (dir, writable) for fsGroup
    read_only: set[str] = field(default_factory=set)  # always mounted read-only, as on a kubelet


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write; a replaced file keeps its owner and group (fsGroup on a refreshed token:
    a non-root pod must still be able to read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    try:
        st = path.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    tmp.replace(path)


def _keys(dst: Path, data: dict[str, bytes], spec: dict[str, Any], mode: int, what: str) -> None:
    """Write a ConfigMap/Secret's keys (all, or `items` key -> path with an optional mode)."""
    items = spec.get("items")
    if not items:
        for key, value in data.items():
            _write(dst / key, value, mode)
        return
    for item in items:
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise NotReady("ContainerCreating", f"{what} has no key {item['key']!r} (volume items)")
        _write(dst / item["path"], data[item["key"]], item.get("mode", mode))


def _downward(dst: Path, pod: dict[str, Any], items: list[dict[str, Any]], mode: int,
              allocatable: dict[str, str]) -> None:
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    for item in items:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"])
        else:
            ref = item["resourceFieldRef"]
            container = containers[ref.get("containerName") or next(iter(containers))]
            value = resource_value(container, ref, allocatable)
        _write(dst / item["path"], value.encode(), item.get("mode", mode))


def mint_token(core: client.CoreV1Api, pod: dict[str, Any],
               source: dict[str, Any]) -> tuple[str, datetime]:
    """TokenRequest for the pod's ServiceAccount, bound to the pod (invalid once it is gone)."""
    meta = pod["metadata"]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
        "audiences": [source["audience"]] if source.get("audience") else [],
        "expirationSeconds": int(source.get("expirationSeconds", 3600)),
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "uid": meta["uid"]}}}
    sa = pod["spec"].get("serviceAccountName") or "default"
    resp = raw(core.create_namespaced_service_account_token, sa, meta["namespace"], body)
    expires = datetime.fromisoformat(resp["status"]["expirationTimestamp"])
    return resp["status"]["token"], expires


def _projected(core: client.CoreV1Api, objects: Objects, pod: dict[str, Any], dst: Path,
               spec: dict[str, Any], allocatable: dict[str, str], now: datetime,
               vols: Volumes) -> None:
    mode = spec.get("defaultMode", DEFAULT_MODE)
    for src in spec.get("sources") or []:
        if "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            token, expires = mint_token(core, pod, sat)
            path = dst / sat["path"]
            _write(path, token.encode(), mode)
            vols.tokens.append(Token(path, sat, now, expires, mode))
        elif "configMap" in src or "secret" in src:
            kind, ref = ("ConfigMap", src["configMap"]) if "configMap" in src else (
                "Secret", src["secret"])
            data = objects.data(kind, ref["name"], bool(ref.get("optional")))
            _keys(dst, data, ref, mode, f"{kind} {objects.namespace}/{ref['name']}")
        elif "downwardAPI" in src:
            _downward(dst, pod, src["downwardAPI"].get("items") or [], mode, allocatable)
        else:
            raise Unsupported(f"projected volume source {sorted(src)} is not supported")


def prepare(core: client.CoreV1Api, objects: Objects, pod: dict[str, Any], pdir: Path,
            root: Path, allocatable: dict[str, str], now: datetime) -> Volumes:
    """Materialize every volume of the pod; raises NotReady (retry later) or Unsupported."""
    ns = pod["metadata"]["namespace"]
    vols = Volumes()
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        dst = pdir / "volumes" / name
        if "persistentVolumeClaim" in vol:
            pvc = vol["persistentVolumeClaim"]
            dst = pvc_dir(root, ns, pvc["claimName"])
            dst.mkdir(parents=True, exist_ok=True)
            if pvc.get("readOnly"):
                vols.read_only.add(name)
            else:
                vols.owned.append((dst, True))
        elif "emptyDir" in vol:
            dst.mkdir(parents=True, exist_ok=True)
            dst.chmod(0o777)
            vols.owned.append((dst, True))
        elif "hostPath" in vol:
            dst = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind in ("Directory", "File", "Socket", "CharDevice", "BlockDevice"):
                if not dst.exists():
                    raise NotReady("ContainerCreating", f"hostPath {dst} ({kind}) does not exist")
            elif kind == "FileOrCreate":
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.touch()
            else:
                dst.mkdir(parents=True, exist_ok=True)
        elif "configMap" in vol or "secret" in vol:
            kind, ref = ("ConfigMap", vol["configMap"]) if "configMap" in vol else (
                "Secret", vol["secret"])
            ref_name = ref.get("name") or ref.get("secretName")
            data = objects.data(kind, ref_name, bool(ref.get("optional")))
            dst.mkdir(parents=True, exist_ok=True)
            _keys(dst, data, ref, ref.get("defaultMode", DEFAULT_MODE), f"{kind} {ns}/{ref_name}")
            vols.owned.append((dst, False))
        elif "downwardAPI" in vol:
            spec = vol["downwardAPI"]
            dst.mkdir(parents=True, exist_ok=True)
            _downward(dst, pod, spec.get("items") or [], spec.get("defaultMode", DEFAULT_MODE),
                      allocatable)
            vols.owned.append((dst, False))
        elif "projected" in vol:
            dst.mkdir(parents=True, exist_ok=True)
            _projected(core, objects, pod, dst, vol["projected"], allocatable, now, vols)
            vols.owned.append((dst, False))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise Unsupported(f"volume {name!r} of type {kinds} is not supported by the node agent "
                              "(supported: persistentVolumeClaim, emptyDir, hostPath, configMap, "
                              "secret, downwardAPI, projected)")
        vols.dirs[name] = dst
        if any(k in vol for k in ("configMap", "secret", "downwardAPI", "projected")):
            vols.read_only.add(name)
    return vols


def apply_fs_group(vols: Volumes, gid: int, on_root_mismatch: bool) -> None:
    """chgrp the pod's volumes to fsGroup: writable ones g+rwx with setgid dirs, others g+r."""
    for top, writable in vols.owned:
        if on_root_mismatch and top.stat().st_gid == gid:
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for p in [Path(dirpath)] + [Path(dirpath, n) for n in dirnames + filenames]:
                if p.is_symlink():
                    continue
                os.chown(p, -1, gid)
                mode = p.stat().st_mode & 0o7777
                if p.is_dir():
                    mode |= 0o2070 if writable else 0o050
                else:
                    mode |= 0o060 if writable else 0o040
                p.chmod(mode)


def refresh_tokens(core: client.CoreV1Api, pod: dict[str, Any], tokens: list[Token],
                   now: datetime) -> None:
    """Re-mint tokens past 80% of their lifetime, as a kubelet does (files replaced atomically)."""
    for t in tokens:
        if now >= t.issued + (t.expires - t.issued) * 0.8:
            token, t.expires = mint_token(core, pod, t.source)
            t.issued = now
            _write(t.path, token.encode(), t.mode)
