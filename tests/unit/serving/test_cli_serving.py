"""kubectl finetune chat's pure parts: the service-proxy path and the SSE stream's text."""

from __future__ import annotations

import json

import pytest

from finetune_operator.cli.args import build_parser
from finetune_operator.cli.errors import CliError
from finetune_operator.cli.serving import proxy_path, sse_deltas

pytestmark = pytest.mark.unit


def _event(obj: object) -> bytes:
    return f"data: {json.dumps(obj)}\n".encode()


def test_proxy_path_names_scheme_service_and_port() -> None:
    assert proxy_path("team-a", "chat", 8000, "/v1/chat/completions") == (
        "/api/v1/namespaces/team-a/services/http:chat:8000/proxy/v1/chat/completions")


def test_sse_deltas_yield_the_text_until_done() -> None:
    lines = [b": keep-alive\n", _event({"choices": [{"delta": {"role": "assistant"}}]}),
             _event({"choices": [{"delta": {"content": "Mad"}}]}), b"\n",
             _event({"choices": [{"delta": {"content": "rid"}}]}), b"data: [DONE]\n",
             _event({"choices": [{"delta": {"content": "after"}}]})]
    assert list(sse_deltas(iter(lines))) == ["Mad", "rid"]


def test_an_error_event_is_said() -> None:
    with pytest.raises(CliError, match="adapter x is not loaded"):
        list(sse_deltas(iter([_event({"error": {"message": "adapter x is not loaded"}})])))


def test_serve_and_chat_parse() -> None:
    args = build_parser().parse_args(["serve", "a", "b", "--server", "chat", "--gpus", "0"])
    assert (args.command, args.jobs, args.server, args.gpus) == ("serve", ["a", "b"], "chat", 0)
    args = build_parser().parse_args(["chat", "chat", "--adapter", "a", "-m", "hi", "-m", "more"])
    assert (args.server, args.adapter, args.message) == ("chat", "a", ["hi", "more"])


def _server(phase: str | None, loaded: tuple[str, ...] | list[str] = (),
            rows: tuple[dict, ...] | list[dict] = (), reason: str = "") -> dict:
    return {"metadata": {"name": "chat"}, "spec": {"port": 8000},
            "status": {"phase": phase, "loadedAdapters": list(loaded), "adapters": list(rows),
                       "reason": reason}}


def test_readiness_ready_only_with_every_adapter_loaded() -> None:
    from finetune_operator.cli.serving import readiness

    assert readiness(_server("Ready", ["a", "b"]), ["a"]) == ("ready", "Ready, serving a, b")
    state, text = readiness(_server("Ready", ["b"], [
        {"name": "a", "state": "Waiting", "message": "waiting for FineTuneJob a to succeed"}]),
        ["a"])
    assert state == "waiting" and "a (waiting for FineTuneJob a to succeed)" in text
    assert readiness(_server(None), ["a"]) == ("waiting", "Queued")
    assert readiness(_server("Queued", reason="waiting for 1 GPU"), ["a"]) == (
        "waiting", "Queued: waiting for 1 GPU")


def test_readiness_failed_names_the_adapter_or_the_server() -> None:
    from finetune_operator.cli.serving import readiness

    state, text = readiness(_server("Ready", [], [
        {"name": "a", "state": "Failed", "message": "rank 64 > maxLoraRank 16"}]), ["a"])
    assert state == "failed" and text == "adapter a failed to load: rank 64 > maxLoraRank 16"
    assert readiness(_server("Failed", reason="the runtime exited 1"), ["a"]) == (
        "failed", "the server failed: the runtime exited 1")


class _Custom:
    def __init__(self, states: list[dict | None]) -> None:
        self.states, self.gets = states, 0

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str,
                                     name: str) -> dict:
        from kubernetes.client.exceptions import ApiException

        self.gets += 1
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state is None:
            raise ApiException(status=404, reason="Not Found")
        return state


class _Api:
    def __init__(self, states: list[dict | None], job_phase: str = "Running") -> None:
        self.custom, self.job_phase, self.job_gets = _Custom(states), job_phase, 0

    def get_job(self, namespace: str, name: str) -> dict:
        self.job_gets += 1
        return {"status": {"phase": self.job_phase}}


def _wait(api: _Api, timeout: float = 60) -> tuple[dict, str]:
    import io

    from finetune_operator.cli.serving import wait_ready

    t = [0.0]
    out = io.StringIO()

    def sleep(s: float) -> None:
        t[0] += s

    got = wait_ready(api, "team-a", "chat", ["a"], timeout, out,  # type: ignore[arg-type]
                     clock=lambda: t[0], sleep=sleep)
    return got, out.getvalue()


def test_wait_ready_says_each_state_once_and_returns_the_ready_server() -> None:
    waiting = _server("Ready", [], [{"name": "a", "state": "Waiting", "message": "job"}])
    api = _Api([_server(None), _server(None), _server("Starting"), waiting, waiting,
                _server("Ready", ["a"])])
    got, said = _wait(api)
    assert got["status"]["loadedAdapters"] == ["a"]
    assert said.splitlines() == ["modelserver/chat: Queued", "modelserver/chat: Starting",
                                 "modelserver/chat: Ready; not loaded yet: a (job)",
                                 "modelserver/chat: Ready, serving a"]
    assert api.custom.gets == 6 and api.job_gets == 5  # the job is looked at while waiting


def test_wait_ready_stops_on_a_failed_job_a_failed_server_or_the_timeout() -> None:
    with pytest.raises(CliError, match="FineTuneJob a failed, so it has no adapter"):
        _wait(_Api([_server("Ready")], job_phase="Failed"))
    with pytest.raises(CliError, match="the server failed: out of memory; kubectl describe"):
        _wait(_Api([_server("Failed", reason="out of memory")]))
    with pytest.raises(CliError, match=r"not ready after 10s \(Queued: no GPU\); wait longer"):
        _wait(_Api([_server("Queued", reason="no GPU")]), timeout=10)
    with pytest.raises(CliError, match="is gone"):
        _wait(_Api([None]))


def test_serve_message_implies_wait() -> None:
    args = build_parser().parse_args(["serve", "a", "-m", "hi", "--timeout", "60"])
    assert (args.message, args.wait, args.timeout, args.max_tokens) == (["hi"], False, 60, 128)
