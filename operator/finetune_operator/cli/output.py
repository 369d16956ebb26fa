"""``kubectl finetune output NAME``: where a job's trained model is and the exact commands that
copy it out (a helper pod that mounts the claim read-only, then ``kubectl cp``; docs/data.md).

It works after the job is gone too: the claim the operator created is kept by default
(``checkpoint.storage.whenDeleted: Retain``) and found by its deterministic name.
"""

from __future__ import annotations

import argparse
from typing import IO, TYPE_CHECKING, Any

from finetune_api.labels import JOB_UID_ANNOTATION
from finetune_operator.cli import render
from finetune_operator.cli.errors import CliError
from finetune_operator.jobs.build.names import pvc_name
from finetune_operator.jobs.build.output import HELPER_IMAGE, OutputLocation, copy_commands
from finetune_operator.view.describe import location_of

if TYPE_CHECKING:
    from finetune_operator.cli.client import PluginApi


def _from_claim(claim: dict[str, Any], namespace: str, name: str) -> OutputLocation:
    """The job is gone: its retained claim names its uid (the job's directory on it)."""
    uid = ((claim.get("metadata") or {}).get("annotations") or {}).get(JOB_UID_ANNOTATION, "")
    if not uid:
        raise CliError(f"FineTuneJob {name} not found in namespace {namespace}, and claim "
                       f"{pvc_name(name)} does not say which job wrote it (no "
                       f"{JOB_UID_ANNOTATION} annotation); look under finetune/{namespace}/"
                       f"{name}/ on it")
    directory = f"finetune/{namespace}/{name}/{uid}"
    return OutputLocation(namespace=namespace, job=name, claim=pvc_name(name),
                          directory=directory, outputs=(f"{directory}/output",), retained=True)


def cmd_output(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    from kubernetes.client.exceptions import ApiException

    from finetune_operator.cli.commands import api_errors

    name = args.name
    with api_errors(api, "get", namespace, name):
        try:
            job: dict[str, Any] | None = api.get_job(namespace, name)
        except ApiException as e:
            if e.status != 404:
                raise
            job = None
    phase = note = None
    if job is None:
        with api_errors(api, "get", namespace, name):
            claim = api.get_claim(namespace, pvc_name(name))
        if claim is None:
            raise CliError(f"FineTuneJob {name} not found in namespace {namespace}, nor a kept "
                           f"output claim {pvc_name(name)}; list jobs with kubectl finetune list "
                           f"-n {namespace} and claims with kubectl get pvc -n {namespace}")
        loc = _from_claim(claim, namespace, name)
        note = (f"FineTuneJob {name} is gone; its kept claim {loc.claim} remains (the newest "
                "job of that name wrote under the directory below)")
    else:
        found = location_of(job)
        if found is None:
            raise CliError(f"FineTuneJob {name} cannot be read by this plugin version; see "
                           f"kubectl get finetunejob {name} -n {namespace} -o yaml")
        loc = found
        phase = (job.get("status") or {}).get("phase") or "Queued"
        if phase != "Succeeded":
            note = (f"FineTuneJob {name} is {phase}: the output exists once it has Succeeded; "
                    "checkpoints are under the same directory")
    cmds = copy_commands(loc, args.to or "", args.image)
    if args.output in ("json", "yaml"):
        out.write(render.dump({"namespace": loc.namespace, "job": loc.job, "phase": phase,
                            "claim": loc.claim, "directory": loc.directory,
                            "outputs": list(loc.outputs), "kept": loc.retained,
                            "commands": cmds}, args.output))
        return 0
    lines = [f"# {note}"] if note else []
    lines += [
        f"Claim:     {loc.claim} (namespace {loc.namespace}; "
        + ("kept when the job is deleted)" if loc.retained else
           "deleted with the job: checkpoint.storage.whenDeleted is Delete)"),
        f"Directory: {loc.directory} (in trainer pods under /mnt/checkpoints/)",
        *(f"Output:    {o}" for o in loc.outputs),
        "",
        "# copy it out: a helper pod mounts the claim read-only, kubectl cp copies, then it goes",
        *cmds,
    ]
    if loc.retained:
        lines += ["", f"# when you no longer need it (deletes the model and checkpoints): "
                  f"kubectl -n {loc.namespace} delete pvc {loc.claim}"
                  + ("" if loc.claim == pvc_name(loc.job) else "  # a claim you brought: "
                     f"delete only {loc.directory} on it")]
    out.write("\n".join(lines) + "\n")
    return 0


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    o = sub.add_parser("output", parents=[common],
                       help="where a job's trained model is, and the commands to copy it out",
                       description="Print the claim and path of a job's output and the kubectl "
                       "commands that copy it to this machine (a helper pod mounts the claim "
                       "read-only; kubectl cp needs tar in its image). Works after the job was "
                       "deleted while its claim is kept.")
    o.add_argument("name")
    o.add_argument("--to", metavar="DIR", help="local directory (default ./NAME-output)")
    o.add_argument("--image", default=HELPER_IMAGE,
                   help=f"helper pod image with sh and tar (default {HELPER_IMAGE}; use one your "
                   "cluster may pull)")
