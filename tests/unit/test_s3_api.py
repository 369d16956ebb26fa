"""Object-storage sources and outputs in the API (bounds, one source each), in the pod (the
Secret's keys as env references, never values), and in the trainer's termination message."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from finetune_api.spec import DatasetS3Source, FineTuneJobSpec, ModelS3Source, OutputS3
from finetune_api.trainer_config import S3_CREDENTIAL_KEYS, TrainerConfig, s3_env_name
from finetune_operator.jobs.build.configmap import build_config_map
from finetune_operator.jobs.build.pod import build_pod
from finetune_operator.jobs.pods import output_from, sources_from
from finetune_operator.reports.model import BadReport, check_termination, parse_termination
from finetune_trainer.progress import termination_message
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit

S3 = {"bucket": "team-models", "endpoint": "https://s3.example.com:9000",
      "credentialsSecret": "s3-creds"}
S3_JOB = {
    "model": {"name": "tiny", "source": {"s3": {**S3, "prefix": "base/tiny/"}}},
    "dataset": {"source": {"s3": {**S3, "key": "data/train.jsonl", "versionId": "v1"}}},
    "output": {"mergeAdapter": True, "s3": {**S3, "bucket": "team-out", "prefix": "runs/a",
                                            "merged": True,
                                            "credentialsSecret": "out-creds"}},
}


@pytest.mark.parametrize("bucket", ["ab", "-abc", "abc-", "ABC", "a_b", "a" * 64, "a b"])
def test_bucket_names_follow_the_s3_rules(bucket: str) -> None:
    with pytest.raises(ValidationError, match="bucket"):
        DatasetS3Source(bucket=bucket, key="k")


@pytest.mark.parametrize("key", ["/abs", "a/../b", "a/./b", "..", "a\nb", "x" * 1025, ""])
def test_keys_are_relative_bounded_and_printable(key: str) -> None:
    with pytest.raises(ValidationError):
        DatasetS3Source(bucket="abc", key=key)
    with pytest.raises(ValidationError):
        ModelS3Source(bucket="abc", prefix=key)
    with pytest.raises(ValidationError):
        OutputS3(bucket="abc", prefix=key)


@pytest.mark.parametrize("field,value", [
    ("endpoint", "ftp://x"), ("endpoint", "https://x/?a=b"), ("endpoint", "h" * 2049),
    ("region", "US EAST"), ("region", "r" * 65), ("credentialsSecret", "Not_A_Name"),
    ("versionId", "v 1"), ("versionId", "v" * 1025),
])
def test_every_other_field_is_bounded(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        DatasetS3Source.model_validate({"bucket": "abc", "key": "k", field: value})


def test_exactly_one_source_and_merged_needs_a_merged_model() -> None:
    spec = make_job(**S3_JOB).spec
    assert spec.model.source.s3 is not None and spec.model.source.s3.region == "us-east-1"
    wire = spec.to_wire()
    both = json.loads(json.dumps(wire))
    both["model"]["source"]["hub"] = {"repo": "org/m"}
    with pytest.raises(ValidationError, match="exactly one of pvc, hub, s3"):
        FineTuneJobSpec.model_validate(both)
    no_merge = json.loads(json.dumps(wire))
    no_merge["output"]["mergeAdapter"] = False
    with pytest.raises(ValidationError, match=r"output\.s3\.merged needs output\.mergeAdapter"):
        FineTuneJobSpec.model_validate(no_merge)
    hub = json.loads(json.dumps(wire))
    hub["dataset"]["source"] = {"hub": {"repo": "org/data", "revision": "abc123"}}
    assert FineTuneJobSpec.model_validate(hub).dataset.source.hub.revision == "abc123"  # type: ignore[union-attr]


def test_pod_gets_secret_key_references_and_config_names_the_uris() -> None:
    job = make_job(**S3_JOB)
    pod = build_pod(job, make_settings(), attempt=1, rank=0, priority_class=None,
                    save_seconds=None)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    for role, secret in (("model", "s3-creds"), ("dataset", "s3-creds"),
                         ("output", "out-creds")):
        for key in S3_CREDENTIAL_KEYS:
            ref = env[s3_env_name(role, key)]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret and ref["key"] == key
            assert ref.get("optional", False) == (key == "AWS_SESSION_TOKEN")
    assert not any(k.startswith("FINETUNE_S3_EVALDATASET") for k in env)
    text = json.dumps(pod) + json.dumps(build_config_map(job))
    assert "value\": \"s3-creds" not in text  # a name in a reference, never a value
    cfg = TrainerConfig.model_validate(yaml.safe_load(build_config_map(job)["data"]["config.yaml"]))
    assert cfg.paths.model == "s3://team-models/base/tiny/"
    assert cfg.paths.dataset == "s3://team-models/data/train.jsonl"


def _message(**kw: Any) -> str:
    base: dict[str, Any] = dict(reason="Completed", message="done", final_step=10,
                                adapter_path="output/adapter", merged_path="output/merged",
                                metrics={"trainLoss": 1.5}, checkpoint=None)
    return termination_message(**{**base, **kw})


def test_termination_message_carries_uris_and_sources_into_status() -> None:
    sources = [{"source": "model", "uri": "s3://team-models/base/tiny/",
                "revision": "a" * 64},
               {"source": "dataset", "uri": "s3://team-models/data/train.jsonl",
                "revision": "0123456789abcdef0123456789abcdef", "versionId": "v1"}]
    msg = parse_termination(_message(adapter_uri="s3://team-out/runs/a/adapter/",
                                     merged_uri="s3://team-out/runs/a/merged/",
                                     sources=sources))
    out = output_from(msg)
    assert (out.adapter_uri, out.merged_uri) == ("s3://team-out/runs/a/adapter/",
                                                 "s3://team-out/runs/a/merged/")
    got = sources_from(msg, [])
    assert [(s.source, s.revision, s.version_id) for s in got] == [
        ("model", "a" * 64, ""), ("dataset", "0123456789abcdef0123456789abcdef", "v1")]
    # an old message (no sources) keeps what status had
    assert sources_from(parse_termination(_message()), got) == got


@pytest.mark.parametrize("over", [
    {"adapter_uri": "https://evil.example/x"},
    {"merged_uri": "s3://b/\u0007"},
    {"sources": [{"source": "weights", "uri": "s3://abc/k", "revision": "x"}]},
    {"sources": [{"source": "model", "uri": "s3://abc/k", "revision": "x y"}]},
    {"sources": [{"source": "model", "uri": "s3://abc/k", "revision": "x"}] * 4},
])
def test_termination_message_rejects_what_a_pod_should_not_say(over: dict[str, Any]) -> None:
    with pytest.raises(BadReport):
        check_termination(_message(**over))


def test_describe_shows_s3_sources_resolved_revisions_and_output_uris() -> None:
    import datetime as dt

    from finetune_operator.view import describe
    from tests.builders.jobs import job_body

    job = job_body("bot", status={
        "phase": "Succeeded",
        "output": {"adapterPath": "output/adapter", "adapterUri": "s3://team-out/runs/a/adapter/"},
        "sources": [{"source": "model", "uri": "hub://org/m", "revision": "c0ffee"},
                    {"source": "dataset", "uri": "s3://team-models/data/train.jsonl",
                     "revision": "0123", "versionId": "v1"}]})
    job["spec"]["dataset"]["source"] = {"s3": {"bucket": "team-models", "key": "data/t.jsonl"}}
    d = describe.describe(job, [], dt.datetime(2026, 1, 1, 2, tzinfo=dt.UTC))
    status = {f["label"]: f["value"] for f in d["status"]}
    assert status["Output URIs"] == "adapter s3://team-out/runs/a/adapter/"
    assert status["Source model"] == "hub://org/m at c0ffee"
    assert status["Source dataset"] == "s3://team-models/data/train.jsonl at 0123 version v1"
    spec = {f["label"]: f["value"] for f in d["spec"]}
    assert spec["Dataset"].startswith("s3://team-models/data/t.jsonl")


def test_the_first_attempt_s_pins_reach_status_on_preemption_and_stay_on_success() -> None:
    from tests.builders.pods import make_pod
    from tests.builders.reconcile import ADMIT, DONE, PREEMPTED, running

    pins = [{"source": "dataset", "uri": "s3://team-models/data/train.jsonl",
             "revision": "0123456789abcdef0123456789abcdef", "versionId": "v1"}]
    sim = running()
    p = sim.tick(30).step([make_pod(sim.job, 1, 0, exit_code=0,
                                    message={**PREEMPTED, "sources": pins})])
    assert p.status.phase == "Queued"
    assert [(s.uri, s.revision, s.version_id) for s in p.status.sources] == [
        ("s3://team-models/data/train.jsonl", "0123456789abcdef0123456789abcdef", "v1")]
    # attempt 2 completes; a message without sources (an older trainer) keeps the pins
    sim.tick(20).step(decision=ADMIT)
    sim.tick(5).step([make_pod(sim.job, 2, 0)])
    p = sim.tick(60).step([make_pod(sim.job, 2, 0, exit_code=0, message=DONE)])
    assert p.status.phase == "Succeeded"
    assert [s.version_id for s in p.status.sources] == ["v1"]


def test_a_hub_model_is_pinned_to_the_commit_of_the_first_download(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub itself is not reachable in tests (no network): its download function is
    replaced by one that serves a snapshot directory named by its commit, as the real one."""
    import huggingface_hub

    from finetune_trainer import sources
    from tests.builders.trainer import config_dict

    asked: list[str] = []
    commits = iter(["c0ffee" * 6 + "abcd", "deadbeef" * 5])  # "main" moves between attempts

    def snapshot_download(repo: str, revision: str, **_: Any) -> str:
        asked.append(revision)
        commit = revision if revision != "main" else next(commits)
        d = tmp_path / "hub" / "snapshots" / commit
        d.mkdir(parents=True, exist_ok=True)
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    data = config_dict(tmp_path / "m", tmp_path / "work")
    data["spec"]["model"]["source"] = {"hub": {"repo": "org/m"}}
    data["paths"]["model"] = "org/m"
    (tmp_path / "work").mkdir()
    cfg = TrainerConfig.model_validate(data)
    first, r1 = sources.prepare(cfg, True, "a1", lambda: False)
    second, r2 = sources.prepare(cfg, True, "a2", lambda: False)
    assert asked == ["main", "c0ffee" * 6 + "abcd"]  # the later attempt asks for the commit
    assert r1[0].revision == r2[0].revision == "c0ffee" * 6 + "abcd"
    assert first.paths.model == second.paths.model
    assert json.loads((tmp_path / "work" / "sources.json").read_text())["model"]["uri"] == \
        "hub://org/m"
