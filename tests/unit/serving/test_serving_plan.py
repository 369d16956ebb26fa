"""The ModelServer controller's pure plan and its shell (serving/): the pod and Service once
admitted, adapters loaded as jobs succeed and unloaded when unlisted, a load failure as a
condition naming the adapter, restarts only when the pod must change, and an idle server
costing no call."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer, ModelServerSpec
from finetune_operator.admission import JobVerdict, QueuedJob, RunningJob
from finetune_operator.serving.plan import (
    plan_server,
    slim_server_pod,
    snapshot_entry,
)
from finetune_operator.serving.runner import ServingRunner
from finetune_operator.serving.runtime import RuntimeError_
from finetune_operator.settings import OperatorSettings
from tests.builders.jobkube import RecordingJobKube

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
NS = "team-a"
CLASSES = {"finetune-normal": 100, "finetune-high": 200}
SETTINGS = OperatorSettings()
MODEL = {"name": "tiny", "source": {"pvc": {"claimName": "models", "path": "tiny"}}}


def server_body(adapters: list[dict[str, Any]] | None = None, status: dict[str, Any] | None = None,
                **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "ModelServer",
            "metadata": {"name": "chat", "namespace": NS, "uid": "uid-chat", "generation": 1,
                         "creationTimestamp": "2026-12-01T11:00:00Z"},
            "spec": {"model": MODEL, "runtime": "transformers", "resources": {"gpus": 1},
                     "adapters": adapters or [], **spec},
            "status": status or {}}


def job(name: str, phase: str | None = "Succeeded", claim: str = "ckpt") -> FineTuneJob:
    return FineTuneJob.from_body({
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
        "spec": {"model": MODEL,
                 "dataset": {"source": {"configMap": {"name": "d", "key": "k"}}},
                 "checkpoint": {"storage": {"claimName": claim}}},
        "status": {"phase": phase, **({"output": {"adapterPath": "output/adapter"}}
                                      if phase == "Succeeded" else {})}})


def pod_of(created: dict[str, Any], phase: str = "Running", ip: str | None = "10.0.0.5",
           **status: Any) -> dict[str, Any]:
    body = {**created, "metadata": {**created["metadata"], "uid": "uid-pod",
                                     "creationTimestamp": "2026-12-01T11:30:00Z"},
            "spec": {**created["spec"], "nodeName": "n1"},
            "status": {"phase": phase, **({"podIP": ip} if ip else {}), **status}}
    return slim_server_pod(body)


class FakeRuntime:
    """RuntimePort: records every call; ``refuse`` maps an adapter name to a load error."""

    def __init__(self, loaded: set[str] | None = None, down: bool = False,
                 refuse: dict[str, str] | None = None) -> None:
        self.loaded = set(loaded or ())
        self.down, self.refuse = down, refuse or {}
        self.calls: list[tuple[str, ...]] = []

    def adapters(self, endpoint: str) -> frozenset[str]:
        self.calls.append(("models", endpoint))
        if self.down:
            raise RuntimeError_("not reachable: connection refused")
        return frozenset(self.loaded)

    def load(self, endpoint: str, name: str, path: str) -> None:
        self.calls.append(("load", name, path))
        if name in self.refuse:
            raise RuntimeError_(f"HTTP 400: {self.refuse[name]}")
        self.loaded.add(name)

    def unload(self, endpoint: str, name: str) -> None:
        self.calls.append(("unload", name))
        self.loaded.discard(name)


class World:
    """A server, its pods, the jobs, the runner: each ``cycle()`` feeds back what was written."""

    def __init__(self, body: dict[str, Any], jobs: list[FineTuneJob],
                 runtime: FakeRuntime | None = None) -> None:
        self.body, self.jobs = body, jobs
        self.kube = RecordingJobKube()
        self.runtime = runtime or FakeRuntime()
        self.pods: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        orig = self.kube.patch_server_status

        def patch(namespace: str, name: str, status: dict[str, Any]) -> bool:
            self.statuses.append(status)
            merged = {**self.body.get("status", {}), **status}
            self.body["status"] = {k: v for k, v in merged.items() if v is not None}
            return orig(namespace, name, status)

        self.kube.patch_server_status = patch  # type: ignore[method-assign]
        self.runner = ServingRunner(self.kube, self.runtime, SETTINGS,
                                    on_created_pod=lambda p: self.pods.append(pod_of(p)))

    def cycle(self, verdict: JobVerdict | None = None) -> None:
        self.runner.sync([self.body], {"uid-chat": self.pods}, self.jobs,
                         {"uid-chat": verdict} if verdict else {}, CLASSES, NOW)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body["status"])


def adapter_rows(w: World) -> dict[str, tuple[str, str]]:
    return {a["name"]: (a["state"], a.get("message", "")) for a in w.status["adapters"]}


def test_spec_rejects_what_the_crd_rejects() -> None:
    with pytest.raises(ValidationError, match="exactly one of job, path"):
        ModelServerSpec.model_validate({"model": MODEL, "adapters": [{"name": "a"}]})
    with pytest.raises(ValidationError, match="each name may appear only once"):
        ModelServerSpec.model_validate({"model": MODEL, "adapters": [
            {"name": "a", "job": "x"}, {"name": "a", "job": "y"}]})
    with pytest.raises(ValidationError, match=r"runtime vllm needs resources\.gpus"):
        ModelServerSpec.model_validate({"model": MODEL, "resources": {"gpus": 0}})
    with pytest.raises(ValidationError, match="maxLoras"):
        ModelServerSpec.model_validate({"model": MODEL, "limits": {"maxLoras": 1}, "adapters": [
            {"name": "a", "job": "x"}, {"name": "b", "job": "y"}]})


def test_waits_in_the_queue_with_the_policy_reason() -> None:
    w = World(server_body(), [])
    w.cycle(JobVerdict(position=2, reason="quota team-a exhausted", code=None))
    assert w.kube.writes() == [("patch", "ModelServer", f"{NS}/chat")]
    assert w.status["phase"] == "Queued"
    assert w.status["reason"] == "waiting for GPUs (position 2): quota team-a exhausted"
    w.cycle(JobVerdict(position=2, reason="quota team-a exhausted", code=None))
    assert len(w.kube.writes()) == 1  # the same facts: no second write


def test_admitted_creates_service_and_pod_then_loads_succeeded_adapters() -> None:
    w = World(server_body([{"name": "a", "job": "ja"}, {"name": "b", "job": "jb"},
                           {"name": "c", "job": "jc"}]),
              [job("ja"), job("jb"), job("jc", phase="Running")])
    w.cycle(JobVerdict(admit=True, placement=("n1",)))
    kinds = [(verb, kind) for verb, kind, _ in w.kube.writes()]
    assert kinds == [("create", "Service"), ("create", "Pod"), ("patch", "ModelServer")]
    pod = next(o for (k, _, _), o in w.kube.objects.items() if k == "Pod")
    cmd = pod["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["python", "-m", "finetune_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/tiny"
    assert "--adapter" not in cmd  # every adapter is loaded at run time
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "/adapters/ckpt" in mounts
    assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert w.status["phase"] == "Starting"
    w.cycle()  # the pod runs: the runtime is asked, a and b loaded, c waits for its job
    assert [c[0:2] for c in w.runtime.calls] == [("models", "http://10.0.0.5:8000"),
                                                ("load", "a"), ("load", "b")]
    assert w.runtime.calls[1][2] == "/adapters/ckpt/finetune/team-a/ja/uid-ja/output/adapter"
    assert w.status["phase"] == "Ready"
    assert w.status["loadedAdapters"] == ["a", "b"]
    assert w.status["url"] == "http://chat.team-a.svc:8000"
    assert adapter_rows(w)["c"][0] == "Waiting"
    assert "waiting for FineTuneJob jc to succeed (now Running)" in adapter_rows(w)["c"][1]
    # idle: no call to the runtime, no write
    calls, writes = len(w.runtime.calls), len(w.kube.writes())
    w.cycle()
    assert (len(w.runtime.calls), len(w.kube.writes())) == (calls, writes)
    # jc succeeds: loaded without a restart (same claim, same pod)
    w.jobs[2] = job("jc")
    w.cycle()
    assert w.runtime.calls[-1][:2] == ("load", "c")
    assert w.status["loadedAdapters"] == ["a", "b", "c"]
    assert not [c for c in w.kube.writes() if c[1] == "Pod" and c[0] == "delete"]
    # b is unlisted: unloaded
    w.body["spec"]["adapters"] = [{"name": "a", "job": "ja"}, {"name": "c", "job": "jc"}]
    w.cycle()
    assert w.runtime.calls[-1] == ("unload", "b")
    assert w.status["loadedAdapters"] == ["a", "c"]


def test_a_failed_load_is_a_condition_naming_the_adapter_and_is_not_retried() -> None:
    rt = FakeRuntime(refuse={"bad": "rank 64 exceeds --max-lora-rank 16"})
    w = World(server_body([{"name": "bad", "path": {"claimName": "ckpt", "path": "x"}}]), [],
              rt)
    w.cycle(JobVerdict(admit=True))
    w.cycle()
    cond = next(c for c in w.status["conditions"] if c["type"] == "AdaptersReady")
    assert cond["status"] == "False" and cond["reason"] == "AdapterLoadFailed"
    assert "adapter bad" in cond["message"] and "rank 64 exceeds" in cond["message"]
    assert adapter_rows(w)["bad"][0] == "Failed"
    assert w.status["phase"] == "Ready"  # the base model is served
    calls, writes = len(rt.calls), len(w.kube.writes())
    w.cycle()
    assert (len(rt.calls), len(w.kube.writes())) == (calls, writes)


def test_a_new_claim_restarts_the_pod_and_an_unreachable_runtime_waits() -> None:
    w = World(server_body([{"name": "a", "job": "ja"}]), [job("ja")], FakeRuntime(down=True))
    w.cycle(JobVerdict(admit=True))
    w.cycle()
    assert w.status["phase"] == "Starting"
    assert "connection refused" in w.status["reason"]
    w.jobs.append(job("jb", claim="other"))
    w.body["spec"]["adapters"].append({"name": "b", "job": "jb"})
    w.cycle()
    assert w.kube.writes()[-2][:2] == ("delete", "Pod")
    assert "restarting" in w.status["reason"]


def test_an_exited_runtime_is_restarted_then_fails_for_good() -> None:
    w = World(server_body(), [])
    w.cycle(JobVerdict(admit=True))
    for _ in range(3):
        w.pods = [{**w.pods[0], "phase": "Failed", "message": "exit code 3"}]
        w.cycle(JobVerdict(admit=True))
        w.pods = []
        w.cycle(JobVerdict(admit=True))
    assert w.status["phase"] == "Failed"
    assert "exited 3 times" in w.status["reason"]
    server = ModelServer.from_body(w.body)
    assert snapshot_entry(server, [], 100, "finetune-normal", SETTINGS, NOW) is None


def test_snapshot_entry_waits_then_holds_gpus_flagged_serving() -> None:
    server = ModelServer.from_body(server_body(resources={"gpus": 2}))
    waiting = snapshot_entry(server, [], 100, "finetune-normal", SETTINGS, NOW)
    assert isinstance(waiting, QueuedJob) and waiting.serving and waiting.gpus == 2
    plan = plan_server(server, [], {}, JobVerdict(admit=True), "finetune-normal", None,
                       SETTINGS)
    assert plan.create_pod is not None
    running = snapshot_entry(server, [pod_of(plan.create_pod)], 100, "finetune-normal",
                             SETTINGS, NOW)
    assert isinstance(running, RunningJob) and running.serving
    assert running.placement == ("n1",)


def test_a_class_the_namespace_may_not_use_is_the_reason() -> None:
    w = World(server_body(priorityClassName="finetune-critical"), [])
    w.cycle(JobVerdict(admit=True))
    assert not [c for c in w.kube.writes() if c[1] == "Pod"]
    assert "priorityClassName finetune-critical is not allowed" in w.status["reason"]


def test_the_native_admitter_decides_servers_in_the_same_round() -> None:
    from finetune_operator.admission import ClusterView
    from finetune_operator.jobs.decide import NativeAdmitter

    server = ModelServer.from_body(server_body(resources={"gpus": 2}))
    entry = snapshot_entry(server, [], 100, "finetune-normal", SETTINGS, NOW)
    node = {"metadata": {"name": "n1", "labels": {}}, "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": 2}, "ready": "True"}}
    quota: dict[str, Any] = {"metadata": {"name": "gpus", "namespace": NS},
                             "spec": {"hard": {"requests.nvidia.com/gpu": 2}},
                             "status": {"hard": {"requests.nvidia.com/gpu": 2},
                                        "used": {"requests.nvidia.com/gpu": 1}}}

    def decide(quotas: list[dict[str, Any]]) -> JobVerdict:
        view = ClusterView(jobs=[], pods_by_uid={}, classes=CLASSES, nodes=cast(Any, [node]),
                           active_pods=[], quotas=cast(Any, quotas), servers=[entry])
        return NativeAdmitter(SETTINGS).decide(view, NOW).by_uid["uid-chat"]

    assert decide([]).admit
    waits = decide([quota])  # another pod of the namespace holds one of its two GPUs
    assert not waits.admit and waits.code is not None and waits.code.value == "QuotaExhausted"
    quota["spec"]["hard"] = quota["status"]["hard"] = {"requests.nvidia.com/gpu": 1}
    assert "raise the quota" in (decide([quota]).impossible or "")


def test_a_preempted_server_gives_its_pod_back_and_queues() -> None:
    w = World(server_body(), [])
    w.cycle(JobVerdict(admit=True))
    w.cycle(JobVerdict(preempt="preempted to make room for team-b/urgent"))
    assert w.kube.writes()[-2][:2] == ("delete", "Pod")
    assert w.status["phase"] == "Queued"
    assert w.status["reason"].startswith("preempted: preempted to make room")


def test_a_refused_pod_is_said_and_tried_again_only_after_a_pause() -> None:
    w = World(server_body(), [])
    clock = [100.0]
    w.runner.monotonic = lambda: clock[0]
    refusals = []

    def refuse(obj: dict[str, Any]) -> dict[str, Any]:
        refusals.append(obj["kind"])
        if obj["kind"] == "Pod":
            raise RuntimeError('pods "chat-x" is forbidden: exceeded quota: gpus')
        return obj

    w.kube.create_server_child = refuse  # type: ignore[method-assign]
    w.cycle(JobVerdict(admit=True))
    assert w.status["phase"] == "Queued"
    assert "exceeded quota: gpus" in w.status["reason"]
    w.cycle(JobVerdict(admit=True))
    assert refusals == ["Service", "Pod"]  # no second try within the pause
    clock[0] += 31
    w.cycle(JobVerdict(admit=True))
    assert refusals == ["Service", "Pod", "Service", "Pod"]


def test_an_unanswered_runtime_is_asked_again_only_after_a_pause() -> None:
    rt = FakeRuntime(down=True)
    w = World(server_body(), [], rt)
    clock = [100.0]
    w.runner.monotonic = lambda: clock[0]
    w.cycle(JobVerdict(admit=True))
    w.cycle()
    w.cycle()
    assert [c[0] for c in rt.calls] == ["models"]
    rt.down = False
    clock[0] += 6
    w.cycle()
    assert [c[0] for c in rt.calls] == ["models", "models"]
    assert w.status["phase"] == "Ready"
