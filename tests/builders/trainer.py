"""Trainer test inputs, shared by tests/unit/trainer (pure) and tests/trainer (real runs): a
valid trainer config (camelCase, as the operator writes it), the trainer's environment, and the
operator's real report endpoint for the progress channel.

    from tests.builders.trainer import config_dict, write_config

    config = write_config(tmp_path / "config.yaml", config_dict(model, tmp_path / "work"))
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from finetune_api.trainer_config import ReportConfig
from finetune_operator.http import tls
from finetune_operator.http.identity import PodIdentity
from finetune_operator.http.reports import ReportServer
from finetune_operator.reports.model import ProgressReport

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dict(model: Path, work: Path, dataset: str = "messages.jsonl",
                **over: Any) -> dict[str, Any]:
    """A valid trainer config (camelCase, as the operator writes it) with overrides merged."""
    fmt = dataset.split(".")[0]
    base: dict[str, Any] = {
        "job": {"namespace": "team-a", "name": "bot", "uid": "uid-1234"},
        "spec": {
            "model": {"name": "tiny", "source": {"pvc": {"claimName": "models", "path": "tiny"}}},
            "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}},
                        "format": fmt, "cutoffLen": 128, "validationSplit": 0.1},
            "method": "lora",
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.1},
            "training": {"maxSteps": 14, "learningRate": 0.02, "batchSize": 4,
                         "lrScheduler": "linear", "warmupRatio": 0.1, "precision": "bf16",
                         "seed": 7},
            "checkpoint": {"intervalSteps": 5, "keep": 2},
            "resources": {"gpus": 0},
        },
        "paths": {"model": str(model), "dataset": str(DATA / dataset), "workDir": str(work)},
        "progress": {"file": str(work.parent / f"{work.name}.progress.json"),
                     "minIntervalSeconds": 0},
        "terminationLog": str(work.parent / f"{work.name}.termination.json"),
    }
    return deep_merge(base, over)


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def trainer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


TOKEN = "projected-token-1"
POD = PodIdentity("team-a", "bot-a1-0", "uid-1")


@dataclass
class Endpoint:
    server: ReportServer
    config: ReportConfig
    token_file: Path
    received: list[tuple[PodIdentity, ProgressReport]] = field(default_factory=list)
    tokens_seen: list[str] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def report_endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    """The operator's real report server with a self-made CA; authentication accepts any
    token that starts with 'projected-token' (the cluster test covers TokenReview)."""
    cert = tls.generate(["127.0.0.1"], tmp_path / "tls")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    holder: list[Endpoint] = []

    def authenticate(token: str) -> PodIdentity | None:
        holder[0].tokens_seen.append(token)
        return POD if token.startswith("projected-token") else None

    def on_report(who: PodIdentity, report: ProgressReport) -> None:
        holder[0].received.append((who, report))
        holder[0].arrived.set()

    server = ReportServer("127.0.0.1", 0, cert.cert_file, cert.key_file, authenticate,
                          on_report, rate=1000, burst=1000)
    config = ReportConfig(url=f"https://127.0.0.1:{server.port}/v1/reports",
                          ca_pem=cert.ca_pem, token_file=str(token_file))
    holder.append(Endpoint(server, config, token_file))
    with server:
        yield holder[0]
