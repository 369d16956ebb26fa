"""The generated FineTuneSweep CRD on the real API server: invalid sweeps are rejected by
`kubectl apply` naming the field; a valid one is stored with the models' defaults and printed
with the sweep columns. Then SweepRunner against the real API: trials created once (a second
runner, as after a restart, creates no duplicate), never adopting a foreign job, the status
written once, and the trials garbage-collected with the sweep."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from finetune_api.sweep import FineTuneSweepSpec
from tests.builders.invalid_cases import names_field, server_errors

from ..kube import Cluster, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
SWEEP_CRD = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"


@pytest.fixture(scope="module")
def sweep_crd(cluster: Cluster, crd_installed: object) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    return SWEEP_CRD


def template() -> dict[str, Any]:
    return {
        "model": {"name": "tiny", "source": {"pvc": {"claimName": "models", "path": "tiny"}}},
        "dataset": {"source": {"configMap": {"name": "data", "key": "train.jsonl"}}},
        "training": {"maxSteps": 10},
        "resources": {"gpus": 0, "cpu": "1", "memory": "1Gi"},
        "evaluation": {"dataset": {"source": {"configMap": {"name": "data",
                                                            "key": "test.jsonl"}}}},
    }


def sweep(name: str = "lr", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "template": template(),
        "parameters": [{"path": "training.learningRate", "values": [1e-4, 3e-4]},
                       {"path": "lora.rank", "values": [4, 8]}],
        "maxParallel": 2,
        "objective": {"metric": "testLoss"},
    }
    for key, value in spec.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": name}, "spec": body}


def _apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest),
                           check=False)


def _no_template_eval() -> dict[str, Any]:
    t = template()
    del t["evaluation"]
    return t


def _full_with_lora() -> dict[str, Any]:
    return {**template(), "method": "full", "lora": {"rank": 8}}


INVALID = [
    ("empty-grid", {"parameters": []}, "spec.parameters"),
    ("max-parallel-0", {"maxParallel": 0}, "spec.maxParallel"),
    ("unknown-path", {"parameters": [{"path": "training.learnngRate", "values": [1]}]},
     "spec.parameters.0.path"),
    ("empty-values", {"parameters": [{"path": "lora.rank", "values": []}]},
     "spec.parameters.0.values"),
    ("values-and-range", {"parameters": [{"path": "lora.rank", "values": [4],
                                          "range": {"min": 1, "max": 8}}],
                          "search": {"strategy": "random", "trials": 2}},
     "spec.parameters.0"),
    ("duplicate-path", {"parameters": [{"path": "lora.rank", "values": [4]},
                                       {"path": "lora.rank", "values": [8]}]},
     "spec.parameters"),
    ("range-in-grid", {"parameters": [{"path": "lora.rank", "range": {"min": 1, "max": 8}}]},
     "spec.parameters"),
    ("random-without-trials", {"search": {"strategy": "random"}}, "spec.search.trials"),
    ("log-range-from-0", {"parameters": [{"path": "training.learningRate",
                                          "range": {"min": 0, "max": 1, "scale": "log"}}],
                          "search": {"strategy": "random", "trials": 2}},
     "spec.parameters.0.range.min"),
    ("test-metric-without-evaluation", {"template": _no_template_eval()},
     "spec.objective.metric"),
    ("invalid-template", {"template": _full_with_lora()}, "spec.template.lora"),
    ("unknown-metric", {"objective": {"metric": "accuracy"}}, "spec.objective.metric"),
]


@pytest.mark.parametrize(("spec", "field"), [(s, f) for _, s, f in INVALID],
                         ids=[i for i, _, _ in INVALID])
def test_invalid_sweep_is_rejected_naming_the_field(cluster: Cluster, sweep_crd: Path,
                                                    namespace: str, spec: dict[str, Any],
                                                    field: str) -> None:
    proc = _apply(cluster, namespace, sweep(**spec))
    assert proc.returncode != 0, f"accepted:\n{proc.stdout}"
    errors = server_errors(proc.stderr)
    assert names_field(errors, field), f"error does not name {field}:\n{proc.stderr}"
    assert cluster.get("finetunesweep", "lr", namespace) is None


def test_unknown_path_error_lists_the_allowed_paths(cluster: Cluster, sweep_crd: Path,
                                                   namespace: str) -> None:
    proc = _apply(cluster, namespace, sweep(parameters=[{"path": "training.lr",
                                                         "values": [1]}]))
    assert "Unsupported value" in proc.stderr and "training.learningRate" in proc.stderr


def test_valid_sweep_is_stored_with_the_models_defaults(cluster: Cluster, sweep_crd: Path,
                                                        namespace: str) -> None:
    manifest = sweep()
    proc = _apply(cluster, namespace, manifest)
    assert proc.returncode == 0, proc.stderr
    stored = cluster.get("finetunesweep", "lr", namespace)
    assert stored is not None
    assert stored["spec"] == FineTuneSweepSpec.model_validate(manifest["spec"]).to_wire()
    assert stored["spec"]["search"] == {"strategy": "grid", "seed": 0}
    assert stored["spec"]["parameters"][0]["values"] == [1e-4, 3e-4]  # any-typed values kept
    out = cluster.kubectl("get", "fts", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "TRIALS", "ACTIVE", "METRIC", "BEST", "VALUE",
                              "AGE"]


def _kube(cluster: Cluster) -> Any:
    from finetune_operator.kube.client import Kube

    return Kube(cluster.api)


def _jobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "finetunejobs", "-n", namespace, "-o", "json").stdout
    return list(json.loads(out)["items"])


def test_a_sweep_whose_trials_all_failed_is_stored_failed_with_the_counts(
        cluster: Cluster, sweep_crd: Path, namespace: str) -> None:
    """Not "Succeeded, 2/2 trials finished": the stored status and kubectl get say Failed, the
    Complete condition counts succeeded and failed trials and names one to describe."""
    from finetune_operator.sweep import SweepRunner

    now = datetime(2026, 1, 1, tzinfo=UTC)
    # no operator here: the test plays its part (a suspended trial would count as Stopped)
    assert _apply(cluster, namespace, sweep(
        "doomed", parameters=[{"path": "lora.rank", "values": [4, 8]}])).returncode == 0

    def sync() -> dict[str, Any]:
        body = cluster.get("finetunesweep", "doomed", namespace)
        assert body is not None
        SweepRunner(_kube(cluster)).sync([body], _jobs(cluster, namespace), now)
        return dict((cluster.get("finetunesweep", "doomed", namespace) or {})["status"])

    first = sync()
    assert first["phase"] == "Running", first
    for trial in ("doomed-t0", "doomed-t1"):
        cluster.kubectl("patch", "finetunejob", trial, "-n", namespace, "--subresource=status",
                        "--type=merge", "-p", json.dumps({"status": {"phase": "Failed"}}))
    st = sync()
    assert (st["phase"], st["finishedTrials"], st.get("best")) == ("Failed", 2, None)
    complete = next(c for c in st["conditions"] if c["type"] == "Complete")
    assert complete["reason"] == "NoTrialSucceeded"
    assert complete["message"].startswith(
        "2/2 trials finished: 0 succeeded, 2 failed; no trial succeeded, so there is no best")
    assert f"kubectl finetune describe doomed-t0 -n {namespace}" in complete["message"]
    row = cluster.kubectl("get", "finetunesweep", "doomed", "-n", namespace,
                          "--no-headers").stdout.split()
    assert "Failed" in row and "Succeeded" not in row


def test_runner_creates_trials_once_never_adopts_and_trials_go_with_the_sweep(
        cluster: Cluster, sweep_crd: Path, namespace: str) -> None:
    """Robust to an operator of someone else's that watches every namespace of the shared
    cluster and runs the same runner: assertions are on what the cluster holds."""
    from finetune_operator.sweep import SweepRunner

    now = datetime(2026, 1, 1, tzinfo=UTC)
    # a job that merely has the name of trial 1: the sweep must not adopt it
    foreign = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
               "metadata": {"name": "lr-t1"}, "spec": copy.deepcopy(template())}
    cluster.apply(foreign, namespace)
    assert _apply(cluster, namespace, sweep()).returncode == 0
    body = cluster.get("finetunesweep", "lr", namespace)
    assert body is not None

    kube = _kube(cluster)
    res = SweepRunner(kube).sync([body], _jobs(cluster, namespace), now)
    assert set(res.created) <= {f"{namespace}/lr-t0", f"{namespace}/lr-t2"}
    assert kube.calls["create finetunejobs"] == 2  # t0 and t2 (maxParallel 2, t1 is taken)
    assert kube.calls["patch finetunesweeps/status"] == 1
    owned = {j["metadata"]["name"]: j for j in _jobs(cluster, namespace)
             if j["metadata"].get("ownerReferences")}
    assert sorted(owned) == ["lr-t0", "lr-t2"]
    ref = owned["lr-t0"]["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "FineTuneSweep", "lr", body["metadata"]["uid"], True)
    assert owned["lr-t0"]["spec"]["lora"]["rank"] == 4
    assert owned["lr-t2"]["spec"]["training"]["learningRate"] == 3e-4

    # a restarted operator (a new runner) working from a stale view: create-or-get, nothing new
    kube2 = _kube(cluster)
    res2 = SweepRunner(kube2).sync([body], [], now)
    assert res2.created == [] and kube2.calls["create finetunejobs"] == 2
    jobs = _jobs(cluster, namespace)
    assert sorted(j["metadata"]["name"] for j in jobs) == ["lr-t0", "lr-t1", "lr-t2"]
    lr_t1 = next(j for j in jobs if j["metadata"]["name"] == "lr-t1")
    assert not lr_t1["metadata"].get("ownerReferences"), "the foreign job was adopted"

    # the stored status names the conflict and lists the four trials
    body = cluster.get("finetunesweep", "lr", namespace)
    assert body is not None
    SweepRunner(_kube(cluster)).sync([body], _jobs(cluster, namespace), now)
    st = (cluster.get("finetunesweep", "lr", namespace) or {})["status"]
    assert [t["name"] for t in st["trials"]] == ["lr-t0", "lr-t1", "lr-t2", "lr-t3"]
    assert st["trials"][1]["phase"] == "Pending" and st["totalTrials"] == 4
    assert any(c["type"] == "NameConflict" and "lr-t1" in c["message"]
               for c in st["conditions"])

    # deleting the sweep deletes its trials (owner references, garbage collector), not lr-t1
    cluster.kubectl("delete", "finetunesweep", "lr", "-n", namespace, "--wait=false")
    wait_for("the trials to be garbage-collected", lambda: sorted(
        j["metadata"]["name"] for j in _jobs(cluster, namespace)) == ["lr-t1"], 60)
