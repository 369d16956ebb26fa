"""kubectl finetune, the pure parts: table rows from job dicts, describe/top text, manifests from
flags (validated against FineTuneJobSpec), and the error messages."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import pytest
import yaml

from finetune_api.spec import FineTuneJobSpec
from finetune_operator.cli import main, render
from finetune_operator.cli.args import build_parser, submit_options
from finetune_operator.cli.commands import cmd_top, logs_unavailable
from finetune_operator.cli.errors import CliError, api_error_message
from finetune_operator.cli.manifest import (
    SubmitOptions,
    load_manifest,
    manifest_from_options,
)
from finetune_operator.view import compare, sweeps
from finetune_operator.view.cells import human_duration
from finetune_operator.view.describe import describe, describe_object
from finetune_operator.view.jobs import job_row, job_rows, phase_of, reason_text
from finetune_operator.view.top import top_rows
from tests.builders.jobs import job_body

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 1, 2, 0, 0, tzinfo=dt.UTC)  # 2 h after factories.DEFAULT_CREATED


def job(name: str = "bot", status: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return job_body(name, status=status or {}, **kw)


# ------------------------------------------------------------------ durations and cells


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (200, "3m20s"), (600, "10m"),
    (47 * 60 + 5, "47m"), (3 * 3600, "3h"), (5 * 3600 + 12 * 60, "5h12m"), (20 * 3600, "20h"),
    (3 * 86400 + 4 * 3600, "3d4h"), (9 * 86400, "9d"), (800 * 86400, "2y"), (None, "-"),
    (-5, "0s"),
])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_queued_row_shows_position_reason_and_no_eta() -> None:
    j = job(status={"phase": "Queued", "queue": {"position": 3, "reason":
            "needs 2 nvidia.com/gpu; quota team-a has 0 free"}, "preemptions": 2,
            "progress": {"step": 10, "totalSteps": 40, "loss": 0.8312345, "etaSeconds": 99}})
    row = render.list_cells(job_row(j, NOW))
    assert row["PHASE"] == "Queued" and row["QUEUE"] == "3"
    assert row["REASON"] == "needs 2 nvidia.com/gpu; quota team-a has 0 free"
    assert (row["PROGRESS"], row["LOSS"], row["ETA"]) == ("10/40 (25%)", "0.8312", "-")
    assert (row["PREEMPTIONS"], row["AGE"], row["GPUS"]) == ("2", "120m", "2")  # as kubectl
    assert row["PRIORITY"] == "finetune-high"


def test_running_row_shows_progress_eta_and_multi_node_gpus() -> None:
    j = job(nodes=4, gpus=8, priority_class=None,
            status={"phase": "Running", "effectivePriorityClass": "finetune-normal",
                    "progress": {"step": 1200, "totalSteps": 3000, "loss": 0.83,
                                 "etaSeconds": 2100}})
    row = render.list_cells(job_row(j, NOW))
    assert (row["QUEUE"], row["REASON"], row["ETA"]) == ("-", "-", "35m")
    assert row["GPUS"] == "8x4" and row["PRIORITY"] == "finetune-normal"
    assert row["PROGRESS"] == "1200/3000 (40%)"


def test_reason_per_phase() -> None:
    failed = job(status={"phase": "Failed", "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
         "message": "failed 4 time(s); last: OOMKilled"}]})
    assert reason_text(failed) == "BackoffLimitExceeded: failed 4 time(s); last: OOMKilled"
    susp = job(status={"phase": "Suspended", "conditions": [
        {"type": "Suspended", "status": "True", "reason": "Suspended",
         "message": "stopped with its checkpoint kept; clear spec.suspend to resume"}]})
    assert "clear spec.suspend" in reason_text(susp)
    assert reason_text(job()) == "not seen by the operator yet"
    assert phase_of(job()) == "Pending"
    assert reason_text(job(status={"phase": "Succeeded"})) == ""


def test_long_reason_is_cut_unless_wide() -> None:
    long = "needs 2 nvidia.com/gpu; " + "x" * 200
    j = job(status={"phase": "Queued", "queue": {"position": 1, "reason": long}})
    assert len(render.list_cells(job_row(j, NOW))["REASON"]) == render.REASON_WIDTH
    assert render.list_cells(job_row(j, NOW))["REASON"].endswith("...")
    assert render.list_cells(job_row(j, NOW), wide=True)["REASON"] == long


def test_list_table_columns_alignment_and_namespace_column() -> None:
    jobs = [job("b-job", status={"phase": "Running"}),
            job("a-job", namespace="team-b", status={"phase": "Queued",
                                                     "queue": {"position": 1, "reason": "r"}})]
    text = render.list_table(job_rows(jobs, NOW))
    lines = text.splitlines()
    assert lines[0].split() == list(render.LIST_COLUMNS)
    assert [ln.split()[0] for ln in lines[1:]] == ["b-job", "a-job"]  # by namespace, then name
    # every column starts at the same offset on every line
    col = lines[0].index("PHASE")
    assert all(ln[col:].split()[0] in ("PHASE", "Running", "Queued") for ln in lines)
    all_ns = render.list_table(job_rows(jobs, NOW), all_namespaces=True).splitlines()
    assert all_ns[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert all_ns[1].split()[:2] == ["team-a", "b-job"]


def test_describe_has_spec_counters_conditions_checkpoint_output_and_events() -> None:
    j = job(status={
        "phase": "Succeeded", "preemptions": 2, "failures": 1, "attempt": 4, "lostSteps": 7,
        "checkpoint": {"step": 300, "path": "checkpoints/checkpoint-300",
                       "savedAt": "2026-01-01T01:59:00Z", "saveSeconds": 1.5},
        "output": {"adapterPath": "output/adapter", "mergedPath": "",
                   "metrics": {"evalLoss": 0.91}},
        "startTime": "2026-01-01T00:00:10Z", "completionTime": "2026-01-01T01:59:30Z",
        "conditions": [{"type": "Complete", "status": "True", "reason": "Completed",
                        "message": "output in output/adapter",
                        "lastTransitionTime": "2026-01-01T01:59:30Z"}]},
        training={"maxSteps": 300}, lora={"rank": 8})
    events = [
        {"type": "Normal", "reason": "Completed", "message": "training finished",
         "lastTimestamp": "2026-01-01T01:59:30Z", "metadata": {"resourceVersion": "20"},
         "involvedObject": {"kind": "FineTuneJob", "name": "bot"}},
        {"type": "Normal", "reason": "Admitted", "message": "attempt 1 admitted",
         "lastTimestamp": "2026-01-01T00:00:05Z", "metadata": {"resourceVersion": "9"},
         "involvedObject": {"kind": "FineTuneJob", "name": "bot"}},
        {"type": "Normal", "reason": "Queued", "message": "accepted",
         "lastTimestamp": "2026-01-01T00:00:05Z", "metadata": {"resourceVersion": "8"},
         "involvedObject": {"kind": "FineTuneJob", "name": "bot"}},
    ]
    text = render.describe_text(describe(j, events, NOW))
    assert "Name:         bot" in text and "Namespace:    team-a" in text
    assert "tiny-llama from pvc models:tiny-llama" in text
    assert "lora (rank 8, alpha 32)" in text and "maxSteps 300" in text
    assert "preemptions 2, failures 1/3, attempt 4, lostSteps 7" in text
    assert "step 300 at checkpoints/checkpoint-300, saved 60s ago in 1.5s" in text
    assert "adapter output/adapter, merged -, evalLoss=0.91" in text
    assert "Complete   True     Completed   30s   output in output/adapter" in text
    # events in order (ties on the second broken by resourceVersion)
    assert text.index("accepted") < text.index("attempt 1 admitted") < \
        text.index("training finished")
    assert render.describe_text(describe(job(), [], NOW)).count("<none>") == 2
    obj = describe_object(j, events)
    assert [e["reason"] for e in obj["events"]] == ["Queued", "Admitted", "Completed"]


def test_top_rows_gpus_held_vs_quota_and_queue_order() -> None:
    jobs = [
        job("run", gpus=2, status={"phase": "Running"}),
        job("gang", gpus=2, nodes=2, status={"phase": "Admitted"}),
        job("q2", gpus=4, status={"phase": "Queued", "queue": {"position": 2}}),
        job("q1", gpus=1, status={"phase": "Queued", "queue": {"position": 1}}),
        job("done", gpus=8, status={"phase": "Succeeded"}),
        job("mig", gpus=1, status={"phase": "Running"},
            resources={"gpuResource": "nvidia.com/mig-1g.10gb"}),
        job("other", namespace="team-b", gpus=1, status={"phase": "Running"}),
    ]
    quotas = [{"metadata": {"namespace": "team-a"},
               "spec": {"hard": {"requests.nvidia.com/gpu": "8"}},
               "status": {"hard": {"requests.nvidia.com/gpu": "8", "pods": "10"},
                          "used": {"requests.nvidia.com/gpu": "7"}}},
              {"metadata": {"namespace": "idle"},
               "status": {"hard": {"requests.nvidia.com/gpu": "4"}, "used": {}}}]
    rows = top_rows(jobs, quotas, namespaces=["empty"])
    by = {(r["namespace"], r["gpuResource"]): r for r in rows}
    a = by[("team-a", "nvidia.com/gpu")]
    assert (a["allocated"], a["running"], a["quotaHard"], a["quotaUsed"], a["quotaFree"]) == \
        (6, 2, 8.0, 7.0, 1.0)
    assert (a["queued"], a["queuedGpus"]) == (2, 5)
    assert [q["name"] for q in a["queue"]] == ["q1", "q2"]
    assert by[("team-a", "nvidia.com/mig-1g.10gb")]["allocated"] == 1
    assert by[("team-b", "nvidia.com/gpu")]["quotaHard"] is None
    assert by[("idle", "nvidia.com/gpu")]["quotaFree"] == 4.0
    assert by[("empty", "nvidia.com/gpu")]["allocated"] == 0
    table = render.top_table(rows).splitlines()
    assert table[0].split()[:4] == ["NAMESPACE", "RESOURCE", "ALLOCATED", "QUOTA"]
    line = next(ln for ln in table if ln.startswith("team-a") and "nvidia.com/gpu " in ln)
    assert line.split() == ["team-a", "nvidia.com/gpu", "6", "8", "7", "1", "2", "2", "5", "q1"]
    assert "none" in next(ln for ln in table if ln.startswith("team-b"))
    assert "q1, q2" in render.top_table(rows, wide=True)


class TopApi:
    """What ``kubectl finetune top`` reads: jobs and ResourceQuotas, recorded per scope."""

    server = "https://test:6443"

    def __init__(self, jobs: list[dict[str, Any]], quotas: list[dict[str, Any]]) -> None:
        self.jobs, self.quotas = jobs, quotas
        self.calls: list[tuple[str, str | None]] = []

    def list_jobs(self, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append(("jobs", namespace))
        return self.jobs

    def list_quotas(self, namespace: str | None) -> list[dict[str, Any]]:
        self.calls.append(("quotas", namespace))
        return self.quotas


def test_top_shows_the_resource_a_quota_names_without_a_flag() -> None:
    api = TopApi([job("run", gpus=2, status={"phase": "Running"}),
                  job("q1", gpus=4, status={"phase": "Queued", "queue": {"position": 1}})],
                 [{"metadata": {"namespace": "team-a"},
                   "status": {"hard": {"requests.amd.com/gpu": "8"},
                              "used": {"requests.amd.com/gpu": "2"}}}])
    args = build_parser().parse_args(["top", "-n", "team-a"])
    assert args.gpu_resource is None  # nothing hard-coded: derived from what top reads
    out = io.StringIO()
    assert cmd_top(api, args, "team-a", out) == 0  # type: ignore[arg-type]
    assert api.calls == [("jobs", "team-a"), ("quotas", "team-a")]
    table = out.getvalue().splitlines()
    assert len(table) == 2, table  # the header and one row: no nvidia.com/gpu row
    assert table[1].split() == ["team-a", "amd.com/gpu", "2", "8", "2", "6", "1", "1", "4", "q1"]
    # a flag still wins: the jobs then count under it, beside the quota's own row
    flagged = io.StringIO()
    args = build_parser().parse_args(["top", "--gpu-resource", "nvidia.com/gpu"])
    assert cmd_top(api, args, "team-a", flagged) == 0  # type: ignore[arg-type]
    assert [ln.split()[1] for ln in flagged.getvalue().splitlines()[1:]] == \
        ["amd.com/gpu", "nvidia.com/gpu"]


def test_structured_output_parses() -> None:
    data = render.as_list([job()])
    assert json.loads(render.dump(data, "json"))["items"][0]["metadata"]["name"] == "bot"
    assert yaml.safe_load(render.dump(data, "yaml"))["kind"] == "List"


# ------------------------------------------------------------------ submit manifests


def opts(**kw: Any) -> SubmitOptions:
    base: dict[str, Any] = {"name": "bot", "model_hub": "Qwen/Qwen2.5-0.5B",
                            "dataset_configmap": "support-data:train.jsonl"}
    return SubmitOptions(**{**base, **kw})


def test_manifest_from_flags_is_a_valid_spec_with_only_given_fields() -> None:
    m = manifest_from_options(opts(
        namespace="team-a", gpus=2, nodes=2, priority="finetune-high", max_steps=500,
        lora_rank=8, node_selector=["pool=a100", "zone=x"], checkpoint_size="50Gi",
        checkpoint_interval=100, set=["training.warmupRatio=0.05", "dataset.cutoffLen=1024"]))
    assert m["apiVersion"] == "finetune.dev/v1alpha1" and m["kind"] == "FineTuneJob"
    assert m["metadata"] == {"name": "bot", "namespace": "team-a"}
    spec = m["spec"]
    FineTuneJobSpec.model_validate(spec)
    assert spec["model"] == {"name": "Qwen/Qwen2.5-0.5B",
                             "source": {"hub": {"repo": "Qwen/Qwen2.5-0.5B"}}}
    assert spec["dataset"]["source"] == {"configMap": {"name": "support-data",
                                                       "key": "train.jsonl"}}
    assert spec["resources"] == {"gpus": 2, "nodes": 2,
                                 "nodeSelector": {"pool": "a100", "zone": "x"}}
    assert spec["training"] == {"maxSteps": 500, "warmupRatio": 0.05}
    assert spec["dataset"]["cutoffLen"] == 1024
    assert spec["lora"] == {"rank": 8} and "method" not in spec
    assert spec["checkpoint"] == {"storage": {"size": "50Gi"}, "intervalSteps": 100}
    assert spec["priorityClassName"] == "finetune-high"


def test_manifest_sources_and_methods() -> None:
    m = manifest_from_options(opts(model_hub=None, model_pvc="models:qwen/7b",
                                   dataset_configmap=None, dataset_pvc="data:sets/a.jsonl",
                                   method="qlora", dataset_format="alpaca"))
    spec = m["spec"]
    assert spec["model"] == {"name": "7b", "source": {"pvc": {"claimName": "models",
                                                              "path": "qwen/7b"}}}
    assert spec["dataset"] == {"source": {"pvc": {"claimName": "data", "path": "sets/a.jsonl"}},
                               "format": "alpaca"}
    assert spec["quantization"] == {"bits": 4}
    hub = manifest_from_options(opts(model_hub="org/m@v2", dataset_configmap=None,
                                     dataset_hub="org/d@validation", method="full"))["spec"]
    assert hub["model"]["source"]["hub"] == {"repo": "org/m", "revision": "v2"}
    assert hub["dataset"]["source"]["hub"] == {"repo": "org/d", "split": "validation"}


@pytest.mark.parametrize(("kw", "expect"), [
    ({"name": None}, "submit needs --name"),
    ({"model_hub": None}, "exactly one model source: --model-pvc CLAIM:PATH or --model-hub"),
    ({"model_pvc": "a:b"}, "exactly one model source"),
    ({"dataset_pvc": "d:x"}, "exactly one dataset source"),
    ({"dataset_configmap": "nokey"}, "--dataset-configmap wants NAME:KEY, got 'nokey'"),
    ({"method": "full", "lora_rank": 8}, "--lora-rank/--lora-alpha do not apply to --method full"),
    ({"quantization_bits": 8}, "--quantization-bits only applies to --method qlora"),
    ({"gpus": -1}, "spec.resources.gpus: Input should be greater than or equal to 0 "
                   "(set with --gpus)"),
    ({"gpus": 0, "method": "qlora"}, "method qlora needs resources.gpus >= 1"),
    ({"checkpoint_size": "1Gi", "checkpoint_claim": "c"}, "set one of --checkpoint-size"),
    ({"cpu": "lots"}, "spec.resources.cpu: String should match pattern"),
    ({"set": ["training.warmupRatio"]}, "--set wants PATH=VALUE"),
    ({"set": ["training.nope=1"]}, "spec.training.nope: Extra inputs are not permitted"),
    ({"name": "Bad_Name"}, "name 'Bad_Name' is not valid"),
    ({"name": "x" * 64}, "at most 63"),
])
def test_manifest_errors_name_the_flag(kw: dict[str, Any], expect: str) -> None:
    with pytest.raises(CliError) as e:
        manifest_from_options(opts(**kw))
    assert expect in str(e.value)


def test_load_manifest_file() -> None:
    body = job_body("from-file", status={"phase": "Running"})
    m = load_manifest(yaml.safe_dump(body), "job.yaml")
    assert m["metadata"]["name"] == "from-file" and "status" not in m
    with pytest.raises(CliError, match="exactly one FineTuneJob"):
        load_manifest(yaml.safe_dump(body) + "---\n" + yaml.safe_dump(body), "two.yaml")
    with pytest.raises(CliError) as e:
        load_manifest("apiVersion: v1\nkind: Pod\n", "pod.yaml")
    assert "expected apiVersion finetune.dev/v1alpha1, kind FineTuneJob; got apiVersion 'v1', " \
        "kind 'Pod'" in str(e.value)
    bad = job_body("bad")
    bad["spec"]["method"] = "full"
    bad["spec"]["lora"] = {"rank": 4}
    with pytest.raises(CliError, match="spec: lora must not be set when method is full"):
        load_manifest(json.dumps(bad), "bad.json")
    with pytest.raises(CliError, match="not valid YAML"):
        load_manifest("a: [", "broken.yaml")


def test_submit_dry_run_prints_the_manifest_without_a_cluster(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    out, err = io.StringIO(), io.StringIO()
    rc = main(["submit", "--name", "bot", "-n", "team-a", "--model-hub", "org/m",
               "--dataset-configmap", "d:k", "--gpus", "1", "--dry-run", "-o", "json"], out, err)
    assert rc == 0, err.getvalue()
    m = json.loads(out.getvalue())
    assert m["metadata"] == {"name": "bot", "namespace": "team-a"}
    FineTuneJobSpec.model_validate(m["spec"])
    out, err = io.StringIO(), io.StringIO()
    rc = main(["submit", "--name", "bot", "--model-hub", "org/m", "--dry-run"], out, err)
    assert rc == 1 and "error: submit needs exactly one dataset source" in err.getvalue()


def test_submit_refuses_file_plus_spec_flags(tmp_path: Any) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(job_body("x")))
    out, err = io.StringIO(), io.StringIO()
    assert main(["submit", "-f", str(f), "--gpus", "2", "--dry-run"], out, err) == 1
    assert "use either -f FILE or the spec flags, not both (got --gpus)" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["submit", "-f", str(tmp_path / "nope.yaml"), "--dry-run"], out, err) == 1
    assert "cannot read" in err.getvalue() and "pass an existing file to -f" in err.getvalue()


def test_unreachable_cluster_says_what_to_check(tmp_path: Any) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u",
                                               "namespace": "team-z"}}]}))
    out, err = io.StringIO(), io.StringIO()
    assert main(["list", "--kubeconfig", str(kc)], out, err) == 1
    assert "cannot reach the API server at https://127.0.0.1:1" in err.getvalue()
    assert "check --kubeconfig / KUBECONFIG / --context" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert main(["list", "--kubeconfig", str(tmp_path / "none")], out, err) == 1
    assert "cannot load Kubernetes credentials" in err.getvalue()
    # the context's namespace is the default for --dry-run manifests
    out, err = io.StringIO(), io.StringIO()
    assert main(["submit", "--kubeconfig", str(kc), "--name", "x", "--model-hub", "m",
                 "--dataset-hub", "d", "--dry-run"], out, err) == 0
    assert yaml.safe_load(out.getvalue())["metadata"]["namespace"] == "team-z"


def test_options_after_or_before_the_subcommand() -> None:
    p = build_parser()
    a = p.parse_args(["-n", "x", "-o", "json", "list"])
    b = p.parse_args(["list", "-n", "x", "-o", "json"])
    assert (a.namespace, a.output) == (b.namespace, b.output) == ("x", "json")
    assert p.parse_args(["list"]).output == "table"
    s = p.parse_args(["submit", "--name", "n", "--gpus", "2", "--node-selector", "a=b"])
    o = submit_options(s, "ns")
    assert (o.name, o.gpus, o.node_selector, o.namespace) == ("n", 2, ["a=b"], "ns")


# ------------------------------------------------------------------ error messages


def test_api_errors_say_what_to_do() -> None:
    assert api_error_message(404, "not found", verb="get", namespace="y", name="x") == \
        "FineTuneJob x not found in namespace y; list them with kubectl finetune list -n y"
    assert "install the finetune-operator chart" in api_error_message(
        404, "the server could not find the requested resource", verb="list", namespace="y")
    forbidden = api_error_message(403, "forbidden", verb="list", namespace=None)
    assert "not allowed to list FineTuneJobs in all namespaces" in forbidden
    assert "-n NAMESPACE instead of -A" in forbidden


def test_forbidden_says_which_permission_or_policy_denied_what() -> None:
    rbac = api_error_message(
        403, 'pods "bot-a1-0" is forbidden: User "system:serviceaccount:team-a:alice" cannot get '
        'resource "pods/log" in API group "" in the namespace "team-a"',
        verb="read logs of", namespace="team-a", name="bot")
    assert rbac.startswith("system:serviceaccount:team-a:alice may not get pods/log in "
                           "namespace team-a; "), rbac
    assert "RoleBinding in namespace team-a" in rbac and "-finetune-operator-edit" in rbac
    crd = api_error_message(
        403, 'finetunesweeps.finetune.dev is forbidden: User "bob" cannot list resource '
        '"finetunesweeps" in API group "finetune.dev" in the namespace "team-b"',
        verb="list", namespace="team-b")
    assert crd.startswith("bob may not list finetunesweeps.finetune.dev in namespace team-b"), crd
    policy = api_error_message(
        403, 'finetunejobs.finetune.dev "x" is forbidden: ValidatingAdmissionPolicy '
        "'ft-finetune-operator-jobs' with binding 'ft-finetune-operator-jobs' denied request: "
        "priorityClassName finetune-high is not allowed in this namespace",
        verb="create", namespace="team-a", name="x")
    assert "admission policy ft-finetune-operator-jobs" in policy
    assert "denied create FineTuneJob x: priorityClassName finetune-high is not allowed" in policy
    assert "not a missing role" in policy and "RoleBinding" not in policy
    assert "pick another --name or delete it first (kubectl delete finetunejob x -n y)" in \
        api_error_message(409, "exists", verb="create", namespace="y", name="x")
    assert api_error_message(
        422, "spec.resources.gpus: Invalid value", verb="create", namespace="y", name="x") == \
        ("the API server rejected FineTuneJob x: spec.resources.gpus: Invalid value; fix the "
         "field it names")
    for nameless in (None, ""):  # never "FineTuneJob : ..."
        assert api_error_message(422, "metadata.name: Required value", verb="create",
                                 namespace="y", name=nameless) == (
            "the API server rejected the FineTuneJob: metadata.name: Required value; fix the "
            "field it names")


def test_logs_unavailable_message() -> None:
    pod = {"metadata": {"name": "bot-a2-0", "namespace": "team-a", "uid": "u1"},
           "spec": {"nodeName": "gpu-node-0"}, "status": {"phase": "Running"}}
    kwok = logs_unavailable(pod, "trainer", 404, "the server could not find it", None)
    assert "the cluster cannot serve the logs of pod team-a/bot-a2-0 (node gpu-node-0" in kwok
    assert "kubelet must be reachable" in kwok
    agent = logs_unavailable(pod, "trainer", 502, "dial tcp 127.0.0.1:10250: refused", "/agent")
    assert "is a local node agent whose log endpoint did not answer" in agent
    assert agent.endswith(": /agent/pods/team-a_bot-a2-0_u1/trainer.log")
    waiting = logs_unavailable(pod, "trainer", 400, 'container "trainer" is waiting to start: '
                               "ContainerCreating", None)
    assert "has not started its container yet" in waiting


# ---- sweep / compare (issue 13) ---------------------------------------------------------------

def _finished(name: str, metrics: dict[str, float], gpus: int = 2, preemptions: int = 0,
              **spec: Any) -> dict[str, Any]:
    return job_body(name=name, gpus=gpus, status={
        "phase": "Succeeded", "preemptions": preemptions,
        "startTime": "2026-01-01T10:00:00Z", "completionTime": "2026-01-01T11:30:00Z",
        "output": {"adapterPath": "output/adapter", "metrics": metrics}}, **spec)


def test_compare_ranks_by_the_metric_and_shows_the_differing_fields() -> None:
    jobs = [_finished("a", {"testLoss": 0.9, "testRougeL": 40.0}, training={"learningRate": 1e-4}),
            _finished("b", {"testLoss": 0.5, "testRougeL": 55.0}, training={"learningRate": 3e-4},
                      preemptions=2),
            job_body(name="c", gpus=2, status={"phase": "Running"},
                     training={"learningRate": 1e-3})]
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    assert compare.differing_fields(jobs) == ["training.learningRate"]
    assert compare.default_metric(jobs) == "testLoss"
    rows = compare.compare_rows(jobs, now, "testLoss")
    assert [(r["rank"], r["name"]) for r in rows] == [(1, "b"), (2, "a"), (None, "c")]
    assert rows[0]["parameters"] == {"training.learningRate": 3e-4}
    assert rows[0]["gpuHours"] == 3.0 and rows[0]["preemptions"] == 2  # 2 GPUs x 1.5 h
    assert rows[2]["gpuHours"] is None  # never started
    up = compare.compare_rows(jobs, now, "testRougeL")
    assert [r["name"] for r in up][:2] == ["b", "a"]  # scores: higher is better
    down = compare.compare_rows(jobs, now, "testRougeL", minimize=True)
    assert [r["name"] for r in down][:2] == ["a", "b"]
    table = render.compare_table(compare.compare_table(rows)).splitlines()
    assert table[0].split() == ["RANK", "NAME", "PHASE", "LEARNINGRATE", "TESTLOSS",
                                "TESTROUGEL", "GPU-HOURS", "PREEMPTIONS"]
    assert table[1].split() == ["1", "b", "Succeeded", "0.0003", "0.5", "55", "3.00", "2"]
    assert table[3].split()[:3] == ["-", "c", "Running"]


def test_trial_parameters_come_from_the_sweep_annotation() -> None:
    from finetune_api.labels import PARAMETERS_ANNOTATION

    trial = _finished("lr-t0", {"evalLoss": 1.0})
    trial["metadata"]["annotations"][PARAMETERS_ANNOTATION] = json.dumps({"lora.rank": 8})
    rows = compare.compare_rows([trial], dt.datetime(2026, 1, 2, tzinfo=dt.UTC), "evalLoss")
    assert rows[0]["parameters"] == {"lora.rank": 8} and rows[0]["rank"] == 1
    # "rank" would clash with the RANK column: the whole path names it
    assert render.compare_table(compare.compare_table(rows)).split()[:4] == [
        "RANK", "NAME", "PHASE", "LORA.RANK"]


def test_sweep_list_and_describe_text() -> None:
    sweep = {"metadata": {"name": "lr", "namespace": "team-a",
                          "creationTimestamp": "2026-01-01T10:00:00Z"},
             "spec": {"parameters": [{"path": "lora.rank", "values": [4, 8]}],
                      "maxParallel": 2, "objective": {"metric": "testLoss"},
                      "earlyStop": {"afterSteps": 10, "margin": 0.2}},
             "status": {"phase": "Running", "summary": "1/2", "activeTrials": 1,
                        "best": {"name": "lr-t0", "metric": "testLoss", "value": 0.5}}}
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    lines = render.sweep_list_table([sweeps.sweep_row(sweep, now)]).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "TRIALS", "ACTIVE", "METRIC", "BEST", "VALUE",
                                "AGE"]
    assert lines[1].split() == ["lr", "Running", "1/2", "1", "testLoss", "lr-t0", "0.5", "120m"]
    text = render.sweep_describe_text(sweeps.describe_sweep(sweep, []))
    assert "minimize testLoss" in text and "lora.rank" in text and "4, 8" in text
    assert "after 10 steps" in text and "lr-t0 testLoss=0.5" in text


def test_sweep_and_compare_arguments() -> None:
    args = build_parser().parse_args(["sweep", "compare", "lr", "-o", "yaml"])
    assert (args.command, args.sweep_command, args.name, args.output) == (
        "sweep", "compare", "lr", "yaml")
    args = build_parser().parse_args(["compare", "a", "b", "--metric", "testRougeL"])
    assert args.jobs == ["a", "b"] and args.metric == "testRougeL"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "a", "--metric", "accuracy"])
