"""The CPU runtime's HTTP side: vLLM's OpenAI-compatible endpoints on the standard library's
threading HTTP server, over :class:`finetune_server.engine.Engine`.

Endpoints and shapes follow vLLM's server (so a client, and the operator, speak one protocol to
both runtimes): ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions`` (``stream``: server-sent events ending in ``data: [DONE]``;
``stream_options.include_usage``; ``return_token_ids``: the generated ids in each choice, as
vLLM's extra parameter), ``POST /v1/load_lora_adapter`` (``{"lora_name", "lora_path"}``) and
``POST /v1/unload_lora_adapter`` (``{"lora_name"}``). Errors are ``{"error": {"message",
"type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .engine import Engine, Finish, Sampling, ServingError

log = logging.getLogger("finetune_server")
MAX_BODY = 16 << 20


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ServingError(400, f"{key} must be a number in [{lo}, {hi}], got {value!r}")
    return float(value)


def sampling_of(body: dict[str, Any]) -> Sampling:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool)
                                   or not isinstance(max_tokens, int) or max_tokens < 1):
        raise ServingError(400, f"max_tokens must be a positive integer, got {max_tokens!r}")
    if body.get("n", 1) != 1:
        raise ServingError(400, "n must be 1 on the transformers runtime (one choice per "
                                "request)")
    if body.get("stop"):
        raise ServingError(400, "stop is not supported by the transformers runtime; generation "
                                "ends at the end-of-sequence token or max_tokens")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ServingError(400, f"seed must be an integer, got {seed!r}")
    return Sampling(max_tokens=max_tokens,
                    temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                    top_p=_number(body, "top_p", 1.0, 0.0, 1.0), seed=seed)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ServingError(400, "messages must be a non-empty list of {role, content}")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ServingError(400, f"each message needs a role and a content, got {m!r}")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, dict) and p.get("type") == "text")
        out.append({"role": m["role"], "content": content or ""})
    return out


class Streamed:
    """Incremental detokenization: the text of the ids so far, minus what was sent; an
    incomplete UTF-8 sequence at the end waits for its next token."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ids: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.engine.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def rest(self) -> str:
        text = self.engine.decode(self.ids)
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return delta


def _usage(f: Finish) -> dict[str, int]:
    return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens}


class Api:
    """The requests, independent of the HTTP plumbing: each returns a JSON body, or an iterator
    of server-sent event payloads for a streaming request."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        e = self.engine
        rows = [{"id": e.served_model_name, "object": "model", "created": self.created,
                 "owned_by": "finetune-operator", "root": e.model_path, "parent": None,
                 "max_model_len": e.max_model_len}]
        rows += [{"id": name, "object": "model", "created": self.created,
                  "owned_by": "finetune-operator", "root": path,
                  "parent": e.served_model_name, "max_model_len": e.max_model_len}
                 for name, path in list(e.adapters.items())]
        return {"object": "list", "data": rows}

    def load(self, body: dict[str, Any]) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not isinstance(path, str) or not name or not path:
            raise ServingError(400, "load_lora_adapter needs lora_name and lora_path (strings)")
        self.engine.load_adapter(name, path)
        log.info("loaded adapter %s from %s", name, path)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        if not isinstance(name, str) or not name:
            raise ServingError(400, "unload_lora_adapter needs lora_name (a string)")
        self.engine.unload_adapter(name)
        log.info("unloaded adapter %s", name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def complete(self, body: dict[str, Any], chat: bool) -> dict[str, Any] | Iterator[str]:
        model = body.get("model")
        if not isinstance(model, str):
            raise ServingError(400, "model is required: the base model's name or an adapter's")
        self.engine.check_model(model)
        if chat:
            prompt = self.engine.chat_prompt(_messages(body))
        else:
            text = body.get("prompt")
            if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
                text = text[0]
            if isinstance(text, list) and text and all(isinstance(t, int) for t in text):
                prompt = list(text)
            elif isinstance(text, str):
                prompt = self.engine.text_prompt(text)
            else:
                raise ServingError(400, "prompt must be a string, a list of one string, or a "
                                        "list of token ids")
        sampling = sampling_of(body)
        self.engine.budget(len(prompt), sampling.max_tokens)  # refuse before streaming starts
        tokens = self.engine.generate(model, prompt, sampling)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model}
        want_ids = bool(body.get("return_token_ids"))
        if body.get("stream"):
            opts = body.get("stream_options") or {}
            return self._stream(tokens, head, chat, want_ids, bool(opts.get("include_usage")))
        ids: list[int] = []
        finish: Finish | None = None
        for item in tokens:
            if isinstance(item, Finish):
                finish = item
            else:
                ids.append(item)
        assert finish is not None
        text = self.engine.decode(ids)
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": finish.reason}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if want_ids:
            choice["token_ids"] = ids
        out: dict[str, Any] = {**head, "choices": [choice], "usage": _usage(finish)}
        if want_ids:
            out["prompt_token_ids"] = prompt
        return out

    def _stream(self, tokens: Iterator[int | Finish], head: dict[str, Any], chat: bool,
                want_ids: bool, usage: bool) -> Iterator[str]:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        text = Streamed(self.engine)

        def chunk(delta: str, ids: list[int], finish: str | None,
                  role: bool = False) -> str:
            c: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
            if chat:
                c["delta"] = {"role": "assistant", "content": delta} if role else (
                    {"content": delta} if delta or finish is None else {})
            else:
                c["text"] = delta
            if want_ids:
                c["token_ids"] = ids
            body = {**head, "choices": [c]}
            if usage:
                body["usage"] = None
            return json.dumps(body)

        try:
            if chat:
                yield chunk("", [], None, role=True)
            for item in tokens:
                if isinstance(item, Finish):
                    yield chunk(text.rest(), [], item.reason)
                    if usage:
                        yield json.dumps({**head, "choices": [], "usage": _usage(item)})
                    break
                delta = text.add(item)
                yield chunk(delta, [item], None)
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "finetune-server"
    api: Api  # set on the subclass made by serve()

    def setup(self) -> None:
        super().setup()
        # a streamed token is a small write: without this, Nagle's algorithm holds each one
        # until the client's (delayed) acknowledgement of the previous, tens of milliseconds
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _error(self, e: ServingError) -> None:
        self._json(e.status, error_body(e.status, str(e), e.kind))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send(200, b"", "text/plain")
        elif path == "/v1/models":
            self._json(200, self.api.models())
        else:
            self._error(ServingError(404, f"no route GET {path}", "NotFoundError"))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            body = self._body()
            if path == "/v1/chat/completions":
                self._reply(self.api.complete(body, chat=True))
            elif path == "/v1/completions":
                self._reply(self.api.complete(body, chat=False))
            elif path == "/v1/load_lora_adapter":
                self._send(200, self.api.load(body).encode(), "text/plain; charset=utf-8")
            elif path == "/v1/unload_lora_adapter":
                self._send(200, self.api.unload(body).encode(), "text/plain; charset=utf-8")
            else:
                raise ServingError(404, f"no route POST {path}", "NotFoundError")
        except ServingError as e:
            self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug of ours: answer 500 with the cause, keep serving
            log.exception("%s failed", path)
            self._error(ServingError(500, f"{type(e).__name__}: {e}", "InternalServerError"))

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ServingError(413, f"request body of {length} bytes exceeds {MAX_BODY}")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError as e:
            raise ServingError(400, f"the request body is not JSON: {e}") from e
        if not isinstance(body, dict):
            raise ServingError(400, "the request body must be a JSON object")
        return body

    def _reply(self, out: dict[str, Any] | Iterator[str]) -> None:
        if isinstance(out, dict):
            self._json(200, out)
            return
        # server-sent events, chunked: a chunk per event, flushed as each token arrives
        try:
            first = next(out)
        except ServingError:
            raise
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._chunk(f"data: {first}\n\n")
            for event in out:
                self._chunk(f"data: {event}\n\n")
        except ServingError as e:  # after the headers: an error event, as vLLM sends
            self._chunk(f"data: {json.dumps(error_body(e.status, str(e), e.kind))}\n\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        finally:
            close = getattr(out, "close", None)
            if close is not None:
                close()
        self._chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def serve(engine: Engine, host: str, port: int) -> ThreadingHTTPServer:
    """A bound server (not yet serving: call ``serve_forever``)."""
    handler = type("BoundHandler", (Handler,), {"api": Api(engine)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
