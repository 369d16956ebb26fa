"""The serving image (Dockerfile.server, built by `make images` with the others; a GPU runtime of
about 10 GB), run under podman as a pod runs it: uid 1000, a read-only root
file system with /tmp as the only writable place, no capabilities, no network but the loopback.
It carries the server and vLLM only; on this CPU it serves the tiny model and an adapter with
``--runtime transformers`` (vLLM needs the GPU it was built for: the gpu test) to the real
``openai`` client."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ..kube import wait_for
from ..operator_proc import free_port
from .conftest import SIZES, TAG, Image, _image, podman

pytestmark = pytest.mark.image
SERVER_IMAGE = f"localhost/finetune-operator/server:{TAG}"
NOT_CARRIED = {"finetune_api": "finetune-api", "finetune_operator": "finetune-operator",
               "finetune_trainer": "finetune-trainer", "finetune_dev": "finetune-dev",
               "kopf": "kopf", "kubernetes": "kubernetes"}
CARRIED = {"finetune_server": "finetune-server", "vllm": "vllm", "peft": "peft",
           "torch": "torch", "transformers": "transformers", "minio": "minio"}


@pytest.fixture(scope="module")
def server_image() -> Image:
    return _image(SERVER_IMAGE)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model and an adapter trained by the real trainer (on the host), world-readable
    for uid 1000 in the container."""
    from finetune_dev.tiny import build_tiny_model

    from ..trainer.serving import train_adapter

    root = tmp_path_factory.mktemp("served")
    model = build_tiny_model(root / "tiny", hidden_size=256)
    adapter = train_adapter(model, root / "a", 7, 0.02)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return model, adapter


def test_carries_the_server_and_vllm_only(server_image: Image) -> None:
    server_image.assert_carries_only(CARRIED, NOT_CARRIED,
                                     "Dockerfile.server installs './server[vllm]' only")
    size = server_image.inspect()["Size"]
    SIZES.append(f"{SERVER_IMAGE}: {size / 1e9:.2f} GB")


def test_help_and_the_vllm_command_line(server_image: Image) -> None:
    out = server_image.run(server_image.ref, "--help").stdout
    assert "usage: python -m finetune_server" in out and "--max-loras" in out
    # auto picks vLLM in this image; the translation it would exec
    probe = ("import json, sys, finetune_server.args as a; c = a.parse(['--model', '/m', "
             "'--adapter', 'x=/a/x', '--max-loras', '2', '--max-model-len', '512']); "
             "print(json.dumps([a.resolve_runtime(c), *a.vllm_command(c, sys.executable)]))")
    runtime, argv, env = json.loads(server_image.run(
        "--entrypoint", "python", server_image.ref, "-c", probe).stdout.strip().splitlines()[-1])
    assert runtime == "vllm" and env == {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert {"--enable-lora", "--lora-modules", "x=/a/x"} <= set(argv)


def test_serves_an_adapter_read_only_as_uid_1000(server_image: Image,
                                                 served: tuple[Path, Path]) -> None:
    from openai import OpenAI

    model, adapter = served
    port = free_port()
    name = f"serve-{port}"
    # host network for the test's client; the model read-only; the pod's security settings
    proc = subprocess.Popen(
        [str(Path(__file__).resolve().parents[2] / "scripts" / "images" / "podman.sh"), "run",
         "--rm", "--name", name, "--user", "1000:1000", "--read-only",
         "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=256m", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--network", "host",
         "-v", f"{model}:/models/base:ro", "-v", f"{adapter}:/models/a:ro",
         server_image.ref, "--runtime", "transformers", "--model", "/models/base",
         "--served-model-name", "tiny", "--adapter", "a=/models/a", "--host", "127.0.0.1",
         "--port", str(port), "--max-model-len", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                        max_retries=0, timeout=60)

        def models() -> set[str] | None:
            if proc.poll() is not None:
                raise AssertionError(f"the container exited {proc.returncode}:\n"
                                     f"{proc.stdout.read() if proc.stdout else ''}")
            try:
                return {m.id for m in client.models.list().data}
            except Exception:
                return None

        assert wait_for("the server in the image to answer", models, 300) == {"tiny", "a"}
        r = client.chat.completions.create(model="a", max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "hello"}])
        assert r.usage is not None and 1 <= r.usage.completion_tokens <= 8 and r.model == "a"
        inspect = json.loads(podman("inspect", name).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert inspect["Config"]["User"] == "1000:1000"
    finally:
        podman("stop", "--time", "30", name, check=False)
        proc.wait(60)
    assert proc.returncode == 0, "the server did not exit 0 on SIGTERM"


@pytest.mark.gpu
def test_vllm_serves_an_adapter_on_the_gpu(server_image: Image,
                                           served: tuple[Path, Path]) -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU here (nvidia-smi not found); scripts/gpu-check.sh has the "
                    "serving row for a GPU machine")
    model, adapter = served
    out = server_image.run(
        "--device", "nvidia.com/gpu=all", "-v", f"{model}:/models/base:ro",
        "-v", f"{adapter}:/models/a:ro", "--entrypoint", "python", server_image.ref, "-c",
        "from vllm import LLM, SamplingParams; from vllm.lora.request import LoRARequest; "
        "llm = LLM('/models/base', enable_lora=True, max_lora_rank=8, max_model_len=512); "
        "o = llm.generate(['hello'], SamplingParams(max_tokens=8, temperature=0), "
        "lora_request=LoRARequest('a', 1, '/models/a')); print(len(o[0].outputs[0].token_ids))",
        timeout=900).stdout
    assert int(out.strip().splitlines()[-1]) >= 1
