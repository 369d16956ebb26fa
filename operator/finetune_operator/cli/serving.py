"""``kubectl finetune serve`` and ``kubectl finetune chat``: serve what was trained.

``serve JOB...`` creates a ModelServer for the jobs' base model with one adapter per job (named
after the job), or adds the jobs' adapters to an existing server (``--server``); the operator
loads each once its job Succeeded, without a restart. ``serve JOB -m TEXT`` (or ``--wait``) also
waits until the server is Ready with those adapters loaded, saying each change of its state, and
then asks the first job's adapter: from a trained job to an answer in one command. ``chat SERVER``
talks to the server's
OpenAI API through the API server's service proxy, with the user's own credentials (so RBAC
decides who may: ``services/proxy`` in the namespace, which the built-in edit and admin roles
grant), streaming tokens as they come.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from kubernetes.client.exceptions import ApiException

from finetune_api import GROUP, VERSION
from finetune_api.server import MAX_SERVER_NAME, SERVER_KIND, SERVER_PLURAL
from finetune_operator.cli.client import PluginApi
from finetune_operator.cli.errors import CliError

API_VERSION = f"{GROUP}/{VERSION}"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("serve", parents=[common], help="serve jobs' adapters (a ModelServer)",
                       description="Create a ModelServer for the jobs' base model with one "
                       "adapter per job (named after the job), or add the jobs to an existing "
                       "one. Adapters are loaded as their jobs succeed (docs/serving.md).")
    s.add_argument("jobs", nargs="+", metavar="JOB")
    s.add_argument("--server", metavar="NAME",
                   help="the ModelServer to create or extend (default: <first job>-server)")
    s.add_argument("--runtime", choices=("vllm", "transformers"),
                   help="default: vllm with GPUs, transformers with --gpus 0")
    s.add_argument("--gpus", type=int, default=1, help="GPUs of the server (default 1)")
    s.add_argument("--priority", metavar="CLASS", help="priority band (default: the "
                   "operator's default)")
    s.add_argument("--port", type=int, help="the runtime's port (default 8000)")
    s.add_argument("--max-loras", type=int, help="adapters loaded at once (default 4)")
    s.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                   help="a node label the server's pod must match (repeatable)")
    s.add_argument("--wait", action="store_true",
                   help="wait until the server is Ready with these jobs' adapters loaded")
    s.add_argument("-m", "--message", action="append", default=[],
                   help="then ask the first job's adapter (implies --wait; repeatable: a "
                   "conversation)")
    s.add_argument("--timeout", type=int, default=900,
                   help="seconds to wait for the server (default 900)")
    s.add_argument("--max-tokens", type=int, default=128)
    c = sub.add_parser("chat", parents=[common], help="chat with a ModelServer (streaming)",
                       description="Send chat messages to a ModelServer through the API "
                       "server's service proxy and print the answer as it streams. Without "
                       "-m, reads one message per line from stdin.")
    c.add_argument("server")
    c.add_argument("--adapter", metavar="NAME",
                   help="the adapter to talk to (default: the base model)")
    c.add_argument("-m", "--message", action="append", default=[],
                   help="a user message (repeatable: a conversation); default: stdin lines")
    c.add_argument("--max-tokens", type=int, default=128)
    c.add_argument("--temperature", type=float, default=0.0)


def _api_error(e: ApiException, what: str) -> CliError:
    try:
        msg = json.loads(e.body or "{}").get("message") or e.reason
    except ValueError:
        msg = e.reason
    if e.status == 403:
        return CliError(f"{what}: forbidden: {msg}; ask for access in this namespace")
    return CliError(f"{what}: {msg}")


def get_server(api: PluginApi, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        res: Any = api.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                           SERVER_PLURAL, name)
        return dict(res)
    except ApiException as e:
        if e.status == 404:
            return None
        raise _api_error(e, f"reading ModelServer {namespace}/{name}") from e


def cmd_serve(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    jobs = []
    for name in args.jobs:
        try:
            jobs.append(api.get_job(namespace, name))
        except ApiException as e:
            if e.status == 404:
                raise CliError(f"FineTuneJob {namespace}/{name} not found; list them with "
                               "kubectl finetune list") from e
            raise _api_error(e, f"reading FineTuneJob {namespace}/{name}") from e
    models = {json.dumps(j["spec"]["model"], sort_keys=True) for j in jobs}
    if len(models) > 1:
        raise CliError("the jobs fine-tune different base models; one server serves one base "
                       "model: serve them with separate --server names")
    model = jobs[0]["spec"]["model"]
    server_name = args.server or f"{args.jobs[0]}-server"[:MAX_SERVER_NAME].rstrip("-")
    new = [{"name": j["metadata"]["name"], "job": j["metadata"]["name"]} for j in jobs]
    have = get_server(api, namespace, server_name)
    if have is not None:
        if json.dumps(have["spec"]["model"], sort_keys=True) != json.dumps(model, sort_keys=True):
            raise CliError(f"ModelServer {server_name} serves another base model "
                           f"({have['spec']['model'].get('name')}); pick another --server")
        adapters = list(have["spec"].get("adapters") or [])
        names = {a["name"] for a in adapters}
        added = [a for a in new if a["name"] not in names]
        if not added:
            out.write(f"modelserver/{server_name} already serves {', '.join(args.jobs)}\n")
            return 0
        spec: dict[str, Any] = {"adapters": adapters + added}
        limits = dict(have["spec"].get("limits") or {})
        if len(spec["adapters"]) > int(limits.get("maxLoras", 4)):
            spec["limits"] = {**limits, "maxLoras": len(spec["adapters"])}
        try:
            api.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, SERVER_PLURAL,
                                                      server_name, {"spec": spec})
        except ApiException as e:
            raise _api_error(e, f"updating ModelServer {namespace}/{server_name}") from e
        out.write(f"modelserver/{server_name} extended: + {', '.join(a['name'] for a in added)}"
                  "\n")
    else:
        gpus = args.gpus
        body: dict[str, Any] = {
            "apiVersion": API_VERSION, "kind": SERVER_KIND,
            "metadata": {"name": server_name, "namespace": namespace},
            "spec": {"model": model, "adapters": new,
                     "runtime": args.runtime or ("vllm" if gpus > 0 else "transformers"),
                     "resources": {"gpus": gpus},
                     "limits": {"maxLoras": max(args.max_loras or 4, len(new))}}}
        if args.priority:
            body["spec"]["priorityClassName"] = args.priority
        if args.port:
            body["spec"]["port"] = args.port
        for item in args.node_selector:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"--node-selector wants KEY=VALUE, got {item!r}")
            body["spec"]["resources"].setdefault("nodeSelector", {})[key] = value
        try:
            api.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, SERVER_PLURAL,
                                                       body)
        except ApiException as e:
            raise _api_error(e, f"creating ModelServer {namespace}/{server_name}") from e
        out.write(f"modelserver/{server_name} created\n")
    if not (args.wait or args.message):
        out.write(f"adapters load as their jobs succeed; then: kubectl finetune chat "
                  f"{server_name} --adapter {args.jobs[0]} -n {namespace}\n")
        return 0
    server = wait_ready(api, namespace, server_name, args.jobs, args.timeout, out)
    if args.message:
        chat(api, namespace, server, args.jobs[0], args.message, args.max_tokens, 0.0, out)
    return 0


def readiness(server: dict[str, Any], adapters: list[str]) -> tuple[str, str]:
    """(state, what to say) of a ModelServer object for a caller waiting on ``adapters``
    (pure): ``ready`` (Ready, every one loaded), ``failed`` (the server or one of them failed:
    waiting longer would not help) or ``waiting``."""
    st = server.get("status") or {}
    phase = st.get("phase") or "Queued"
    rows = {a.get("name"): a for a in st.get("adapters") or [] if isinstance(a, dict)}
    for name in adapters:
        row = rows.get(name) or {}
        if row.get("state") == "Failed":
            why = row.get("message") or "no reason given"
            return "failed", f"adapter {name} failed to load: {why}"
    if phase == "Failed":
        return "failed", f"the server failed: {st.get('reason') or 'no reason given'}"
    loaded = set(st.get("loadedAdapters") or [])
    missing = [n for n in adapters if n not in loaded]
    if phase == "Ready" and not missing:
        return "ready", f"Ready, serving {', '.join(sorted(loaded))}"
    why = st.get("reason") or ""
    if phase == "Ready":
        waits = [f"{n} ({(rows.get(n) or {}).get('message') or 'waiting for its job'})"
                 for n in missing]
        return "waiting", f"Ready; not loaded yet: {', '.join(waits)}"
    return "waiting", f"{phase}{': ' + why if why else ''}"


def wait_ready(api: PluginApi, namespace: str, name: str, adapters: list[str], timeout: float,
               out: IO[str], clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the ModelServer (a GET every 2 s, the caller's credentials; while it waits, also
    the jobs ``adapters`` come from) until ``readiness`` says ready; each new state is written
    once. Raises CliError when it or a job failed, or time ran out."""
    deadline, said = clock() + timeout, ""
    while True:
        server = get_server(api, namespace, name)
        if server is None:
            raise CliError(f"ModelServer {namespace}/{name} is gone (deleted while waiting)")
        state, text = readiness(server, adapters)
        if state == "waiting":  # an adapter whose job failed will never load
            for job in adapters:
                try:
                    phase = (api.get_job(namespace, job).get("status") or {}).get("phase")
                except ApiException as e:
                    raise _api_error(e, f"reading FineTuneJob {namespace}/{job}") from e
                if phase == "Failed":
                    raise CliError(f"FineTuneJob {job} failed, so it has no adapter to serve; "
                                   f"kubectl finetune describe {job} -n {namespace} says why")
        if text != said:
            out.write(f"modelserver/{name}: {text}\n")
            out.flush()
            said = text
        if state == "ready":
            return server
        if state == "failed":
            raise CliError(f"modelserver/{name}: {text}; kubectl describe modelserver {name} "
                           f"-n {namespace} has the details")
        if clock() >= deadline:
            raise CliError(f"modelserver/{name} is not ready after {timeout:g}s ({text}); "
                           f"wait longer with --timeout, or look at kubectl describe "
                           f"modelserver {name} -n {namespace}")
        sleep(2.0)


def proxy_path(namespace: str, server: str, port: int, route: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/http:{server}:{port}/proxy{route}"


def sse_deltas(lines: Iterator[bytes]) -> Iterator[str]:
    """The text of each chat completion chunk of a server-sent event stream (pure)."""
    for raw in lines:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            raise CliError(f"the server answered an error: {chunk['error'].get('message')}")
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                yield str(text)


def stream_chat(api: PluginApi, namespace: str, server: str, port: int,
                body: dict[str, Any]) -> Iterator[str]:
    """POST /v1/chat/completions (stream) through the service proxy; yields text deltas."""
    path = proxy_path(namespace, server, port, "/v1/chat/completions")
    method, url, headers, _, _ = api.api.param_serialize(
        "POST", path, header_params={"Content-Type": "application/json",
                                     "Accept": "text/event-stream"},
        auth_settings=["BearerToken"])
    resp = api.api.rest_client.pool_manager.request(
        method, url, body=json.dumps(body).encode(), headers=headers, preload_content=False,
        timeout=300)
    try:
        if resp.status >= 400:
            text = resp.read().decode(errors="replace")
            try:
                msg = json.loads(text).get("error", {}).get("message") or \
                    json.loads(text).get("message") or text
            except (ValueError, AttributeError):
                msg = text
            if resp.status == 403:
                raise CliError(f"chat {namespace}/{server}: forbidden: {str(msg)[:300]}; "
                               "services/proxy in this namespace is needed (the edit role "
                               "has it)")
            raise CliError(f"chat {namespace}/{server}: HTTP {resp.status}: {str(msg)[:300]}")
        yield from sse_deltas(iter(resp))
    finally:
        resp.release_conn()


def cmd_chat(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str],
             stdin: IO[str] | None = None) -> int:
    server = get_server(api, namespace, args.server)
    if server is None:
        raise CliError(f"ModelServer {namespace}/{args.server} not found; create one with "
                       "kubectl finetune serve JOB")
    st = server.get("status") or {}
    if st.get("phase") != "Ready":
        raise CliError(f"ModelServer {args.server} is {st.get('phase') or 'Queued'}: "
                       f"{st.get('reason') or 'not ready yet'}; try again when it is Ready")
    model = args.adapter or server["spec"]["model"]["name"]
    if args.adapter and args.adapter not in (st.get("loadedAdapters") or []):
        rows = {a.get("name"): a for a in st.get("adapters") or []}
        why = (rows.get(args.adapter) or {}).get("message") or "not in spec.adapters"
        raise CliError(f"adapter {args.adapter} is not loaded on {args.server}: {why}")
    prompts = iter(args.message) if args.message else (
        line.rstrip("\n") for line in (stdin or sys.stdin))
    chat(api, namespace, server, model, prompts, args.max_tokens, args.temperature, out)
    return 0


def chat(api: PluginApi, namespace: str, server: dict[str, Any], model: str,
         prompts: Iterator[str] | list[str], max_tokens: int, temperature: float,
         out: IO[str]) -> None:
    """One conversation: each prompt in turn, the answer streamed to ``out`` as it comes."""
    name = server["metadata"]["name"]
    port = int(server["spec"].get("port") or 8000)
    messages: list[dict[str, str]] = []
    for prompt in prompts:
        if not prompt:
            continue
        messages.append({"role": "user", "content": prompt})
        body = {"model": model, "messages": messages, "stream": True,
                "max_tokens": max_tokens, "temperature": temperature}
        answer = []
        for text in stream_chat(api, namespace, name, port, body):
            answer.append(text)
            out.write(text)
            out.flush()
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(answer)})
