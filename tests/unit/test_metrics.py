"""The operator's metrics: exposition text changes as the handler-facing functions are called."""

from __future__ import annotations

import http.client
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY as GLOBAL_REGISTRY
from prometheus_client import generate_latest

from finetune_api.status import CheckpointStatus, Progress
from finetune_operator import metrics as m
from finetune_operator.jobs.cycle import sample as _sample
from tests.builders.jobs import make_job

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def text() -> str:
    return generate_latest(m.REGISTRY).decode()


def value(name: str, **labels: str) -> float | None:
    return m.REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def ns() -> str:
    """A namespace of its own per test: the registry is module-global."""
    return f"ns-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _empty_snapshot() -> Iterator[None]:
    yield
    m.observe_queue({"jobs": [], "quotas": {}})


def test_dedicated_registry_not_global() -> None:
    assert m.REGISTRY is not GLOBAL_REGISTRY
    assert "finetune_queue_depth" not in generate_latest(GLOBAL_REGISTRY).decode()


def test_every_metric_has_help_and_prefix() -> None:
    families = list(m.REGISTRY.collect())
    assert len(families) >= 20
    for fam in families:
        assert fam.name.startswith("finetune_"), fam.name
        assert fam.documentation.strip(), f"{fam.name} has no HELP text"


def test_observe_queue_sets_depth_gpus_quota_info_and_drops_stale(ns: str) -> None:
    snap: m.QueueSnapshot = {
        "jobs": [
            {"namespace": ns, "name": "a", "phase": "Queued", "priority_class": "finetune-high",
             "gpus": 2, "queued_since": 1000.0},
            {"namespace": ns, "name": "b", "phase": "Queued", "priority_class": "finetune-high",
             "gpus": 1, "queued_since": 1100.0},
            {"namespace": ns, "name": "c", "phase": "Running", "priority_class": "finetune-low",
             "gpus": 4},
            {"namespace": ns, "name": "d", "phase": "Suspended", "priority_class": "finetune-low",
             "gpus": 8},
        ],
        "quotas": {ns: 6, "idle-team": 2},
    }
    m.observe_queue(snap)
    assert value("finetune_queue_depth", namespace=ns, priority_class="finetune-high") == 2
    assert value("finetune_queue_depth", namespace=ns, priority_class="finetune-low") == 0
    assert value("finetune_gpus_requested", namespace=ns) == 7  # queued + running, not suspended
    assert value("finetune_gpus_allocated", namespace=ns) == 4
    assert value("finetune_gpu_quota", namespace=ns) == 6
    assert value("finetune_gpu_quota", namespace="idle-team") == 2
    assert value("finetune_gpus_allocated", namespace="idle-team") == 0
    assert value("finetune_job_info", namespace=ns, job="c", phase="Running",
                 priority_class="finetune-low") == 1
    assert value("finetune_job_queued_since_timestamp_seconds", namespace=ns, job="b") == 1100
    assert value("finetune_job_queued_since_timestamp_seconds", namespace=ns, job="c") is None
    # zero-valued counters exist from the first snapshot on
    assert value("finetune_completions_total", namespace=ns) == 0
    assert value("finetune_failures_total", namespace=ns, reason="oom-killed") == 0

    m.observe_queue({"jobs": [{"namespace": ns, "name": "a", "phase": "Running",
                               "priority_class": "finetune-high", "gpus": 2}],
                     "quotas": {ns: 6}})
    out = text()
    assert f'finetune_job_info{{job="b",namespace="{ns}"' not in out
    assert f'job="a",namespace="{ns}",phase="Queued"' not in out
    assert value("finetune_queue_depth", namespace=ns, priority_class="finetune-high") == 0
    assert value("finetune_gpus_allocated", namespace=ns) == 2
    assert value("finetune_gpu_quota", namespace="idle-team") is None


def test_observe_queue_rejects_unknown_phase(ns: str) -> None:
    with pytest.raises(ValueError, match="phase 'Waiting'"):
        m.observe_queue({"jobs": [{"namespace": ns, "name": "x", "phase": "Waiting"}]})


def test_counters_and_admission_histogram(ns: str) -> None:
    m.observe_admission(ns, "finetune-normal", 45.0)
    m.observe_admission(ns, "finetune-normal", 4000.0)
    assert value("finetune_admissions_total", namespace=ns, priority_class="finetune-normal") == 2
    assert value("finetune_admission_wait_seconds_bucket", namespace=ns,
                 priority_class="finetune-normal", le="60.0") == 1
    assert value("finetune_admission_wait_seconds_bucket", namespace=ns,
                 priority_class="finetune-normal", le="86400.0") == 2
    assert value("finetune_admission_wait_seconds_sum", namespace=ns,
                 priority_class="finetune-normal") == 4045

    m.count_preemption(ns, "finetune-low", "scheduler")
    m.count_suspension(ns)
    m.count_failure(ns, "oom-killed")
    m.count_completion(ns)
    m.count_lost_work(ns, steps=30, gpu_seconds=240.0)
    out = text()
    assert (f'finetune_preemptions_total{{namespace="{ns}",priority_class="finetune-low",'
            'reason="scheduler"} 1.0') in out
    assert f'finetune_suspensions_total{{namespace="{ns}"}} 1.0' in out
    assert f'finetune_failures_total{{namespace="{ns}",reason="oom-killed"}} 1.0' in out
    assert f'finetune_completions_total{{namespace="{ns}"}} 1.0' in out
    assert f'finetune_lost_steps_total{{namespace="{ns}"}} 30.0' in out
    assert f'finetune_lost_work_gpu_seconds_total{{namespace="{ns}"}} 240.0' in out


@pytest.mark.parametrize(
    ("call", "reason"),
    [(lambda ns, r: m.count_preemption(ns, "finetune-low", r), "oom"),
     (m.count_failure, "preempted")],
)
def test_unknown_reason_rejected(ns: str, call: Callable[[str, str], None], reason: str) -> None:
    with pytest.raises(ValueError, match=r"unknown .* reason"):
        call(ns, reason)
    assert ns not in text()


def test_lost_work_rejects_negative(ns: str) -> None:
    with pytest.raises(ValueError, match=">= 0"):
        m.count_lost_work(ns, steps=-1, gpu_seconds=0)


PROGRESS = Progress(step=120, total_steps=300, epoch=1.2, loss=0.83, learning_rate=1.6e-4,
                    tokens_per_second=5400.0, eta_seconds=210.0,
                    updated_at="2026-11-24T12:00:00Z")
CHECKPOINT = CheckpointStatus(step=100, path="checkpoints/checkpoint-100",
                              saved_at="2026-11-24T11:59:00Z", save_seconds=1.7)


def test_set_job_progress_and_forget(ns: str) -> None:
    m.set_job_progress(ns, "bot", PROGRESS, CHECKPOINT, checkpoint_interval_steps=50)
    assert value("finetune_job_step", namespace=ns, job="bot") == 120
    assert value("finetune_job_total_steps", namespace=ns, job="bot") == 300
    assert value("finetune_job_loss", namespace=ns, job="bot") == pytest.approx(0.83)
    assert value("finetune_job_tokens_per_second", namespace=ns, job="bot") == 5400
    assert value("finetune_job_eta_seconds", namespace=ns, job="bot") == 210
    assert value("finetune_job_checkpoint_interval_steps", namespace=ns, job="bot") == 50
    # 2026-11-24T11:59:00Z
    assert value("finetune_job_last_checkpoint_timestamp_seconds", namespace=ns,
                 job="bot") == 1795521540.0
    assert value("finetune_checkpoint_save_seconds_count", namespace=ns) == 1

    # the same checkpoint seen again (every cycle re-reads the status): no second save
    m.set_job_progress(ns, "bot", PROGRESS.model_copy(update={"step": 130, "loss": None}),
                       CHECKPOINT)
    assert value("finetune_job_step", namespace=ns, job="bot") == 130
    assert value("finetune_job_loss", namespace=ns, job="bot") == pytest.approx(0.83)
    assert value("finetune_checkpoint_save_seconds_count", namespace=ns) == 1
    ck2 = CheckpointStatus(step=150, saved_at="2026-11-24T12:01:00Z", save_seconds=2.0)
    m.set_job_progress(ns, "bot", PROGRESS, ck2)
    assert value("finetune_checkpoint_save_seconds_count", namespace=ns) == 2
    assert value("finetune_checkpoint_save_seconds_sum", namespace=ns) == pytest.approx(3.7)

    m.forget_job(ns, "bot")
    assert f'job="bot",namespace="{ns}"' not in text()
    m.forget_job(ns, "bot")  # idempotent


def test_snapshot_without_the_job_forgets_its_progress(ns: str) -> None:
    job = {"namespace": ns, "name": "bot", "phase": "Running", "priority_class": "p", "gpus": 1}
    m.observe_queue({"jobs": [job]})
    m.set_job_progress(ns, "bot", PROGRESS)
    m.set_job_progress(ns, "other", PROGRESS)
    m.observe_queue({"jobs": [job]})
    assert value("finetune_job_step", namespace=ns, job="bot") == 120
    assert value("finetune_job_step", namespace=ns, job="other") is None  # deleted job
    m.observe_queue({"jobs": []})
    assert f'namespace="{ns}"' not in "\n".join(
        ln for ln in text().splitlines() if ln.startswith("finetune_job_"))


def test_eval_metric_of_every_job_in_the_snapshot_known_names_only(ns: str) -> None:
    """finetune_job_eval_metric comes from each job's sample (status.output.metrics), not from
    sweeps: a job outside any sweep has it, and it leaves with the job."""
    evaluated = {"namespace": ns, "name": "solo", "phase": "Succeeded",
                 "eval": {"testLoss": 1.25, "testRougeL": 41.5, "tenantChosen": 9.0}}
    m.observe_queue({"jobs": [evaluated, {"namespace": ns, "name": "plain", "phase": "Running"}]})
    series = "finetune_job_eval_metric"
    assert value(series, namespace=ns, job="solo", metric="testLoss") == 1.25
    assert value(series, namespace=ns, job="solo", metric="testRougeL") == 41.5
    assert value(series, namespace=ns, job="solo", metric="tenantChosen") is None
    assert not [ln for ln in text().splitlines()
                if ln.startswith(series) and 'job="plain"' in ln]  # nothing to report yet
    m.observe_sweeps([])  # no sweep at all: the job's series stay
    assert value(series, namespace=ns, job="solo", metric="testLoss") == 1.25
    m.observe_queue({"jobs": []})
    assert value(series, namespace=ns, job="solo", metric="testLoss") is None


def test_a_finished_jobs_output_metrics_reach_the_eval_gauge(ns: str) -> None:
    """The operator's per-cycle sample of a job carries its status.output.metrics."""
    job = make_job("scored", ns, status={"phase": "Succeeded", "output": {
        "adapterPath": "output/adapter", "metrics": {"testLoss": 0.75, "trainLoss": 0.5}}})
    sample = _sample(job, job.status)
    assert sample["eval"] == {"testLoss": 0.75, "trainLoss": 0.5}
    m.observe_queue({"jobs": [sample]})
    assert value("finetune_job_eval_metric", namespace=ns, job="scored",
                 metric="trainLoss") == 0.5
    assert _sample(make_job("new", ns), make_job("new", ns).status)["eval"] == {}


def test_sweep_series_are_removed_with_the_last_sweep(ns: str) -> None:
    sweep = SimpleNamespace(metadata=SimpleNamespace(namespace=ns, name="lr"))
    plan = SimpleNamespace(status={"trials": [{"phase": "Failed"}, {"phase": "Succeeded"}]},
                           best=None)
    m.observe_sweeps([(sweep, plan)])
    assert value("finetune_sweep_trials", namespace=ns, sweep="lr", phase="Failed") == 1.0
    m.observe_sweeps([])
    assert value("finetune_sweep_trials", namespace=ns, sweep="lr", phase="Failed") is None


def test_set_job_progress_without_checkpoint_uses_start(ns: str) -> None:
    m.set_job_progress(ns, "new", Progress(step=0), started_at=1234.0)
    assert value("finetune_job_last_checkpoint_timestamp_seconds", namespace=ns,
                 job="new") == 1234.0


# ---- /metrics over HTTPS for allowed tokens (the real API server: tests/cluster) ----------

REVIEWS = {"reader": True, "tenant": False}  # token -> allowed; other tokens: not authenticated


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., tuple[int, str]]]:
    """scrape(token, path="/metrics") -> (status, body) from a real TLS server on loopback."""
    import ssl

    from finetune_operator.http import metrics as metrics_server
    from finetune_operator.http import tls

    cert = tls.generate(["127.0.0.1"], tmp_path_factory.mktemp("metrics-tls"))
    server = metrics_server.serve(
        0, metrics_server.tls_context(cert.cert_file, cert.key_file),
        metrics_server.ScrapeAuth(REVIEWS.get), host="127.0.0.1")
    port = server.server_address[1]
    ctx = ssl.create_default_context(cadata=cert.ca_pem)

    def get(token: str | None, path: str = "/metrics") -> tuple[int, str]:
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers={
            "Authorization": f"Bearer {token}"} if token is not None else {})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    get.port = port  # type: ignore[attr-defined]
    yield get
    server.shutdown()
    server.server_close()


def test_serve_exposes_registry_to_allowed_tokens_only(
        ns: str, scrape: Callable[..., tuple[int, str]]) -> None:
    m.count_completion(ns)
    code, body = scrape("reader")
    assert code == 200
    assert f'finetune_completions_total{{namespace="{ns}"}} 1.0' in body
    assert "python_gc_objects_collected_total" not in body  # not the global registry
    for token, want in ((None, 401), ("", 401), ("forged", 401), ("x" * 9000, 401),
                        ("tenant", 403)):
        code, body = scrape(token)
        assert code == want, (token, code, body)
        assert "finetune_" not in body
    assert scrape("reader", "/healthz")[0] == 404


def test_plain_http_gets_no_metrics(scrape: Callable[..., tuple[int, str]]) -> None:
    port = scrape.port  # type: ignore[attr-defined]
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


def test_a_silent_client_does_not_stall_the_port(scrape: Callable[..., tuple[int, str]]) -> None:
    """The TLS handshake runs in the connection's own thread: a client that connects and never
    speaks holds one slot, not the accepting thread."""
    import socket

    with socket.create_connection(("127.0.0.1", scrape.port)):  # type: ignore[attr-defined]
        assert scrape("reader")[0] == 200


def test_scrape_auth_caches_answers_briefly() -> None:
    from finetune_operator.http.metrics import ScrapeAuth

    now = [0.0]
    answers: dict[str, bool | None] = {"reader": True, "tenant": False}
    auth = ScrapeAuth(answers.get, allowed_ttl=60, refused_ttl=10, clock=lambda: now[0])
    assert [auth("reader"), auth("tenant"), auth("forged")] == [200, 403, 401]
    assert [auth("reader"), auth("tenant"), auth("forged")] == [200, 403, 401]
    assert auth.reviews == 3  # the second round came from the cache
    answers.update(reader=False, tenant=True)  # RBAC changed
    now[0] = 11  # refusals expired, the allowed answer not yet
    assert [auth("reader"), auth("tenant")] == [200, 200]
    assert auth.reviews == 4
    now[0] = 61
    assert auth("reader") == 403
    assert auth("") == 401 and auth.reviews == 5  # no token: no review


def test_scrape_auth_api_failure_is_503_and_not_cached() -> None:
    from finetune_operator.http.metrics import ScrapeAuth

    up = [False]

    def review(token: str) -> bool | None:
        if not up[0]:
            raise ConnectionError("API server unreachable")
        return True

    auth = ScrapeAuth(review)
    assert auth("reader") == 503
    up[0] = True
    assert auth("reader") == 200


def test_scrape_auth_cache_is_bounded() -> None:
    from finetune_operator.http.metrics import ScrapeAuth

    auth = ScrapeAuth(lambda t: None, max_entries=3)
    for i in range(10):
        assert auth(f"garbage-{i}") == 401
    assert len(auth.cache) == 3


def test_new_tokens_spend_a_review_budget() -> None:
    """Garbage tokens cost nothing to make: past the budget they get 503 without a review; a
    cached answer needs none."""
    from finetune_operator.http.metrics import ScrapeAuth

    now = [0.0]
    auth = ScrapeAuth({"reader": True}.get, clock=lambda: now[0])
    assert auth("reader") == 200
    codes = [auth(f"garbage-{i}") for i in range(100)]
    assert codes.count(401) == 9 and codes.count(503) == 91  # 10 review pairs at once
    assert auth.reviews == 10
    assert auth("reader") == 200  # cached: no budget needed
    now[0] = 1.0  # one review pair a second
    assert auth("garbage-x") == 401 and auth("garbage-y") == 503 and auth.reviews == 11


def test_docs_list_every_metric() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"`(finetune_[a-z_]+)`", doc))
    names = set()
    for fam in m.REGISTRY.collect():
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert names <= listed, f"missing from docs/metrics.md: {sorted(names - listed)}"
    assert listed <= names | {n + "_bucket" for n in names}, sorted(listed - names)


def test_metrics_certificate_and_key_go_together() -> None:
    from finetune_operator.settings import OperatorSettings, SettingsError

    with pytest.raises(SettingsError, match="FINETUNE_METRICS_TLS_CERT_FILE and "
                       "FINETUNE_METRICS_TLS_KEY_FILE go together"):
        OperatorSettings.from_env({"FINETUNE_METRICS_TLS_CERT_FILE": "/etc/tls/tls.crt"})
