"""The operator's API write budget, by counts (never times), on the real local control plane.

A smaller version of benchmarks/bench_scale.py for CI: 100 one-GPU FineTuneJobs on two fake
64-GPU nodes, counted from the operator's own /metrics counter
``finetune_api_requests_total{verb,resource}`` (writes: create, patch, update, delete, replace;
Lease writes are leader election and are counted separately):

1. API writes per job lifecycle, apply -> Succeeded without preemption (children created, status
   patches, events): at most 8;
2. with every job Running and nothing changing, the operator makes no write for 30 s besides
   Lease renewals at the configured period.

The operator is restarted to watch only the test's namespace and to keep its Lease there, so
other tests' jobs and operators on the shared cluster do not enter its counts.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator.settings import OperatorSettings

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, finish_pod, ftj

pytestmark = pytest.mark.cluster

JOBS = 100
WRITE_BUDGET_PER_JOB = 8
IDLE_WINDOW_SECONDS = 30
WRITE_VERBS = frozenset({"create", "patch", "update", "delete", "replace"})


def api_requests(op: OperatorProcess) -> Counter[tuple[str, str]]:
    """The operator's finetune_api_requests_total by (verb, resource)."""
    out: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == "finetune_api_requests_total":
                out[(s.labels["verb"], s.labels["resource"])] += int(s.value)
    return out


def is_lease(resource: str) -> bool:
    return resource.split("/")[0].lower() in ("lease", "leases")


# Creating a review stores nothing: it is a question to the API server (this test's own scrapes
# of /metrics cause them: TokenReview + SubjectAccessReview, cached for a minute).
REVIEWS = frozenset({"tokenreviews", "subjectaccessreviews"})


def writes(counts: Counter[tuple[str, str]], lease: bool) -> Counter[tuple[str, str]]:
    return Counter({(v, r): n for (v, r), n in counts.items()
                    if v in WRITE_VERBS and r not in REVIEWS and is_lease(r) == lease and n})


def delta(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]],
          ) -> Counter[tuple[str, str]]:
    return Counter({k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)})


def show(c: Counter[tuple[str, str]]) -> str:
    return ", ".join(f"{v} {r}: {n}" for (v, r), n in c.most_common()) or "none"


def phases(cluster: Cluster, ns: str) -> Counter[str]:
    out = cluster.kubectl("get", "finetunejobs", "-n", ns, "-o", "json").stdout
    return Counter((j.get("status") or {}).get("phase") for j in json.loads(out)["items"])


def wait_writes_settle(op: OperatorProcess, quiet: float = 5.0, timeout: float = 120) -> None:
    """Until the operator's non-Lease write count has not moved for `quiet` seconds."""
    last: dict[str, object] = {"n": -1, "since": time.monotonic()}

    def settled() -> bool:
        n = sum(writes(api_requests(op), lease=False).values())
        if n != last["n"]:
            last.update(n=n, since=time.monotonic())
            return False
        return time.monotonic() - float(last["since"]) >= quiet  # type: ignore[arg-type]

    wait_for(f"the operator's writes to stop for {quiet:.0f}s (it kept writing: "
             f"{show(writes(api_requests(op), lease=False))})", settled, timeout, 1.0)


def test_write_budget_and_idle_zero_writes(cluster, operator, make_namespace,  # type: ignore[no-untyped-def]
                                           gpu_nodes) -> None:
    ns = make_namespace()
    selector = gpu_nodes(2, 64)
    operator.stop()
    operator.start(FINETUNE_NAMESPACES=ns, POD_NAMESPACE=ns)
    assert api_requests(operator), (
        "the operator's /metrics has no finetune_api_requests_total{verb,resource}: export "
        "the k8s.py call counter so writes can be budgeted")

    jobs = [ftj(f"wb-{i:03d}", 1, "finetune-normal", selector,
                resources={"gpus": 1, "cpu": "100m", "memory": "64Mi", "nodeSelector": selector})
            for i in range(JOBS)]
    before_apply = api_requests(operator)
    cluster.apply(jobs, ns)
    wait_for(f"all {JOBS} jobs Running", lambda: phases(cluster, ns)["Running"] == JOBS, 600, 1)

    # (2) idle: every job Running, nothing changes; the operator writes nothing but its Lease
    wait_writes_settle(operator)
    window_start = api_requests(operator)
    started = time.monotonic()
    idle: Counter[tuple[str, str]] = Counter()

    def window_over() -> bool:
        nonlocal idle
        idle = delta(api_requests(operator), window_start)
        assert not writes(idle, lease=False), (
            f"the operator wrote while nothing changed ({time.monotonic() - started:.0f}s into "
            f"the idle window): {show(writes(idle, lease=False))}")
        return time.monotonic() - started >= IDLE_WINDOW_SECONDS

    idle_problem = ""
    try:
        wait_for("the idle window to pass", window_over, IDLE_WINDOW_SECONDS + 30, 1.0)
    except AssertionError as e:
        idle_problem = str(e)
    window_end = api_requests(operator)
    window = time.monotonic() - started

    # (1) lifecycle: complete every job; count apply -> Succeeded (the idle window aside)
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "finetune.dev/job", "-o",
                                      "json").stdout)["items"]
    running = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == JOBS, f"expected {JOBS} running pods, found {len(running)}"
    for pod in running:
        finish_pod(cluster, ns, pod, 0, "Completed", {"reason": "Completed", "finalStep": 1})
    wait_for(f"all {JOBS} jobs Succeeded", lambda: phases(cluster, ns)["Succeeded"] == JOBS,
             600, 1)
    wait_writes_settle(operator)
    after = api_requests(operator)
    lifecycle = delta(window_start, before_apply) + delta(after, window_end)
    per_job = sum(writes(lifecycle, lease=False).values()) / JOBS
    lease_writes = sum(writes(idle, lease=True).values())
    renew = OperatorSettings.from_env(operator.env).lease.lease_renew_seconds
    allowed_lease = math.ceil(window / renew) + 1

    print(f"write budget: {per_job:.2f} writes per job lifecycle over {JOBS} jobs "
          f"({show(writes(lifecycle, lease=False))}); idle {window:.0f}s: "
          f"{show(writes(idle, lease=False))} besides {lease_writes} Lease writes")
    problems = [idle_problem] if idle_problem else []
    if per_job > WRITE_BUDGET_PER_JOB:
        problems.append(f"{per_job:.1f} API writes per job lifecycle (budget "
                        f"{WRITE_BUDGET_PER_JOB}); all {JOBS} jobs: "
                        f"{show(writes(lifecycle, lease=False))}")
    if lease_writes > allowed_lease:
        problems.append(f"{lease_writes} Lease writes in a {window:.0f}s idle window; renewing "
                        f"every {renew}s allows {allowed_lease}")
    assert not problems, "; ".join(problems)
