"""Object storage in and out, against a real S3-compatible server (SeaweedFS, tests/trainer/
conftest.py): a job trains from a model and a dataset in a bucket, is preempted, resumes without
reading the bucket again and on the pinned bytes although the dataset object changed in
between, uploads its adapter and merged model with checksums, and the uploaded merged model
loads with AutoModelForCausalLM + AutoTokenizer."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from finetune_api.trainer_config import S3_ROLES, TrainerConfig, s3_env_name
from finetune_trainer import s3, sources
from finetune_trainer.config import ConfigError
from tests.builders.trainer import DATA, config_dict, read_json, write_config
from tests.trainer.helpers import progress_step, run_trainer, start_trainer, wait_until

_names = itertools.count()


def bucket(server: Any, versioned: bool) -> str:
    from minio.versioningconfig import ENABLED, VersioningConfig

    name = f"b{next(_names)}-{'v' if versioned else 'u'}"
    c = server.client()
    c.make_bucket(name)
    if versioned:
        c.set_bucket_versioning(name, VersioningConfig(ENABLED))
    return name


def put(server: Any, name: str, key: str, data: bytes) -> Any:
    return server.client().put_object(name, key, io.BytesIO(data), len(data))


def upload_tree(server: Any, name: str, prefix: str, local: Path) -> None:
    for p in sorted(x for x in local.rglob("*") if x.is_file()):
        put(server, name, f"{prefix}/{p.relative_to(local).as_posix()}", p.read_bytes())


def download_tree(server: Any, uri: str, dest: Path) -> list[str]:
    assert uri.startswith("s3://")
    name, prefix = uri[5:].split("/", 1)
    c = server.client()
    keys = [str(o.object_name) for o in c.list_objects(name, prefix=prefix, recursive=True)]
    for k in keys:
        out = dest / k[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        r = c.get_object(name, k)
        try:
            out.write_bytes(r.read())
        finally:
            r.close()
            r.release_conn()
    return sorted(k[len(prefix):] for k in keys)


def s3_env(server: Any) -> dict[str, str]:
    """What the pod gets from credentialsSecret (build/pod.py), for every role."""
    env = {}
    for role in S3_ROLES:
        env[s3_env_name(role, "AWS_ACCESS_KEY_ID")] = server.access_key
        env[s3_env_name(role, "AWS_SECRET_ACCESS_KEY")] = server.secret_key
    return env


def loc(server: Any, name: str, **kw: Any) -> dict[str, Any]:
    return {"bucket": name, "endpoint": server.endpoint, "region": server.region,
            "credentialsSecret": "s3-creds", **kw}


def test_train_from_s3_resume_on_pinned_bytes_without_reading_again_and_upload(
        s3_server: Any, tiny_model: Path, tmp_path: Path) -> None:
    src, out = bucket(s3_server, versioned=True), bucket(s3_server, versioned=False)
    upload_tree(s3_server, src, "base/tiny", tiny_model)
    original = (DATA / "messages.jsonl").read_bytes()
    first = put(s3_server, src, "data/train.jsonl", original)
    spec = {
        "output": {"mergeAdapter": True,
                   "s3": loc(s3_server, out, prefix="runs/bot", merged=True)},
        "training": {"maxSteps": 10},
    }
    work = tmp_path / "work"
    data = config_dict(tiny_model, work, spec=spec)
    data["spec"]["model"]["source"] = {"s3": loc(s3_server, src, prefix="base/tiny")}
    data["spec"]["dataset"]["source"] = {"s3": loc(s3_server, src, key="data/train.jsonl")}
    data["paths"].update(model=f"s3://{src}/base/tiny", dataset=f"s3://{src}/data/train.jsonl")
    config = write_config(tmp_path / "config.yaml", data)
    TrainerConfig.model_validate(data)  # what the operator writes is valid
    env = s3_env(s3_server)
    log, progress = tmp_path / "trainer.log", Path(data["progress"]["file"])

    # attempt 1: downloads, pins, is preempted after its first checkpoint
    proc = start_trainer(config, log, env)
    wait_until("step 6", lambda: progress_step(progress) >= 6, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    assert read_json(data["terminationLog"])["reason"] == "Preempted"
    pins = json.loads((work / "sources.json").read_text())
    assert pins["dataset"]["revision"] == first.etag == hashlib.md5(original).hexdigest()
    assert pins["dataset"]["versionId"] == first.version_id
    assert len(pins["model"]["objects"]) == len([p for p in tiny_model.rglob("*")
                                                 if p.is_file()])

    # the dataset object changes between the attempts: a new current version
    changed = b"\n".join(reversed(original.splitlines())) + b"\n"
    assert changed != original
    put(s3_server, src, "data/train.jsonl", changed)
    reads = s3_server.read_requests(src)
    assert reads >= len(pins["model"]["objects"]) + 1  # the counter saw attempt 1's downloads

    # attempt 2: the pinned revisions from the volume's cache, not one read of the bucket
    assert run_trainer(config, log, env=env) == 0, log.read_text()[-3000:]
    assert s3_server.read_requests(src) == reads
    term = read_json(data["terminationLog"])
    assert term["reason"] == "Completed", term
    by_role = {s["source"]: s for s in term["sources"]}
    assert by_role["dataset"] == {"source": "dataset", "uri": f"s3://{src}/data/train.jsonl",
                                  "revision": hashlib.md5(original).hexdigest(),
                                  "versionId": first.version_id}
    assert by_role["model"]["revision"] == pins["model"]["revision"]
    cached = list((work / sources.CACHE_DIR).glob("dataset-*/train.jsonl"))
    assert [p.read_bytes() for p in cached] == [original]  # the bytes tokenized and trained

    # uploaded, with a manifest that matches, and a card that says what trained it
    assert term["adapterUri"] == f"s3://{out}/runs/bot/adapter/"
    assert term["mergedUri"] == f"s3://{out}/runs/bot/merged/"
    got = tmp_path / "got"
    files = download_tree(s3_server, term["mergedUri"], got / "merged")
    assert {"README.md", "SHA256SUMS", "config.json", "tokenizer_config.json"} <= set(files)
    for line in (got / "merged" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((got / "merged" / name).read_bytes()).hexdigest() == digest, name
    download_tree(s3_server, term["adapterUri"], got / "adapter")
    card = (got / "adapter" / "README.md").read_text()
    for fact in (pins["model"]["revision"], hashlib.md5(original).hexdigest(),
                 first.version_id, "Attempts: 2; preemptions: 1", "Optimizer steps: 10",
                 "learningRate"):
        assert fact in card, fact
    assert (got / "adapter" / "tokenizer_config.json").is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(got / "merged")
    tok = AutoTokenizer.from_pretrained(got / "merged")
    ids = tok("What is the capital of France?", return_tensors="pt")
    gen = model.generate(**ids, min_new_tokens=3, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 3


def _cfg(tmp_path: Path, tiny_model: Path, src: dict[str, Any]) -> TrainerConfig:
    data = config_dict(tiny_model, tmp_path / "work")
    data["spec"]["dataset"]["source"] = {"s3": src}
    data["paths"]["dataset"] = f"s3://{src['bucket']}/{src['key']}"
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return TrainerConfig.model_validate(data)


@pytest.mark.parametrize("versioned", [True, False])
def test_interrupted_download_restarts_on_the_pinned_object(
        s3_server: Any, tiny_model: Path, tmp_path: Path, versioned: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (the stop flag) mid-download leaves no file; the next attempt reads the pinned
    version, or, without versioning, fails naming the change instead of training on it."""
    for k, v in s3_env(s3_server).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(s3, "CHUNK", 1024)
    name = bucket(s3_server, versioned)
    original = b"".join(json.dumps({"text": f"record {i} " + "x" * 200}).encode() + b"\n"
                        for i in range(200))
    put(s3_server, name, "d/train.jsonl", original)
    cfg = _cfg(tmp_path, tiny_model, loc(s3_server, name, key="d/train.jsonl"))
    chunks = itertools.count()
    with pytest.raises(sources.SourcesStopped):
        sources.prepare(cfg, True, "a1", lambda: next(chunks) >= 3)  # stop after 3 chunks
    cache = tmp_path / "work" / sources.CACHE_DIR
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []  # no .part, no file
    put(s3_server, name, "d/train.jsonl", original + b"{}\n")
    if not versioned:
        with pytest.raises(ConfigError, match="changed since the first attempt pinned it"):
            sources.prepare(cfg, True, "a2", lambda: False)
        return
    resolved_cfg, resolved = sources.prepare(cfg, True, "a2", lambda: False)
    assert Path(resolved_cfg.paths.dataset).read_bytes() == original
    assert resolved[1].revision == hashlib.md5(original).hexdigest()
