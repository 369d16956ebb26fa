"""The New job form: fields -> manifest (and the uploaded dataset's ConfigMap), defaults by
model size, the format of an upload, and the API server's refusal at each field."""

from __future__ import annotations

import json

import pytest

from finetune_operator.console.forms import (
    UPLOAD_LIMIT,
    Form,
    build,
    defaults_for,
    detect_format,
    field_errors,
    form_of,
    model_size_b,
)

MESSAGES = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}]})


def form(**values: str) -> Form:
    base = {"name": "bot", "model_hub": "Qwen/Qwen2.5-0.5B-Instruct", "dataset_cm": "data:train",
            "method": "lora", "gpus": "1", "band": "finetune-normal"}
    return Form({**base, **values})


def test_a_hub_model_and_a_configmap_dataset() -> None:
    b = build(form(lora_rank="8", learning_rate="1e-3", max_steps="100"), "team-a")
    assert b.errors == {} and b.configmap is None
    assert b.manifest == {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": "bot", "namespace": "team-a"},
        "spec": {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct",
                           "source": {"hub": {"repo": "Qwen/Qwen2.5-0.5B-Instruct"}}},
                 "dataset": {"source": {"configMap": {"name": "data", "key": "train"}}},
                 "method": "lora", "lora": {"rank": 8},
                 "training": {"maxSteps": 100, "learningRate": 1e-3},
                 "resources": {"gpus": 1}, "priorityClassName": "finetune-normal"}}


def test_an_upload_becomes_a_configmap_with_the_detected_format() -> None:
    b = build(form(dataset_cm="", dataset_text=MESSAGES + "\n" + MESSAGES), "team-a")
    assert b.errors == {}
    assert b.configmap is not None and b.manifest is not None
    assert b.configmap["metadata"] == {"name": "bot-dataset", "namespace": "team-a", "labels": {
        "app.kubernetes.io/created-by": "finetune-console"}}
    assert b.configmap["data"]["train.jsonl"].count("\n") == 1
    assert b.manifest["spec"]["dataset"] == {
        "source": {"configMap": {"name": "bot-dataset", "key": "train.jsonl"}},
        "format": "messages"}


def test_too_big_or_unreadable_uploads_are_refused_at_the_field() -> None:
    big = build(form(dataset_cm="", dataset_text=(MESSAGES + "\n") * (UPLOAD_LIMIT // 50)), "n")
    assert "KiB" in big.errors["dataset_text"] and big.manifest is None
    bad = build(form(dataset_cm="", dataset_text="not json"), "n")
    assert "not JSON Lines" in bad.errors["dataset_text"]


def test_qlora_and_full() -> None:
    q = build(form(method="qlora", lora_rank="16"), "n").manifest
    assert q is not None and q["spec"]["quantization"] == {"bits": 4}
    f = build(form(method="full", lora_rank="16"), "n").manifest
    assert f is not None and "lora" not in f["spec"] and "quantization" not in f["spec"]


def test_extra_spec_yaml_is_merged_into_the_form_s_fields() -> None:
    b = build(form(extra="resources: {cpu: '1', nodeSelector: {a: b}}\ntraining: {seed: 1}",
                   max_steps="5"), "n")
    assert b.manifest is not None
    assert b.manifest["spec"]["resources"] == {"gpus": 1, "cpu": "1", "nodeSelector": {"a": "b"}}
    assert b.manifest["spec"]["training"] == {"maxSteps": 5, "seed": 1}
    assert "YAML mapping" in build(form(extra="- a list"), "n").errors["extra"]


@pytest.mark.parametrize(("values", "field"), [
    ({"name": ""}, "name"), ({"model_hub": ""}, "model_hub"),
    ({"model_hub": "", "model_pvc": "no-colon"}, "model_pvc"),
    ({"dataset_cm": ""}, "dataset_cm"), ({"dataset_cm": "nokey"}, "dataset_cm"),
    ({"gpus": "two"}, "gpus"), ({"learning_rate": "fast"}, "learning_rate"),
])
def test_what_cannot_be_built_names_its_field(values: dict[str, str], field: str) -> None:
    b = build(form(**values), "n")
    assert b.manifest is None and field in b.errors, b.errors


@pytest.mark.parametrize(("model", "size", "method", "gpus"), [
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.5, "lora", 1), ("meta-llama/Llama-3.1-8B", 8, "lora", 1),
    ("Qwen/Qwen2.5-32B", 32, "qlora", 2), ("meta-llama/Llama-3.3-70B-Instruct", 70, "qlora", 4),
    ("HuggingFaceTB/SmolLM2-135M", 0.135, "lora", 1), ("models:tiny", None, "lora", 1),
])
def test_defaults_follow_the_model_size(model: str, size: float | None, method: str,
                                        gpus: int) -> None:
    assert model_size_b(model) == size
    d = defaults_for(model)
    assert (d["method"], d["gpus"]) == (method, gpus)
    assert d["full_learning_rate"] < d["learning_rate"]


@pytest.mark.parametrize(("record", "fmt"), [
    ({"messages": []}, "messages"), ({"conversations": []}, "sharegpt"),
    ({"instruction": "a", "input": "", "output": "b"}, "alpaca"), ({"text": "x"}, "text"),
    ({"prompt": "x"}, None),
])
def test_the_format_is_detected_from_the_first_record(record: dict, fmt: str | None) -> None:
    found, preview, problem = detect_format("\n".join(json.dumps(record) for _ in range(5)))
    assert found == fmt and len(preview) == 3
    assert bool(problem) == (fmt is None)
    assert detect_format(json.dumps([record]))[0] == fmt  # a JSON array too


def test_causes_land_on_their_fields() -> None:
    status = {"kind": "Status", "code": 422, "message": "FineTuneJob is invalid", "details": {
        "causes": [
            {"field": "spec.resources.gpus", "message": "Invalid value: 65: should be <= 64"},
            {"field": "spec.training.learningRate", "message": "must be > 0"},
            {"field": "spec.lora", "message": "lora must not be set when method is full"},
            {"field": "metadata.name", "message": "a lowercase RFC 1123 subdomain"},
            {"field": "spec.checkpoint.storage.size", "message": "too big"}]}}
    errors = field_errors(status)
    assert set(errors) == {"gpus", "learning_rate", "lora_rank", "name", "extra"}
    assert errors["gpus"] == "spec.resources.gpus: Invalid value: 65: should be <= 64"


def test_a_policy_refusal_without_causes_goes_to_the_field_it_names() -> None:
    status = {"code": 403, "message": "finetunejobs.finetune.dev \"bot\" is forbidden: "
              "ValidatingAdmissionPolicy 'ft-jobs' denied request: spec.priorityClassName: "
              "finetune-critical is not allowed in namespace team-a"}
    assert list(field_errors(status)) == ["band"]
    quota = {"code": 403, "message": "exceeded quota: objects, requested: count/finetunejobs"}
    assert list(field_errors(quota)) == [""]  # the whole form


def test_a_clone_fills_the_form_and_builds_the_same_spec() -> None:
    original = build(form(lora_rank="8", max_steps="40", extra="training: {seed: 3}\n"
                          "resources: {cpu: '2'}\ndataset: {cutoffLen: 128}"), "n").manifest
    assert original is not None
    values = form_of(original)
    assert values["extra"] and values["lora_rank"] == "8"
    again = build(Form(values), "n").manifest
    assert again == original
