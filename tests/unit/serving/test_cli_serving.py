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
