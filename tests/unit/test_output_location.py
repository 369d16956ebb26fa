"""Issue 27: the output outlives its job by default, and every place that reports success says
where it is (claim, full path on it) and how to copy it out."""

from __future__ import annotations

import json
import shlex

import pytest

from finetune_api.spec import StorageSpec
from finetune_operator.cli import render
from finetune_operator.cli.args import build_parser
from finetune_operator.jobs.build.output import copy_commands, output_location, summary
from finetune_operator.jobs.build.pvc import build_pvc, is_own_claim
from finetune_operator.settings import OperatorSettings, SettingsError
from finetune_operator.view.describe import describe, describe_line
from tests.builders.jobs import make_job
from tests.builders.pods import make_pod
from tests.builders.reconcile import DONE, NOW, cond, running

pytestmark = pytest.mark.unit


def test_default_location_is_the_kept_claim_and_the_jobs_directory_on_it() -> None:
    job = make_job()
    loc = output_location(job, "output/adapter", "")
    assert loc.claim == "bot-checkpoints"
    assert loc.directory == f"finetune/team-a/bot/{job.metadata.uid}"
    assert loc.outputs == (f"finetune/team-a/bot/{job.metadata.uid}/output/adapter",)
    assert loc.retained


def test_full_method_and_merge_report_the_merged_directory_too() -> None:
    job = make_job()
    loc = output_location(job, "output/adapter", "output/merged")
    assert [o.rsplit("/", 2)[-2:] for o in loc.outputs] == [["output", "adapter"],
                                                             ["output", "merged"]]
    assert output_location(job).outputs == (f"{loc.directory}/output",)  # nothing reported


def test_an_existing_claim_is_named_and_never_said_to_be_deleted() -> None:
    job = make_job(storage={"claimName": "team-ckpt"})
    loc = output_location(job, "output/adapter")
    assert loc.claim == "team-ckpt" and loc.retained


def test_when_deleted_delete_is_reported_as_going_with_the_job() -> None:
    loc = output_location(make_job(storage={"size": "20Gi", "whenDeleted": "Delete"}))
    assert not loc.retained
    assert "deleted with the job" in summary(loc)


def test_when_deleted_delete_needs_a_created_claim() -> None:
    with pytest.raises(ValueError, match="whenDeleted Delete only applies with size"):
        StorageSpec.model_validate({"claimName": "shared", "whenDeleted": "Delete"})
    assert StorageSpec.model_validate({"claimName": "shared"}).when_deleted == "Retain"


def test_summary_names_claim_full_path_and_the_copy_command() -> None:
    job = make_job()
    text = summary(output_location(job, "output/adapter"))
    assert "PersistentVolumeClaim bot-checkpoints" in text
    assert f"finetune/team-a/bot/{job.metadata.uid}/output/adapter" in text
    assert "kept when the job is deleted" in text
    assert "kubectl finetune output bot -n team-a" in text


def test_copy_commands_mount_the_claim_read_only_and_copy_each_output() -> None:
    job = make_job()
    loc = output_location(job, "output/adapter", "output/merged")
    cmds = copy_commands(loc, "/tmp/out")
    run = shlex.split(cmds[0])
    assert run[:5] == ["kubectl", "-n", "team-a", "run", "bot-output"]
    overrides = json.loads(next(a for a in run if a.startswith("--overrides="))
                           .removeprefix("--overrides="))
    spec = overrides["spec"]
    assert spec["volumes"] == [{"name": "output", "persistentVolumeClaim": {
        "claimName": "bot-checkpoints", "readOnly": True}}]
    container = spec["containers"][0]
    assert container["volumeMounts"][0]["readOnly"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "wait --for=condition=Ready pod/bot-output" in cmds[1]
    assert cmds[2] == "mkdir -p /tmp/out"
    assert cmds[3] == (f"kubectl -n team-a cp bot-output:/output/{loc.outputs[0]} "
                       "/tmp/out/adapter")
    assert cmds[4].endswith("/tmp/out/merged")
    assert cmds[-1] == "kubectl -n team-a delete pod bot-output"


def test_success_condition_gives_claim_path_and_copy_command() -> None:
    sim = running()
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    msg = cond(p.status, "Complete").message
    assert "bot-checkpoints" in msg
    assert f"finetune/team-a/bot/{sim.job.metadata.uid}/output/adapter" in msg
    assert f"finetune/team-a/bot/{sim.job.metadata.uid}/output/merged" in msg
    assert "kubectl finetune output bot -n team-a" in msg


def _claim(job_uid: str | None, owners: list[str], job_label: str = "bot") -> dict:
    meta: dict = {"name": "bot-checkpoints", "labels": {
        "app.kubernetes.io/managed-by": "finetune-operator", "finetune.dev/job": job_label}}
    if job_uid:
        meta["annotations"] = {"finetune.dev/job-uid": job_uid}
    if owners:
        meta["ownerReferences"] = [{"kind": "FineTuneJob", "uid": u} for u in owners]
    return {"metadata": meta}


def test_a_kept_claim_is_mounted_by_its_job_and_by_a_later_job_of_the_same_name() -> None:
    job = make_job()
    uid = job.metadata.uid
    assert is_own_claim(_claim(uid, []), job)            # created for it, kept (no owner)
    assert is_own_claim(_claim(uid, [uid]), job)         # whenDeleted Delete
    assert is_own_claim(_claim("earlier-uid", []), job)  # kept from an earlier "bot"
    assert not is_own_claim(_claim("earlier-uid", ["earlier-uid"]), job)  # being collected
    assert not is_own_claim(_claim(None, [], job_label="other"), job)
    assert not is_own_claim({"metadata": {"name": "bot-checkpoints"}}, job)  # a user's claim


def test_built_claim_is_recognised_as_its_own() -> None:
    for when in ("Retain", "Delete"):
        job = make_job(storage={"size": "20Gi", "whenDeleted": when})
        pvc = build_pvc(job)
        assert pvc is not None and is_own_claim(pvc, job)


def test_describe_shows_the_output_claim_of_a_succeeded_job() -> None:
    sim = running()
    sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0, message=DONE)])
    body = sim.job.model_dump(by_alias=True, mode="json", exclude_none=True)
    line = describe_line(body)
    assert line is not None and "bot-checkpoints at finetune/team-a/bot/" in line
    assert "kubectl finetune output bot -n team-a" in line
    text = render.describe_text(describe(body, [], NOW))
    assert "Output claim:" in text and "output/adapter" in text
    running_body = running().job.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert describe_line(running_body) is None


def test_output_command_parses() -> None:
    args = build_parser().parse_args(["output", "bot", "-n", "team-a", "--to", "/tmp/x"])
    assert (args.command, args.name, args.namespace, args.to) == ("output", "bot", "team-a",
                                                                  "/tmp/x")


def test_ttl_setting_empty_keeps_zero_deletes_at_once() -> None:
    assert OperatorSettings.from_env({}).cycle.ttl_seconds_after_finished is None
    assert OperatorSettings.from_env({"FINETUNE_TTL_SECONDS_AFTER_FINISHED": ""}) \
        .cycle.ttl_seconds_after_finished is None
    zero = OperatorSettings.from_env({"FINETUNE_TTL_SECONDS_AFTER_FINISHED": "0"})
    assert zero.cycle.ttl_seconds_after_finished == 0
    for s in (OperatorSettings(), zero):
        assert OperatorSettings.from_env(s.as_env()) == s
    with pytest.raises(SettingsError, match="FINETUNE_TTL_SECONDS_AFTER_FINISHED"):
        OperatorSettings.from_env({"FINETUNE_TTL_SECONDS_AFTER_FINISHED": "-1"})
