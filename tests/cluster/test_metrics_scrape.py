"""Scrape the real operator's /metrics during a scenario and check that every series moves as
the scenario dictates: queue depth, the admission-wait histogram, the preemption counter, the
per-job progress gauges, the checkpoint timestamp and save histogram, and lost work.

Scenario (one node with 2 GPUs, so the node is the bottleneck; quota 4):
  low (finetune-low) runs -> reports progress with a checkpoint -> crit (finetune-critical)
  preempts it -> low waits (queue depth 1) while crit runs >= 3 s -> crit completes -> low is
  admitted again (its wait lands in a bucket above 2 s) -> its new attempt reports
  resumedFromStep 30 after having reached step 40 (10 steps lost) -> low completes (its per-job
  series disappear).

And who may scrape: /metrics is HTTPS, for bearer tokens the real API server authenticates
(TokenReview) and allows `get` on the non-resource URL /metrics (SubjectAccessReview, granted by
the chart's metrics-reader ClusterRole).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable

import pytest

from ..kube import Cluster, wait_for
from ..operator_proc import (
    OperatorProcess,
    complete,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    report_progress,
    scraper_token,
    wait_phase,
)

pytestmark = pytest.mark.cluster

MakeNamespace = Callable[..., str]  # conftest.make_namespace(gpu_quota=None)
GpuNodes = Callable[[int, int], dict[str, str]]  # conftest.gpu_nodes(count, gpus)

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One /metrics exposition, parsed (text format: name{labels} value)."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m and not line.startswith("#"):
                labels = dict(_LABEL.findall(m["labels"] or ""))
                self.samples.append((m["name"], labels, float(m["value"])))

    def get(self, name: str, **labels: str) -> float | None:
        """The one sample with these labels (and possibly more); None when absent."""
        found = [v for n, lab, v in self.samples
                 if n == name and all(lab.get(k) == v2 for k, v2 in labels.items())]
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == v2 for k, v2 in labels.items()))


def scrape(op: OperatorProcess) -> Scrape:
    return Scrape(op.metrics())


def wait_metrics(op: OperatorProcess, what: str, check: Callable[[Scrape], bool],
                 timeout: float = 20) -> Scrape:
    """Scrape until check(scrape) is true; the failure shows the last relevant samples."""
    last: list[Scrape] = []

    def once() -> Scrape | None:
        s = scrape(op)
        last[:] = [s]
        return s if check(s) else None

    try:
        return wait_for(what, once, timeout, interval=0.3)
    except AssertionError as e:
        rel = [f"{n}{lab} {v}" for n, lab, v in (last[0].samples if last else [])
               if n.startswith("finetune_")]
        raise AssertionError(f"{e}\n" + "\n".join(rel[-80:])) from None


def unix(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def running_pod(cluster: Cluster, ns: str, name: str, attempt: int) -> str:
    def find() -> str | None:
        for p in job_pods(cluster, ns, name):
            if p["metadata"]["labels"].get("finetune.dev/attempt") == str(attempt) and \
                    p["status"].get("phase") == "Running":
                return str(p["metadata"]["name"])
        return None
    return wait_for(f"{ns}/{name} attempt {attempt} pod running", find, 30)


def test_metrics_follow_a_preemption_scenario(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes) -> None:
    sel = gpu_nodes(1, 2)
    ns = make_namespace(gpu_quota=4)
    low, crit = {"namespace": ns, "priority_class": "finetune-low"}, \
        {"namespace": ns, "priority_class": "finetune-critical"}

    # 1. low is admitted at once: one admission, observed with a wait in the lowest bucket
    cluster.apply(ftj("low", 2, "finetune-low", sel, checkpoint={"intervalSteps": 30}), ns)
    wait_phase(cluster, ns, "low", "Running")
    # (snapshot gauges describe the jobs as a pass found them: one pass behind the status)
    s = wait_metrics(operator, "low's admission", lambda s: s.get(
        "finetune_admission_wait_seconds_count", **low) == 1 and s.get(
        "finetune_job_info", namespace=ns, job="low", phase="Running") == 1)
    assert s.get("finetune_admissions_total", **low) == 1
    # the observed wait is the one the status records (admittedAt - queuedSince, 1 s resolution)
    st = job_status(cluster, ns, "low")
    waited = (dt.datetime.fromisoformat(st["admittedAt"].replace("Z", "+00:00"))
              - dt.datetime.fromisoformat(st["queuedSince"].replace("Z", "+00:00")))
    first_sum = s.get("finetune_admission_wait_seconds_sum", **low)
    assert first_sum is not None and abs(first_sum - waited.total_seconds()) <= 1.5
    first_low_bucket = s.get("finetune_admission_wait_seconds_bucket", **low, le="2.0")
    assert s.total("finetune_queue_depth", namespace=ns) == 0
    assert s.get("finetune_gpus_allocated", namespace=ns) == 2

    # 2. the trainer reports progress and a checkpoint: per-job gauges and the save histogram
    pod1 = running_pod(cluster, ns, "low", 1)
    # (a time a pod reports counts within [its attempt's start, now]: saved during this attempt)
    saved_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report_progress(cluster, ns, pod1, {
        "step": 40, "totalSteps": 100, "epoch": 0.4, "loss": 1.25, "learningRate": 1e-4,
        "tokensPerSecond": 5400.0, "etaSeconds": 60.0, "state": "training",
        "checkpoint": {"step": 30, "path": "checkpoints/checkpoint-30", "savedAt": saved_at,
                       "saveSeconds": 1.5}})
    job = {"namespace": ns, "job": "low"}
    s = wait_metrics(operator, "low's progress gauges", lambda s: s.get(
        "finetune_job_step", **job) == 40)
    assert s.get("finetune_job_total_steps", **job) == 100
    assert s.get("finetune_job_loss", **job) == 1.25
    assert s.get("finetune_job_tokens_per_second", **job) == 5400
    assert s.get("finetune_job_eta_seconds", **job) == 60
    assert s.get("finetune_job_checkpoint_interval_steps", **job) == 30
    assert s.get("finetune_job_last_checkpoint_timestamp_seconds", **job) == unix(saved_at)
    assert s.get("finetune_checkpoint_save_seconds_count", namespace=ns) == 1
    assert s.get("finetune_checkpoint_save_seconds_sum", namespace=ns) == 1.5
    assert s.get("finetune_checkpoint_save_seconds_bucket", namespace=ns, le="1.0") == 0
    assert s.get("finetune_checkpoint_save_seconds_bucket", namespace=ns, le="2.5") == 1
    assert s.get("finetune_lost_steps_total", namespace=ns) == 0

    # 3. crit preempts low: preemption counter (reason operator), low waits in the queue
    cluster.apply(ftj("crit", 2, "finetune-critical", sel), ns)
    wait_phase(cluster, ns, "crit", "Running")
    st = wait_for("low back in the queue", lambda: (
        lambda st: st if st.get("phase") == "Queued" and st.get("preemptions") == 1 else None)(
        job_status(cluster, ns, "low")), 30)
    requeued = time.monotonic()
    assert st["failures"] == 0
    s = wait_metrics(operator, "the preemption and low in the queue", lambda s: s.get(
        "finetune_preemptions_total", **low, reason="operator") == 1 and s.get(
        "finetune_queue_depth", **low) == 1)
    assert s.total("finetune_preemptions_total", namespace=ns) == 1  # crit was never preempted
    assert s.get("finetune_admission_wait_seconds_count", **crit) == 1
    assert s.get("finetune_admissions_total", **crit) == 1
    assert s.get("finetune_gpus_allocated", namespace=ns) == 2
    assert s.get("finetune_gpus_requested", namespace=ns) == 4
    assert s.get("finetune_job_queued_since_timestamp_seconds", **job) is not None
    assert s.get("finetune_lost_steps_total", namespace=ns) == 0  # known only on resume

    # 4. crit runs >= 3 s, completes; low is re-admitted after a wait of more than 2 s
    time.sleep(max(0.0, 3.0 - (time.monotonic() - requeued)))
    complete(cluster, ns, "crit")
    wait_phase(cluster, ns, "crit", "Succeeded")
    wait_for("low admitted again", lambda: job_status(cluster, ns, "low").get("attempt") == 2,
             30)
    s = wait_metrics(operator, "low's second admission", lambda s: s.get(
        "finetune_admission_wait_seconds_count", **low) == 2 and s.get(
        "finetune_queue_depth", **low) == 0)
    assert s.get("finetune_admissions_total", **low) == 2
    # the second wait (> 2 s) lands above the 2 s bucket: that bucket did not move
    assert s.get("finetune_admission_wait_seconds_bucket", **low, le="2.0") == first_low_bucket
    assert s.get("finetune_admission_wait_seconds_bucket", **low, le="+Inf") == 2
    assert s.get("finetune_admission_wait_seconds_sum", **low) >= first_sum + 3.0  # type: ignore[operator]
    assert s.get("finetune_completions_total", namespace=ns) == 1
    assert s.get("finetune_job_queued_since_timestamp_seconds", **job) is None

    # 5. the new attempt resumes from step 30 after the first had reached 40: 10 lost steps
    pod2 = running_pod(cluster, ns, "low", 2)
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    report_progress(cluster, ns, pod2, {
        "step": 32, "totalSteps": 100, "loss": 1.1, "tokensPerSecond": 6000.0,
        "etaSeconds": 68.0, "resumedFromStep": 30, "state": "training",
        "checkpoint": {"step": 30, "path": "checkpoints/checkpoint-30", "savedAt": saved_at,
                       "saveSeconds": 1.5}})
    s = wait_metrics(operator, "lost work after the resume", lambda s: s.get(
        "finetune_lost_steps_total", namespace=ns) == 10)
    # 10 steps x (68 s / 68 steps left) x 2 GPUs
    assert s.get("finetune_lost_work_gpu_seconds_total", namespace=ns) == pytest.approx(20.0)
    assert (s.get("finetune_job_step", **job), s.get("finetune_job_loss", **job)) == (32, 1.1)
    assert s.get("finetune_job_tokens_per_second", **job) == 6000
    assert s.get("finetune_checkpoint_save_seconds_count", namespace=ns) == 1  # same checkpoint
    assert job_status(cluster, ns, "low")["lostSteps"] == 10

    # a newer checkpoint moves the timestamp and is observed once in the save histogram
    report_progress(cluster, ns, pod2, {
        "step": 61, "totalSteps": 100, "loss": 0.9, "tokensPerSecond": 6100.0,
        "etaSeconds": 39.0, "resumedFromStep": 30, "state": "training",
        "checkpoint": {"step": 60, "path": "checkpoints/checkpoint-60", "savedAt": later,
                       "saveSeconds": 4.0}})
    s = wait_metrics(operator, "the newer checkpoint", lambda s: s.get(
        "finetune_job_last_checkpoint_timestamp_seconds", **job) == unix(later))
    assert s.get("finetune_checkpoint_save_seconds_count", namespace=ns) == 2
    assert s.get("finetune_checkpoint_save_seconds_bucket", namespace=ns, le="2.5") == 1
    assert s.get("finetune_lost_steps_total", namespace=ns) == 10  # a report is not a resume

    # 6. low completes: its per-job series go, the counters stay
    complete(cluster, ns, "low")
    wait_phase(cluster, ns, "low", "Succeeded")
    s = wait_metrics(operator, "low's per-job series removed", lambda s: s.get(
        "finetune_job_step", **job) is None and s.get(
        "finetune_job_info", namespace=ns, job="low", phase="Succeeded") == 1)
    for name in ("finetune_job_loss", "finetune_job_tokens_per_second",
                 "finetune_job_last_checkpoint_timestamp_seconds"):
        assert s.get(name, **job) is None, name
    assert s.get("finetune_completions_total", namespace=ns) == 2
    assert s.get("finetune_lost_steps_total", namespace=ns) == 10
    assert s.get("finetune_preemptions_total", **low, reason="operator") == 1
    assert s.get("finetune_gpus_allocated", namespace=ns) == 0


def test_eval_metric_of_a_job_outside_any_sweep(
        cluster: Cluster, operator: OperatorProcess, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes) -> None:
    """finetune_job_eval_metric for a plain FineTuneJob with spec.evaluation (no sweep): the
    metrics of its completion, known names only, from the scrape; gone with the job."""
    sel = gpu_nodes(1, 1)
    ns = make_namespace()
    evaluation = {"dataset": {"source": {"configMap": {"name": "data", "key": "test.jsonl"}}}}
    cluster.apply(ftj("scored", 1, "finetune-normal", sel, evaluation=evaluation), ns)
    wait_phase(cluster, ns, "scored", "Running")
    job = {"namespace": ns, "job": "scored"}
    assert scrape(operator).get("finetune_job_eval_metric", **job, metric="testLoss") is None
    pod = running_pod(cluster, ns, "scored", 1)
    finish_pod(cluster, ns, pod, 0, "Completed", {
        "reason": "Completed", "finalStep": 100, "adapterPath": "output/adapter",
        "metrics": {"testLoss": 1.5, "testPerplexity": 4.48, "testRougeL": 42.0,
                    "trainLoss": 0.7, "notAMetricWeServe": 3.0}})
    st = wait_phase(cluster, ns, "scored", "Succeeded")
    assert st["output"]["metrics"]["testLoss"] == 1.5
    s = wait_metrics(operator, "scored's evaluation", lambda s: s.get(
        "finetune_job_eval_metric", **job, metric="testLoss") == 1.5)
    assert s.get("finetune_job_eval_metric", **job, metric="testPerplexity") == 4.48
    assert s.get("finetune_job_eval_metric", **job, metric="testRougeL") == 42.0
    assert s.get("finetune_job_eval_metric", **job, metric="trainLoss") == 0.7
    assert s.get("finetune_job_eval_metric", **job, metric="notAMetricWeServe") is None
    assert s.total("finetune_sweep_trials", namespace=ns) == 0  # no sweep was involved
    cluster.kubectl("delete", "finetunejob", "scored", "-n", ns, "--wait=false")
    wait_metrics(operator, "scored's evaluation removed with the job", lambda s: s.get(
        "finetune_job_eval_metric", **job, metric="testLoss") is None)


def test_only_a_metrics_reader_may_scrape(cluster: Cluster, operator: OperatorProcess,
                                          namespace: str) -> None:
    """Real TokenReview and SubjectAccessReview on the real API server: a ServiceAccount bound
    to the chart's metrics-reader ClusterRole gets 200 and the finetune_ series; one without
    it 403; no token, a forged one and a trainer's report token (another audience) 401; the
    answers are cached (the operator's own TokenReview counter does not move while scraping)."""
    import urllib.error
    import urllib.request

    reader = scraper_token(cluster, namespace, "prometheus", reader=True)
    tenant = scraper_token(cluster, namespace, "tenant", reader=False)
    code, text = operator.get_metrics(reader)
    assert code == 200, text
    before = Scrape(text)
    assert before.total("finetune_api_requests_total", verb="create",
                        resource="subjectaccessreviews") >= 1
    report_token = cluster.kubectl("create", "token", "default", "-n", namespace,
                                   "--audience=finetune.dev/operator").stdout.strip()
    head, payload, sig = tenant.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}AAAA"
    for token, want in ((tenant, 403), (None, 401), ("not-a-token", 401), (forged, 401),
                        (report_token, 401)):
        code, text = operator.get_metrics(token)
        assert code == want, f"token {token and token[:12]}...: HTTP {code} {text}"
        assert "finetune_" not in text
    for _ in range(3):  # cached: no TokenReview, no SubjectAccessReview per scrape
        assert [operator.get_metrics(t)[0] for t in (reader, tenant)] == [200, 403]
    after = Scrape(operator.get_metrics(reader)[1])
    reviews = {r: after.total("finetune_api_requests_total", verb="create", resource=r)
               - before.total("finetune_api_requests_total", verb="create", resource=r)
               for r in ("tokenreviews", "subjectaccessreviews")}
    # since `before`: one review each of tenant's token; forged, garbage, report tokens one
    # TokenReview each (no SubjectAccessReview: not authenticated); nothing for repeats
    assert reviews == {"tokenreviews": 4, "subjectaccessreviews": 1}, reviews
    # plain HTTP gets nothing from the metrics port; the probes stay plain HTTP, no token
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5)
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.health_port}/healthz",
                                timeout=5) as r:
        assert r.status == 200
