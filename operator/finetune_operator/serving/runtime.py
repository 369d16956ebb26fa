"""The serving runtime's HTTP API as the controller uses it (``python -m finetune_server`` and
vLLM answer the same): ``GET /v1/models`` (the base model and the adapters it serves, each row
with a ``parent``), ``POST /v1/load_lora_adapter`` and ``POST /v1/unload_lora_adapter`` with
vLLM's request shape ``{"lora_name", "lora_path"}``. Plain HTTP to the pod's address; no API
server call."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Protocol

# the scheduling cycle makes these calls: a question is short; a load reads the adapter
PROBE_TIMEOUT_SECONDS = 3.0
LOAD_TIMEOUT_SECONDS = 60.0


class RuntimeError_(Exception):
    """The runtime did not answer, or refused (its message)."""


class RuntimePort(Protocol):
    def adapters(self, endpoint: str) -> frozenset[str]: ...
    def load(self, endpoint: str, name: str, path: str) -> None: ...
    def unload(self, endpoint: str, name: str) -> None: ...


def _message(e: Exception) -> str:
    if isinstance(e, urllib.error.HTTPError):
        try:
            body = e.read().decode(errors="replace")
            err = json.loads(body).get("error")
            text = err.get("message") if isinstance(err, dict) else body
        except (ValueError, AttributeError, OSError):
            text = str(e.reason)
        return f"HTTP {e.code}: {str(text)[:400]}"
    if isinstance(e, urllib.error.URLError):
        return f"not reachable: {e.reason}"
    return f"{type(e).__name__}: {e}"


class HttpRuntime:
    """``RuntimePort`` over HTTP (urllib; the operator image has no other client)."""

    def __init__(self, probe_timeout: float = PROBE_TIMEOUT_SECONDS,
                 load_timeout: float = LOAD_TIMEOUT_SECONDS) -> None:
        self.probe_timeout, self.load_timeout = probe_timeout, load_timeout

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> bytes:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.probe_timeout) as resp:
                out: bytes = resp.read()
                return out
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RuntimeError_(_message(e)) from e

    def adapters(self, endpoint: str) -> frozenset[str]:
        raw = self._call("GET", f"{endpoint}/v1/models")
        try:
            rows = json.loads(raw)["data"]
            return frozenset(str(r["id"]) for r in rows if r.get("parent"))
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError_(f"/v1/models answered no model list: {e}") from e

    def load(self, endpoint: str, name: str, path: str) -> None:
        self._call("POST", f"{endpoint}/v1/load_lora_adapter",
                   {"lora_name": name, "lora_path": path}, self.load_timeout)

    def unload(self, endpoint: str, name: str) -> None:
        self._call("POST", f"{endpoint}/v1/unload_lora_adapter", {"lora_name": name},
                   self.load_timeout)
