"""A tiny dynamic provisioner for the local cluster: hostPath PersistentVolumes on demand.

The local control plane has no storage driver, so a PVC would stay Pending and its pod
unschedulable. `devcluster up` installs a default StorageClass `standard` whose provisioner is
this process: for every Pending claim of that class it creates a hostPath PV bound to the
claim (the directory the local node agent mounts for that claim), and deletes the PV (not the
data) once its claim is gone. Test and demo tooling only: no capacity accounting, no
access-mode enforcement.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

PROVISIONER = "finetune.dev/devcluster-hostpath"
STORAGE_CLASS = "standard"
log = logging.getLogger("devcluster.provisioner")


def volume_dir(state_dir: Path, namespace: str, claim: str) -> Path:
    """Host directory backing the PV of claim namespace/claim: the same directory the local
    node agent mounts for that claim (nodeagent.pvc_dir under the shared agent root)."""
    from finetune_dev.nodeagent.paths import (
        pvc_dir,  # lazy: nodeagent imports cluster, which imports us
    )

    return pvc_dir(state_dir / "nodeagent", namespace, claim)


def storage_class() -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"}


def pv_name(pvc: dict) -> str:
    return f"pvc-{pvc['metadata']['uid']}"


def _pv(pvc: dict, path: Path) -> dict:
    meta, spec = pvc["metadata"], pvc["spec"]
    size = (spec.get("resources", {}).get("requests") or {}).get("storage", "1Gi")
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv_name(pvc),
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": size},
                     "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": STORAGE_CLASS,
                     "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": meta["namespace"], "name": meta["name"],
                                  "uid": meta["uid"]}}}


def sync_once(core: client.CoreV1Api, state_dir: Path) -> None:
    plain = core.api_client.sanitize_for_serialization
    claims = [plain(c) for c in core.list_persistent_volume_claim_for_all_namespaces().items]
    live = set()
    for pvc in claims:
        meta, spec = pvc["metadata"], pvc["spec"]
        live.add(pv_name(pvc))
        if pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
            continue
        if (spec.get("storageClassName") or STORAGE_CLASS) != STORAGE_CLASS:
            continue
        path = volume_dir(state_dir, meta["namespace"], meta["name"])
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)  # trainer pods run as a non-root uid
        try:
            core.create_persistent_volume(_pv(pvc, path))  # type: ignore[arg-type]
            log.info("provisioned %s for %s/%s at %s", pv_name(pvc), meta["namespace"],
                     meta["name"], path)
        except ApiException as e:
            if e.status != 409:
                raise
    for pv in (plain(v) for v in core.list_persistent_volume().items):
        name = pv["metadata"]["name"]
        ann = pv["metadata"].get("annotations") or {}
        if ann.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and name not in live:
            try:
                core.delete_persistent_volume(name)
            except ApiException as e:
                if e.status != 404:
                    raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="devcluster-provisioner")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    core = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        try:
            sync_once(core, args.state_dir)
        except Exception as e:  # keep provisioning through API hiccups
            log.warning("sync failed: %s", e)
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
