"""Progress channel (file + pod annotation over HTTPS) and the termination message."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.api.trainer_config import PROGRESS_ANNOTATION
from finetune_trainer.progress import (
    TERMINATION_LIMIT,
    FileSink,
    PodAnnotationSink,
    ProgressReporter,
    build_reporter,
    eta_seconds,
    pod_target_from_env,
    progress_payload,
    termination_message,
    write_termination_log,
)

pytestmark = pytest.mark.unit


class ListSink:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, payload: dict[str, Any]) -> None:
        self.sent.append(payload)

    def close(self, timeout: float) -> None:
        return None


def test_reports_are_rate_limited_except_forced() -> None:
    sink = ListSink()
    r = ProgressReporter([sink], min_interval=5.0)
    assert r.report({"step": 1}, now=100.0)
    assert not r.report({"step": 2}, now=103.0)
    assert r.report({"step": 3}, now=103.5, force=True)  # after a checkpoint
    assert not r.report({"step": 4}, now=108.0)
    assert r.report({"step": 5}, now=108.6)
    assert [p["step"] for p in sink.sent] == [1, 3, 5]
    assert r.last == {"step": 5}


def test_a_failing_sink_never_stops_training() -> None:
    class Boom(ListSink):
        def send(self, payload: dict[str, Any]) -> None:
            raise RuntimeError("down")

    ok = ListSink()
    r = ProgressReporter([Boom(), ok], min_interval=0)
    assert r.report({"step": 1}, now=1.0)
    assert ok.sent == [{"step": 1}]


def test_payload_matches_the_contract() -> None:
    p = progress_payload(step=120, total_steps=300, epoch=1.2, loss=0.8312345678,
                         learning_rate=1.6e-4, tokens_per_second=5400.04, eta_seconds=210.0,
                         now=1795521600.0, state="training", resumed_from_step=100,
                         checkpoint={"step": 100, "path": "checkpoints/checkpoint-100"})
    assert p == {"step": 120, "totalSteps": 300, "epoch": 1.2, "loss": 0.831235,
                 "learningRate": 1.6e-4, "tokensPerSecond": 5400.0, "etaSeconds": 210.0,
                 "updatedAt": "2026-11-24T12:00:00Z", "resumedFromStep": 100,
                 "state": "training",
                 "checkpoint": {"step": 100, "path": "checkpoints/checkpoint-100"}}
    # unknowns are left out rather than sent as null
    q = progress_payload(step=0, total_steps=10, epoch=None, loss=None, learning_rate=None,
                         tokens_per_second=None, eta_seconds=None, now=0.0, state="loading",
                         resumed_from_step=None, checkpoint=None)
    assert set(q) == {"step", "totalSteps", "updatedAt", "state"}


def test_eta_uses_the_pace_of_this_run() -> None:
    assert eta_seconds(step=60, total=100, start_step=50, elapsed=20.0) == 80.0
    assert eta_seconds(step=50, total=100, start_step=50, elapsed=5.0) is None


def test_file_sink_writes_atomically(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "progress.json"
    FileSink(f).send({"step": 3})
    assert json.loads(f.read_text()) == {"step": 3}
    assert [p.name for p in f.parent.iterdir()] == ["progress.json"]


def test_termination_message_fits_the_kubelet_limit() -> None:
    text = termination_message(reason="Error", message="x" * 10000, final_step=0,
                               adapter_path="", merged_path="", metrics={}, checkpoint=None)
    assert len(text.encode()) <= TERMINATION_LIMIT
    body = json.loads(text)
    assert body["reason"] == "Error" and body["message"].endswith("[truncated]")
    ok = json.loads(termination_message(
        reason="Completed", message="done", final_step=300, adapter_path="output/adapter",
        merged_path="", metrics={"evalLoss": 0.91}, checkpoint={"step": 300}))
    assert ok == {"reason": "Completed", "message": "done", "finalStep": 300,
                  "adapterPath": "output/adapter", "mergedPath": "",
                  "metrics": {"evalLoss": 0.91}, "checkpoint": {"step": 300}}


def test_termination_log_write_failure_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    write_termination_log(str(tmp_path / "f" / "x" / "log"), "{}")  # parent is a file


# --- the pod annotation channel against a local HTTPS endpoint --------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "ca.crt", tmp / "key.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, Any]], Path]]:
    """A local HTTPS endpoint recording PATCH requests (path, headers, body)."""
    crt, key = _self_signed(tmp_path)
    seen: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "headers": dict(self.headers),
                         "body": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            return None

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("secret-token\n")
    (sa / "ca.crt").write_bytes(crt.read_bytes())
    yield str(srv.server_address[1]), seen, sa
    srv.shutdown()


def test_pod_annotation_is_merge_patched_with_sa_credentials(
        api_server: tuple[str, list[dict[str, Any]], Path]) -> None:
    port, seen, sa = api_server
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
           "POD_NAME": "bot-1-a1-0", "POD_NAMESPACE": "team-a", "FINETUNE_SA_DIR": str(sa)}
    r = build_reporter(None, True, 0.0, env=env)
    r.report({"step": 7, "state": "training"}, now=1.0)
    r.close(timeout=10)
    assert len(seen) == 1
    req = seen[0]
    assert req["path"] == "/api/v1/namespaces/team-a/pods/bot-1-a1-0"
    assert req["headers"]["Content-Type"] == "application/merge-patch+json"
    assert req["headers"]["Authorization"] == "Bearer secret-token"
    annotation = req["body"]["metadata"]["annotations"][PROGRESS_ANNOTATION]
    assert json.loads(annotation) == {"step": 7, "state": "training"}


def test_unreachable_api_logs_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          api_server: tuple[str, list[dict[str, Any]], Path]
                                          ) -> None:
    _port, _seen, sa = api_server
    target = pod_target_from_env({"KUBERNETES_SERVICE_HOST": "127.0.0.1",
                                  "KUBERNETES_SERVICE_PORT": "1", "POD_NAME": "p",
                                  "POD_NAMESPACE": "n", "FINETUNE_SA_DIR": str(sa)})
    assert target is not None
    sink = PodAnnotationSink(target, timeout=2)
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.progress"):
        for i in range(3):
            sink.send({"step": i})
            time.sleep(0.3)
        sink.close(timeout=10)
    warnings = [r for r in caplog.records if "cannot patch pod" in r.getMessage()]
    assert len(warnings) == 1


def test_no_cluster_env_means_no_annotation_channel(tmp_path: Path) -> None:
    assert pod_target_from_env({"POD_NAME": "p", "POD_NAMESPACE": "n"}) is None
    assert pod_target_from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "POD_NAME": "p",
                                "POD_NAMESPACE": "n", "FINETUNE_SA_DIR": str(tmp_path)}) is None
