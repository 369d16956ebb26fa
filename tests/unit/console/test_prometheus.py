"""The curves' Prometheus source against a real Prometheus (Debian's ``prometheus`` and
``promtool``, make system-deps): the series are what the operator's own metrics module exposes
for a job (``metrics.set_job_progress``, rendered by ``prometheus_client``), stamped with times and
loaded into Prometheus's TSDB with ``promtool tsdb create-blocks-from openmetrics`` (a backfill:
no scrape interval to wait for); the console's ``query_range`` calls then read them back."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from prometheus_client import generate_latest

from finetune_api.status import Progress
from finetune_operator import metrics
from finetune_operator.console.app import Console, Settings
from finetune_operator.console.history import Curve, History, Point
from finetune_operator.console.identity import LocalIdentity
from finetune_operator.console.prometheus import (
    LOSS_SERIES,
    STEP_SERIES,
    TPS_SERIES,
    PrometheusSource,
    join,
    selector,
)
from finetune_operator.kube.client import CONSOLE_SURFACE, Kube

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus (prometheus and promtool) is not installed (make system-deps)")

NS, JOB = "team-a", "summarizer"
SCRAPE = 15
# (step, loss) per scrape: attempt 1 to step 40, preempted (the gauges keep their last values
# for two scrapes), attempt 2 resumes from the checkpoint at step 30
REPORTS = [(10, 2.0), (20, 1.6), (30, 1.3), (40, 1.1), (40, 1.1), (40, 1.1),
           (30, 1.3), (40, 1.05), (50, 0.9), (60, 0.8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openmetrics(start: int) -> str:
    """The operator's exposition of the job after each report, stamped ``SCRAPE`` s apart."""
    families: dict[str, list[str]] = {STEP_SERIES: [], LOSS_SERIES: [], TPS_SERIES: []}
    try:
        for i, (step, loss) in enumerate(REPORTS):
            metrics.set_job_progress(NS, JOB, Progress(step=step, total_steps=60, loss=loss,
                                                       tokens_per_second=100.0 + i))
            for line in generate_latest(metrics.REGISTRY).decode().splitlines():
                name = line.split("{", 1)[0]
                if name in families and f'job="{JOB}"' in line and f'namespace="{NS}"' in line:
                    families[name].append(f"{line} {start + i * SCRAPE}")
    finally:
        metrics.forget_job(NS, JOB)
    out = []
    for name, lines in families.items():
        assert len(lines) == len(REPORTS), (name, lines)  # the operator exports each series
        out += [f"# TYPE {name} gauge", *lines]
    return "\n".join([*out, "# EOF", ""])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A Prometheus holding the job's series from ``start`` on (a backfill, then started)."""
    tmp = tmp_path_factory.mktemp("prometheus")
    start = (int(time.time()) - 3600) // SCRAPE * SCRAPE
    (tmp / "series.om").write_text(_openmetrics(start))
    subprocess.run([str(PROMTOOL), "tsdb", "create-blocks-from", "openmetrics",
                    str(tmp / "series.om"), str(tmp / "data")], check=True, capture_output=True)
    (tmp / "prometheus.yml").write_text("scrape_configs: []\n")
    port = _free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([str(PROMETHEUS), f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            time.sleep(0.2)
        yield url, start
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _nobody() -> LocalIdentity:
    """An identity whose API client reaches nothing (the curve needs no API call)."""
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"
    return LocalIdentity(Kube(client.ApiClient(cfg), surface=CONSOLE_SURFACE), "s")


@needs_prometheus
def test_the_curve_comes_back_with_both_attempts(prometheus: tuple[str, int]) -> None:
    url, start = prometheus
    end = start + len(REPORTS) * SCRAPE
    pts = PrometheusSource(url, scrape_seconds=SCRAPE).points(NS, JOB, start, end)
    assert [(p.attempt, p.step, p.loss) for p in pts] == [
        (1, 10, 2.0), (1, 20, 1.6), (1, 30, 1.3), (1, 40, 1.1),  # the repeats are one point
        (2, 30, 1.3), (2, 40, 1.05), (2, 50, 0.9), (2, 60, 0.8)]
    assert [p.tps for p in pts] == [100.0, 101.0, 102.0, 103.0, 106.0, 107.0, 108.0, 109.0]
    assert pts[0].at == dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@needs_prometheus
def test_a_job_prometheus_never_saw_falls_back_to_the_record(
        prometheus: tuple[str, int]) -> None:
    url, start = prometheus
    src = PrometheusSource(url, scrape_seconds=SCRAPE)
    recorded = Curve([Point(5, 1, 3.0)])
    assert src.points(NS, "another-job", start, start + 600) == []
    assert src.curve(NS, "another-job", start, start + 600, recorded) is None
    # and a Prometheus that does not answer
    gone = PrometheusSource(f"http://127.0.0.1:{_free_port()}", timeout=2)
    assert gone.curve(NS, JOB, start, start + 600, recorded) is None


@needs_prometheus
def test_the_job_page_takes_prometheus_points_and_the_records_marks(
        prometheus: tuple[str, int], tmp_path: Path) -> None:
    url, start = prometheus
    history = History(tmp_path)
    job = {"metadata": {"name": JOB, "namespace": NS, "uid": "u-1",
                        "creationTimestamp": dt.datetime.fromtimestamp(start, dt.UTC).strftime(
                            "%Y-%m-%dT%H:%M:%SZ")},
           "status": {"phase": "Running", "attempt": 2, "progressAttempt": 2, "preemptions": 1,
                      "checkpoint": {"step": 30},
                      "progress": {"step": 60, "loss": 0.8, "learningRate": 1e-4}}}
    before = {**job, "status": {"phase": "Running", "attempt": 1, "progressAttempt": 1,
                                "preemptions": 0, "checkpoint": {"step": 30},
                                "progress": {"step": 40, "loss": 1.1, "learningRate": 2e-4}}}
    history.observe(before)  # the console saw the job twice: two points, two marks
    history.observe(job)
    end = dt.datetime.fromtimestamp(start + len(REPORTS) * SCRAPE, dt.UTC)
    console = Console(_nobody(), history,
                      Settings(namespaces=[NS], secret="s"), now=lambda: end,
                      prometheus=PrometheusSource(url, scrape_seconds=SCRAPE))
    curve, source = console.job_curve(job)
    assert source == "prometheus" and len(curve.points) == 8
    assert [(m.kind, m.step) for m in curve.marks] == [("checkpoint", 30), ("preemption", 60)]
    assert curve.points[-1].lr == 1e-4  # the learning rate the record had for step 60
    plain = Console(_nobody(), history,
                    Settings(namespaces=[NS], secret="s"), now=lambda: end)
    curve, source = plain.job_curve(job)
    assert source == "history" and len(curve.points) == 2


def test_join_counts_a_drop_of_the_step_as_a_new_attempt() -> None:
    step = [(0.0, 10.0), (15.0, 20.0), (30.0, 10.0), (45.0, 20.0), (60.0, 0.0)]
    loss = [(0.0, 2.0), (15.0, 1.5), (30.0, 2.0), (45.0, 1.4)]
    pts = join(step, loss, [])
    assert [(p.attempt, p.step) for p in pts] == [(1, 10), (1, 20), (2, 10), (2, 20)]
    assert all(p.tps is None and p.lr is None for p in pts)


def test_the_selector_escapes_label_values() -> None:
    assert selector(STEP_SERIES, "a", 'b"c\\') == 'finetune_job_step{namespace="a",job="b\\"c\\\\"}'
