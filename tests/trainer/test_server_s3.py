"""The serving runtime's base model from object storage (``--model s3://BUCKET/PREFIX``,
finetune_server/fetch.py), against a real S3-compatible store (SeaweedFS, tests/trainer/
conftest.py): the runtime downloads the tiny model as a real process with its credentials in the
environment and answers the real ``openai`` client; with wrong credentials it exits 3 saying
what, why and what to do, and prints no secret; a second download of an unchanged model reads no
object again, a changed one is downloaded anew."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_server import fetch
from tests.builders.trainer import ROOT, trainer_env
from tests.operator_proc import free_port

from .serving import SERVER_SRC, Server, wait_healthy

_names = itertools.count()
PREFIX = "base/tiny"


def put_tree(server: Any, local: Path, prefix: str) -> str:
    """A new bucket holding ``local`` under ``prefix/`` (and a folder marker, as consoles make
    them); returns the bucket's name."""
    name = f"srv{next(_names)}"
    c = server.client()
    c.make_bucket(name)
    c.put_object(name, f"{prefix}/", io.BytesIO(b""), 0)
    for p in sorted(x for x in local.rglob("*") if x.is_file()):
        data = p.read_bytes()
        c.put_object(name, f"{prefix}/{p.relative_to(local).as_posix()}", io.BytesIO(data),
                     len(data))
    return name


def creds(access: str, secret: str) -> dict[str, str]:
    """What the operator sets from credentialsSecret (serving/build.py), and nothing else."""
    return {fetch.ACCESS_KEY_ENV: access, fetch.SECRET_KEY_ENV: secret}


def runtime_argv(s3: Any, bucket: str, download: Path) -> list[str]:
    return [sys.executable, "-m", "finetune_server", "--runtime", "transformers",
            "--model", f"s3://{bucket}/{PREFIX}", "--s3-endpoint", s3.endpoint,
            "--s3-region", s3.region, "--s3-download-dir", str(download),
            "--served-model-name", "tiny", "--host", "127.0.0.1"]


def runtime_env(env: dict[str, str]) -> dict[str, str]:
    base = trainer_env({"PYTHONPATH": str(SERVER_SRC), **env})
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        base.pop(k, None)  # only the model role's variables
    return base


def files_of(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != fetch.MARKER}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune_dev.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("s3-serving") / "tiny", arch="llama")


def test_the_runtime_downloads_the_model_and_answers_the_openai_client(
        s3_server: Any, tiny: Path, tmp_path: Path) -> None:
    from openai import OpenAI

    bucket = put_tree(s3_server, tiny, PREFIX)
    download = tmp_path / "model"
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([*runtime_argv(s3_server, bucket, download), "--port",
                                 str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env=runtime_env(creds(s3_server.access_key,
                                                      s3_server.secret_key)))
    server = Server(proc, port, log)
    try:
        wait_healthy(server, 300)
        # every object under the prefix, byte for byte; the folder marker is no file
        assert files_of(download) == files_of(tiny)
        assert not list(download.parent.glob(".model.partial")) and not list(
            download.rglob("*.part"))
        client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                        timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        r = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            temperature=0)
        assert r.model == "tiny" and r.choices[0].message.role == "assistant"
        assert isinstance(r.choices[0].message.content, str)
        assert r.usage is not None and 1 <= r.usage.completion_tokens <= 8
    finally:
        assert server.stop() == 0, server.tail()
    text = log.read_text(errors="replace")
    assert f"s3://{bucket}/{PREFIX}/" in text and f"{len(files_of(tiny))} files" in text
    assert s3_server.secret_key not in text


def test_wrong_credentials_exit_3_saying_why_without_the_secret(
        s3_server: Any, tiny: Path, tmp_path: Path) -> None:
    bucket = put_tree(s3_server, tiny, PREFIX)
    wrong = "wrong-Secret-0123456789abcdef"
    download = tmp_path / "model"
    for env in (creds(s3_server.access_key, wrong), creds("NOSUCHKEY0123", wrong)):
        term = tmp_path / "termination-log"
        term.write_text("")  # as the kubelet makes it: the runtime writes only an existing file
        proc = subprocess.run([*runtime_argv(s3_server, bucket, download), "--port", "0"],
                              cwd=ROOT, env=runtime_env({**env,
                                                         "FINETUNE_TERMINATION_LOG": str(term)}),
                              capture_output=True, text=True, timeout=300)
        said = proc.stdout + proc.stderr
        # the pod's termination message: what the ModelServer's status shows
        message = term.read_text()
        assert message.startswith(f"cannot download the base model s3://{bucket}/{PREFIX}/")
        assert message in said and wrong not in message
        assert proc.returncode == 3, said
        assert f"cannot download the base model s3://{bucket}/{PREFIX}/" in said  # what
        assert "access denied" in said  # why
        assert "credentialsSecret" in said and fetch.SECRET_KEY_ENV in said  # what to do
        assert wrong not in said and s3_server.secret_key not in said
        assert "Traceback" not in said
        assert not download.exists()  # nothing half-written under the final name


def test_an_unchanged_model_is_not_read_again_and_a_changed_one_is(
        s3_server: Any, tiny: Path, tmp_path: Path) -> None:
    bucket = put_tree(s3_server, tiny, PREFIX)
    env = creds(s3_server.access_key, s3_server.secret_key)
    m = fetch.parse_uri(f"s3://{bucket}/{PREFIX}", s3_server.endpoint, s3_server.region)
    dest = tmp_path / "model"
    assert fetch.fetch(m, dest, env) == dest.absolute()
    first = {p: (dest / p).stat().st_ino for p in files_of(dest)}
    assert files_of(dest) == files_of(tiny)
    n = len(first)
    assert s3_server.read_requests(bucket) == n  # each object read once (a listing is no read)
    fetch.fetch(m, dest, env)
    assert {p: (dest / p).stat().st_ino for p in files_of(dest)} == first  # kept as it was
    assert s3_server.read_requests(bucket) == n  # and not read again
    changed = b'{"changed": true}\n'
    s3_server.client().put_object(bucket, f"{PREFIX}/generation_config.json",
                                  io.BytesIO(changed), len(changed))
    fetch.fetch(m, dest, env)
    assert (dest / "generation_config.json").read_bytes() == changed
    assert s3_server.read_requests(bucket) == 2 * n  # a new listing: the whole model again
    assert set(files_of(dest)) == set(first)
    # a directory the runtime did not fill is never overwritten
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(fetch.FetchError, match="not empty"):
        fetch.fetch(m, other, env)
    assert (other / "keep.txt").read_text() == "mine"
