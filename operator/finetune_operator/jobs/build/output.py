"""Where a job's output is and how to copy it out (pure; used by the success condition, by
``kubectl finetune describe`` and by ``kubectl finetune output``).

The trainer writes under the job's own directory on the checkpoint claim,
``finetune/<namespace>/<name>/<uid>/`` (mounted at ``/mnt/checkpoints`` in the trainer pods):
``output/adapter`` (LoRA/QLoRA), ``output/merged`` (full fine-tuning, or ``mergeAdapter``).
A helper pod that mounts the claim read-only lets ``kubectl cp`` copy it out (docs/data.md).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.trainer_config import CHECKPOINT_MOUNT
from finetune_operator.jobs.build.configmap import work_dir
from finetune_operator.jobs.build.pod import (
    RUN_AS,
    container_security_context,
    pod_security_context,
)
from finetune_operator.jobs.build.pvc import checkpoint_claim_name, creates_pvc

HELPER_MOUNT = "/output"
HELPER_IMAGE = "busybox:1.36"  # any image with sh and tar (kubectl cp needs tar)


@dataclass(frozen=True)
class OutputLocation:
    namespace: str
    job: str
    claim: str
    directory: str               # the job's directory on the claim (relative to its root)
    outputs: tuple[str, ...]     # output directories on the claim, e.g. <directory>/output/adapter
    retained: bool               # the claim outlives the job

    @property
    def helper_pod(self) -> str:
        return f"{self.job}-output"[:63].rstrip("-")


def output_location(job: FineTuneJob, adapter_path: str = "", merged_path: str = ""
                    ) -> OutputLocation:
    """The claim and paths of ``job``'s output. ``adapter_path``/``merged_path`` are the
    trainer's (relative to the job's directory, status.output); none known -> ``output``."""
    directory = work_dir(job).removeprefix(CHECKPOINT_MOUNT).strip("/")
    rel = [p.strip("/") for p in (adapter_path, merged_path) if p] or ["output"]
    storage = job.spec.checkpoint.storage
    retained = not creates_pvc(job) or storage.when_deleted == "Retain"
    return OutputLocation(
        namespace=job.metadata.namespace, job=job.metadata.name,
        claim=checkpoint_claim_name(job), directory=directory,
        outputs=tuple(f"{directory}/{p}" for p in rel), retained=retained)


def helper_overrides(loc: OutputLocation, image: str = HELPER_IMAGE) -> dict[str, Any]:
    """The pod spec of the copy helper: mounts the claim read-only, sleeps, runs as the
    trainer's user under the restricted Pod Security profile."""
    return {"apiVersion": "v1", "spec": {
        "securityContext": {k: v for k, v in pod_security_context().items()
                            if not k.startswith("fsGroup")},
        "volumes": [{"name": "output", "persistentVolumeClaim": {
            "claimName": loc.claim, "readOnly": True}}],
        "containers": [{
            "name": "copy", "image": image, "command": ["sleep", "3600"],
            "securityContext": {**container_security_context(), "runAsUser": RUN_AS},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                          "limits": {"cpu": "200m", "memory": "64Mi"}},
            "volumeMounts": [{"name": "output", "mountPath": HELPER_MOUNT, "readOnly": True}],
        }],
    }}


def copy_commands(loc: OutputLocation, dest: str = "", image: str = HELPER_IMAGE) -> list[str]:
    """The kubectl commands that copy the output to ``dest`` (default ./<job>-output) through
    a helper pod, then delete the helper pod."""
    ns, pod = shlex.quote(loc.namespace), loc.helper_pod
    dest = dest or f"./{loc.job}-output"
    overrides = json.dumps(helper_overrides(loc, image), separators=(",", ":"))
    cmds = [
        f"kubectl -n {ns} run {pod} --restart=Never --image={shlex.quote(image)} "
        f"--overrides={shlex.quote(overrides)}",
        f"kubectl -n {ns} wait --for=condition=Ready pod/{pod} --timeout=5m",
        f"mkdir -p {shlex.quote(dest)}",
    ]
    for out in loc.outputs:
        leaf = out.rsplit("/", 1)[-1]
        cmds.append(f"kubectl -n {ns} cp {pod}:{HELPER_MOUNT}/{out} "
                    f"{shlex.quote(dest + '/' + leaf)}")
    cmds.append(f"kubectl -n {ns} delete pod {pod}")
    return cmds


def summary(loc: OutputLocation) -> str:
    """One line for the success condition: claim, full path(s), how to copy it out."""
    paths = ", ".join(loc.outputs)
    keep = ("kept when the job is deleted" if loc.retained
            else "deleted with the job (checkpoint.storage.whenDeleted: Delete)")
    return (f"output on PersistentVolumeClaim {loc.claim} at {paths} ({keep}); copy it out: "
            f"kubectl finetune output {loc.job} -n {loc.namespace}")
