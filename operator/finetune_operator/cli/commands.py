"""The subcommands: API calls through cli/client.py's PluginApi; what they show is built by the
view layer (finetune_operator.view) and printed by cli/render.py."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from kubernetes.client.exceptions import ApiException

from finetune_api.labels import AGENT_LABEL, AGENT_ROOT_ANNOTATION, ATTEMPT_LABEL, RANK_LABEL
from finetune_operator.cli import render
from finetune_operator.cli.args import submit_options
from finetune_operator.cli.client import PluginApi
from finetune_operator.cli.errors import CliError, api_error_message
from finetune_operator.cli.manifest import load_manifest, manifest_from_options
from finetune_operator.jobs.build.names import job_selector, selector_string
from finetune_operator.view.describe import describe, describe_object
from finetune_operator.view.jobs import job_rows, phase_of, reason_text
from finetune_operator.view.top import top_rows


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextmanager
def api_errors(api: PluginApi, verb: str, namespace: str | None,
               name: str | None = None) -> Iterator[None]:
    """ApiException -> CliError with a message that says what to do."""
    try:
        yield
    except ApiException as e:
        raise CliError(api_error_message(e.status or 0, _detail(e), verb=verb,
                                         namespace=namespace, name=name,
                                         server=api.server)) from e


def _detail(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason or "")
    except (ValueError, AttributeError):
        return str(e.body or e.reason or "")


def _structured(obj: Any, output: str, out: IO[str]) -> bool:
    if output in ("json", "yaml"):
        out.write(render.dump(obj, output))
        return True
    return False


def get_job(api: PluginApi, namespace: str, name: str) -> dict:
    with api_errors(api, "get", namespace, name):
        return api.get_job(namespace, name)


# ------------------------------------------------------------------ submit


def cmd_submit(api: PluginApi | None, args: argparse.Namespace, namespace: str | None,
               out: IO[str]) -> int:
    opts = submit_options(args, namespace)
    if args.filename:
        mixed = opts.spec_flags_given()
        if mixed:
            raise CliError(f"use either -f FILE or the spec flags, not both (got {', '.join(mixed)}"
                           "); put those fields into the file")
        text = sys.stdin.read() if args.filename == "-" else _read(args.filename)
        manifest = load_manifest(text, "stdin" if args.filename == "-" else args.filename)
        meta = manifest.setdefault("metadata", {})
        if args.name:
            meta["name"] = args.name
        file_ns = meta.get("namespace")
        if file_ns and namespace and file_ns != namespace and args.namespace:
            raise CliError(f"the manifest says namespace {file_ns} but -n says {namespace}; "
                           "drop one of them")
        if namespace and not file_ns:
            meta["namespace"] = namespace
    else:
        manifest = manifest_from_options(opts)
    ns = manifest["metadata"].get("namespace") or namespace
    name = manifest["metadata"]["name"]
    if args.dry_run == "client" or api is None:
        out.write(render.dump(manifest, "json" if args.output == "json" else "yaml"))
        return 0
    if ns is None:
        raise CliError("no namespace: pass -n NAMESPACE")
    with api_errors(api, "create", ns, name):
        created = api.create_job(ns, manifest, dry_run=args.dry_run == "server")
    if args.dry_run == "server":
        out.write(render.dump(created, "json" if args.output == "json" else "yaml"))
        return 0
    if not _structured(created, args.output, out):
        out.write(f"finetunejob.finetune.dev/{name} created in namespace {ns}; follow it with "
                  f"kubectl finetune list -n {ns} (or describe {name} -n {ns})\n")
    return 0


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}; pass an existing file to -f") from e


# ------------------------------------------------------------------ list / describe / top


def cmd_list(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    scope = None if args.all_namespaces else namespace
    with api_errors(api, "list", scope):
        jobs = api.list_jobs(scope)
    if getattr(args, "queue", False) and jobs:
        _exact_positions(api, args, jobs, scope, out)
    if _structured(render.as_list(jobs), args.output, out):
        return 0
    if not jobs:
        where = "any namespace" if scope is None else f"namespace {scope}"
        out.write(f"No FineTuneJobs in {where}; create one with kubectl finetune submit "
                  "(see kubectl finetune submit --help)\n")
        return 0
    out.write(render.list_table(job_rows(jobs, _now()), all_namespaces=scope is None,
                                wide=args.output == "wide"))
    return 0


def _exact_positions(api: PluginApi, args: argparse.Namespace, jobs: list[dict],
                     scope: str | None, out: IO[str]) -> None:
    """Replace the status's queue place (exact up to 10, then "11+") with the operator's exact
    one (per namespace; cluster-wide with -A, which needs list on FineTuneJobs in every
    namespace)."""
    try:
        entries = api.queue(jobs, scope, operator_namespace=args.operator_namespace,
                            operator_service=args.operator_service)
    except (OSError, ValueError, KeyError, ApiException) as e:
        out.write(f"note: exact queue positions unavailable ({e}); showing the ones from "
                  "the status (exact up to 10)\n")
        return
    where = {(x.get("namespace", scope), x["name"]): x for x in entries}
    for j in jobs:
        hit = where.get((j["metadata"]["namespace"], j["metadata"]["name"]))
        if hit is not None:
            q = j.setdefault("status", {}).setdefault("queue", {})
            q["position"] = hit["clusterPosition"] if scope is None else hit["position"]
            q.pop("positionAtLeast", None)
            q["reason"] = hit.get("reason", q.get("reason", ""))


def job_events(api: PluginApi, job: dict, namespace: str) -> list[dict]:
    """Events of the job and of the pods of its current attempt."""
    name = job["metadata"]["name"]
    uid = job["metadata"].get("uid")
    with api_errors(api, "list events of", namespace, name):
        events = [e for e in api.list_events(namespace, "FineTuneJob", name)
                  if not uid or (e.get("involvedObject") or {}).get("uid") in (None, uid)]
        attempt = (job.get("status") or {}).get("attempt") or 0
        if attempt:
            sel = selector_string({**job_selector(name), ATTEMPT_LABEL: str(attempt)})
            for pod in api.list_pods(namespace, sel):
                events += api.list_events(namespace, "Pod", pod["metadata"]["name"])
    return events


def cmd_describe(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    job = get_job(api, namespace, args.name)
    events = job_events(api, job, namespace)
    if not _structured(describe_object(job, events), args.output, out):
        out.write(render.describe_text(describe(job, events, _now(), max_events=args.events)))
    return 0


def cmd_top(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    scope = None if args.all_namespaces else namespace
    with api_errors(api, "list", scope):
        jobs = api.list_jobs(scope)
    try:
        quotas = api.list_quotas(scope)
    except ApiException as e:
        where = "all namespaces" if scope is None else scope
        raise CliError(f"cannot read ResourceQuotas ({where}): HTTP {e.status}: {_detail(e)}; "
                       "ask for read access to resourcequotas (the view role has it)") from e
    rows = top_rows(jobs, quotas, args.gpu_resource, [] if scope is None else [scope])
    if not _structured(rows, args.output, out):
        out.write(render.top_table(rows, wide=args.output == "wide"))
    return 0


# ------------------------------------------------------------------ suspend / resume


def cmd_suspend(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str],
                suspend: bool = True) -> int:
    job = get_job(api, namespace, args.name)
    phase = phase_of(job)
    verb = "suspend" if suspend else "resume"
    if phase in ("Succeeded", "Failed"):
        raise CliError(f"FineTuneJob {args.name} already {phase}; there is nothing to {verb}"
                       + ("" if phase == "Succeeded" else
                          " (submit it again under a new name to retry)"))
    already = bool((job.get("spec") or {}).get("suspend")) == suspend
    if not already:
        with api_errors(api, "patch", namespace, args.name):
            job = api.patch_job_spec(namespace, args.name, {"suspend": suspend})
    if _structured(job, args.output, out):
        return 0
    ref = f"finetunejob.finetune.dev/{args.name}"
    if already:
        out.write(f"{ref} is already {'suspended' if suspend else 'not suspended'} "
                  f"(phase {phase}); nothing changed\n")
    elif suspend:
        out.write(f"{ref} suspended: the trainer saves a checkpoint and stops, the job keeps its "
                  f"place; resume it with kubectl finetune resume {args.name} -n {namespace}\n")
    else:
        out.write(f"{ref} resumed: back in the queue, it continues from its newest checkpoint; "
                  f"watch it with kubectl finetune list -n {namespace}\n")
    return 0


# ------------------------------------------------------------------ logs


def cmd_logs(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    job = get_job(api, namespace, args.name)
    st = job.get("status") or {}
    attempt = args.attempt or st.get("attempt") or 0
    if not attempt:
        raise CliError(f"FineTuneJob {args.name} has no pod yet (phase {phase_of(job)}: "
                       f"{reason_text(job) or 'waiting'}); see kubectl finetune describe "
                       f"{args.name} -n {namespace}")
    sel = selector_string({**job_selector(args.name), ATTEMPT_LABEL: str(attempt),
                           RANK_LABEL: str(args.rank)})
    with api_errors(api, "list pods of", namespace, args.name):
        pods = api.list_pods(namespace, sel)
    if not pods:
        raise CliError(f"the pod of attempt {attempt}, rank {args.rank} of FineTuneJob "
                       f"{args.name} does not exist (any more) in namespace {namespace} (phase "
                       f"{phase_of(job)}); the operator deletes pods when an attempt ends. "
                       f"See kubectl finetune describe {args.name} -n {namespace}")
    pod = pods[0]
    pod_name = pod["metadata"]["name"]
    try:
        resp = api.pod_log(namespace, pod_name, args.container, args.tail, args.follow)
    except ApiException as e:
        raise CliError(logs_unavailable(pod, args.container, e.status or 0, _detail(e),
                                        _agent_root(api, pod))) from e
    try:
        if args.output in ("json", "yaml"):
            text = b"".join(resp.stream(4096)).decode(errors="replace")
            out.write(render.dump({"pod": pod_name, "namespace": namespace, "attempt": attempt,
                                "container": args.container, "log": text}, args.output))
        else:
            for chunk in resp.stream(4096):
                out.write(chunk.decode(errors="replace"))
                out.flush()
    finally:
        resp.release_conn()
    return 0


def _agent_root(api: PluginApi, pod: dict) -> str | None:
    """The local node agent's root directory when the pod's node is one (the agent annotates
    its Node with it), "" for an agent node without the annotation, None for any other node."""
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        return None
    node = api.get_node(node_name)
    meta = (node or {}).get("metadata") or {}
    if (meta.get("labels") or {}).get(AGENT_LABEL) != "true":
        return None
    return str((meta.get("annotations") or {}).get(AGENT_ROOT_ANNOTATION) or "")


def logs_unavailable(pod: dict, container: str, status: int, detail: str,
                     agent_root: str | None) -> str:
    """Pure: the message when the API server could not serve a pod's log (``agent_root``: see
    `_agent_root`)."""
    meta = pod["metadata"]
    node = (pod.get("spec") or {}).get("nodeName") or "(not scheduled)"
    phase = (pod.get("status") or {}).get("phase", "Unknown")
    what = f"pod {meta.get('namespace')}/{meta['name']} (node {node}, phase {phase})"
    if status == 400 and ("waiting to start" in detail or "ContainerCreating" in detail):
        return f"{what} has not started its container yet: {detail}; try again in a moment"
    msg = f"the cluster cannot serve the logs of {what}: HTTP {status}: {detail}"
    if agent_root is not None:
        # the agent's layout (docs/node-agent.md): <root>/pods/<ns>_<pod>_<uid>/<container>.log
        path = (f"{agent_root or '<agent root>'}/pods/{meta.get('namespace')}_{meta['name']}_"
                f"{meta.get('uid', '')}/{container}.log")
        return (msg + f"; node {node} is a local node agent whose log endpoint did not "
                f"answer (an agent older than its log endpoint, or stopped): read the "
                f"container's log file on the agent's machine: {path}")
    return msg + ("; the node's kubelet must be reachable from the API server for logs "
                  "(fake kwok nodes have no logs)")
