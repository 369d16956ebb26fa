"""A ModelServer whose base model is in object storage: the api accepts it (and checks its S3
fields as a job's), the pod carries the URI and the store's settings as the runtime's arguments
and the credentials as references to the Secret (never a value), the runtime parses what the
operator passes, `kubectl finetune serve` turns an S3-model job into such a server, and the
runtime's pure download plan refuses what would leave the model directory."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.server import ModelServer, ModelServerSpec
from finetune_api.trainer_config import S3_CREDENTIAL_KEYS, s3_env_name
from finetune_operator.cli.args import build_parser
from finetune_operator.cli.serving import cmd_serve
from finetune_operator.serving.build import (
    MODEL_DOWNLOAD_DIR,
    build_pod,
    spec_hash,
)
from finetune_operator.settings import OperatorSettings
from finetune_server import args as server_args
from finetune_server import fetch

pytestmark = pytest.mark.unit

SETTINGS = OperatorSettings()
S3 = {"bucket": "team-models", "endpoint": "https://s3.example.com:9000", "region": "eu-west-1",
      "prefix": "base/tiny/", "credentialsSecret": "s3-creds"}


def server(s3: dict[str, Any] | None = None, **spec: Any) -> ModelServer:
    return ModelServer.from_body({
        "apiVersion": "finetune.dev/v1alpha1", "kind": "ModelServer",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-chat"},
        "spec": {"model": {"name": "tiny", "source": {"s3": s3 or S3}},
                 "runtime": "transformers", "resources": {"gpus": 0}, **spec}})


def container(pod: dict[str, Any]) -> dict[str, Any]:
    return dict(pod["spec"]["containers"][0])


def test_the_api_accepts_an_s3_model_and_checks_its_fields_as_a_jobs() -> None:
    spec = ModelServerSpec.model_validate({"model": {"name": "tiny", "source": {"s3": S3}},
                                           "runtime": "transformers",
                                           "resources": {"gpus": 0}})
    assert spec.model.source.s3 is not None and spec.model.source.s3.bucket == "team-models"
    for bad, field in (({"prefix": "a/../b"}, "prefix"), ({"bucket": "A_b"}, "bucket"),
                       ({"endpoint": "s3.example.com"}, "endpoint")):
        with pytest.raises(ValidationError, match=field):
            ModelServerSpec.model_validate({"model": {"name": "tiny", "source": {
                "s3": {**S3, **bad}}}})


def test_the_pod_passes_uri_and_settings_as_args_and_credentials_by_reference() -> None:
    pod = build_pod(server(), SETTINGS, (), None, None)
    c = container(pod)
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", "finetune_server"]
    pairs = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")}
    assert pairs["--model"] == "s3://team-models/base/tiny"
    assert pairs["--s3-endpoint"] == "https://s3.example.com:9000"
    assert pairs["--s3-region"] == "eu-west-1"
    assert pairs["--s3-download-dir"] == MODEL_DOWNLOAD_DIR
    assert pairs["--served-model-name"] == "tiny"
    # the download lands in the /tmp emptyDir; no model claim is mounted
    assert MODEL_DOWNLOAD_DIR.startswith("/tmp/")
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {}} in pod["spec"]["volumes"]
    assert not [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    env = {e["name"]: e for e in c["env"]}
    for key in S3_CREDENTIAL_KEYS:
        e = env[s3_env_name("model", key)]
        assert "value" not in e
        assert e["valueFrom"]["secretKeyRef"] == {
            "name": "s3-creds", "key": key,
            **({"optional": True} if key == "AWS_SESSION_TOKEN" else {})}
    assert len([n for n in env if n.startswith("FINETUNE_S3_")]) == len(S3_CREDENTIAL_KEYS)
    # nothing in the command line is a credential; the runtime reads these very names
    assert not [a for a in cmd if "AWS_" in a or "s3-creds" in a]
    names = tuple(s3_env_name("model", k) for k in S3_CREDENTIAL_KEYS)
    assert names == (fetch.ACCESS_KEY_ENV, fetch.SECRET_KEY_ENV, fetch.SESSION_TOKEN_ENV)


def test_the_runtime_parses_the_operators_command_line() -> None:
    cmd = container(build_pod(server(), SETTINGS, (), None, None))["command"]
    cfg = server_args.parse(cmd[3:])
    assert (cfg.model, cfg.s3_endpoint, cfg.s3_region, cfg.s3_download_dir, cfg.served_model_name) \
        == ("s3://team-models/base/tiny", "https://s3.example.com:9000", "eu-west-1",
            MODEL_DOWNLOAD_DIR, "tiny")
    m = fetch.parse_uri(cfg.model, cfg.s3_endpoint, cfg.s3_region)
    assert (m.bucket, m.prefix, m.uri) == ("team-models", "base/tiny/",
                                           "s3://team-models/base/tiny/")


def test_no_secret_no_env_aws_default_no_endpoint_arg() -> None:
    s3 = {"bucket": "team-models", "prefix": "base/tiny"}
    c = container(build_pod(server(s3), SETTINGS, (), None, None))
    assert not [e for e in c["env"] if e["name"].startswith("FINETUNE_S3_")]
    assert "--s3-endpoint" not in c["command"]
    assert c["command"][c["command"].index("--s3-region") + 1] == "us-east-1"


def test_a_new_prefix_or_secret_restarts_the_server() -> None:
    base = spec_hash(server(), (), "img")
    assert spec_hash(server({**S3, "prefix": "base/other/"}), (), "img") != base
    assert spec_hash(server({**S3, "credentialsSecret": "rotated"}), (), "img") != base
    assert spec_hash(server(), (), "img") == base


@pytest.mark.parametrize("argv, said", [
    (["--model", "s3://bucket-only"], "not s3://BUCKET/PREFIX"),
    (["--model", "s3://b/a/../c"], "'.' or '..'"),
    (["--model", "s3://b/m", "--s3-endpoint", "s3.example.com"], "scheme://host"),
    (["--model", "/models/tiny", "--s3-endpoint", "http://x:9000"], "only apply to --model s3"),
    (["--model", "org/m", "--s3-download-dir", "/tmp/x"], "only apply to --model s3"),
])
def test_the_runtime_refuses_a_bad_s3_command_line(argv: list[str], said: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        server_args.parse(argv)
    assert e.value.code == 2
    assert said in capsys.readouterr().err


def _objs(*keys: str) -> list[fetch.Obj]:
    return [fetch.Obj(k, 3, "e") for k in keys]


def test_the_download_plan_maps_keys_below_the_prefix_and_skips_folder_markers() -> None:
    m = fetch.parse_uri("s3://b/base/tiny/")
    todo = fetch.plan(_objs("base/tiny/", "base/tiny/config.json", "base/tiny/sub/tok.json"), m)
    assert [rel for _, rel in todo] == ["config.json", "sub/tok.json"]


@pytest.mark.parametrize("key", ["base/tiny/../x", "base/tiny/a//b", "base/tiny/./c",
                                 "base/tiny//d"])
def test_a_key_that_would_leave_the_model_directory_is_refused(key: str) -> None:
    with pytest.raises(fetch.FetchError, match="rename or remove the object"):
        fetch.plan(_objs("base/tiny/config.json", key), fetch.parse_uri("s3://b/base/tiny"))


def test_an_empty_prefix_and_a_file_folder_clash_are_refused() -> None:
    m = fetch.parse_uri("s3://b/base/tiny")
    with pytest.raises(fetch.FetchError, match="no objects under this prefix"):
        fetch.plan(_objs("base/tiny/"), m)
    with pytest.raises(fetch.FetchError, match="both a file and a folder"):
        fetch.plan(_objs("base/tiny/a", "base/tiny/a/b"), m)


def test_credentials_come_from_the_model_roles_env_only_when_both_keys_are_set() -> None:
    assert fetch.credentials({}) is None
    assert fetch.credentials({fetch.ACCESS_KEY_ENV: "ak"}) is None
    assert fetch.credentials({fetch.ACCESS_KEY_ENV: "ak", fetch.SECRET_KEY_ENV: "sk"}) == (
        "ak", "sk", None)
    assert fetch.credentials({fetch.ACCESS_KEY_ENV: "ak", fetch.SECRET_KEY_ENV: "sk",
                              fetch.SESSION_TOKEN_ENV: "t"}) == ("ak", "sk", "t")


def test_messages_say_what_why_and_what_to_do() -> None:
    m = fetch.parse_uri("s3://b/base/tiny", "http://127.0.0.1:9000")
    denied = fetch.explain(m, "SignatureDoesNotMatch", 403)
    assert "s3://b/base/tiny/" in denied and "access denied" in denied
    assert "credentialsSecret" in denied and fetch.SECRET_KEY_ENV in denied
    assert "not found" in fetch.explain(m, "NoSuchBucket", 404)
    assert "changed between the listing" in fetch.explain(m, "PreconditionFailed", 412)
    assert "HTTP 500" in fetch.explain(m, "", 500)


class _Custom:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def get_namespaced_custom_object(self, *a: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        raise ApiException(status=404, reason="Not Found")

    def create_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                        body: dict[str, Any]) -> None:
        self.created.append(body)


class _Api:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job, self.custom = job, _Custom()

    def get_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.job


def test_kubectl_finetune_serve_of_an_s3_model_job_makes_an_s3_model_server() -> None:
    model = {"name": "tiny", "source": {"s3": S3}}
    api = _Api({"metadata": {"name": "bot", "namespace": "team-a"}, "spec": {"model": model}})
    args = build_parser().parse_args(["serve", "bot", "--gpus", "0"])
    out = io.StringIO()
    assert cmd_serve(api, args, "team-a", out) == 0  # type: ignore[arg-type]
    (body,) = api.custom.created
    spec = ModelServerSpec.model_validate(body["spec"])  # what the API server will accept
    assert spec.model.source.s3 is not None
    assert json.dumps(spec.model.to_wire()["source"], sort_keys=True) == json.dumps(
        ModelServerSpec.model_validate({"model": model}).model.to_wire()["source"],
        sort_keys=True)
    assert "modelserver/bot-server created" in out.getvalue()


def test_a_hub_token_reaches_the_runtime_as_a_file_never_as_a_value() -> None:
    """A gated or private hub model: the token Secret's key is mounted read-only as a file and
    HF_TOKEN_PATH names it (huggingface_hub reads it under both runtimes); no value in the pod."""
    s = ModelServer.from_body({
        "apiVersion": "finetune.dev/v1alpha1", "kind": "ModelServer",
        "metadata": {"name": "chat", "namespace": "team-a", "uid": "uid-chat"},
        "spec": {"model": {"name": "llama", "source": {"hub": {
            "repo": "org/gated", "tokenSecretRef": {"name": "hf", "key": "token"}}}},
            "runtime": "transformers", "resources": {"gpus": 0}}})
    pod = build_pod(s, SETTINGS, (), None, None)
    c = container(pod)
    assert c["command"][c["command"].index("--model") + 1] == "org/gated"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["hub-token"]["secret"] == {"secretName": "hf", "defaultMode": 0o440,
                                           "items": [{"key": "token", "path": "token"}]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "hub-token")
    assert mount["readOnly"] is True
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN_PATH"]["value"] == f"{mount['mountPath']}/token"
    assert "HF_TOKEN" not in env
    # without a token: nothing of it
    plain = build_pod(server(), SETTINGS, (), None, None)
    assert "hub-token" not in {v["name"] for v in plain["spec"]["volumes"]}
