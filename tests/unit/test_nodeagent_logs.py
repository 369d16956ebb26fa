"""The node agent's kubelet log endpoint (dev/finetune_dev/nodeagent/logserver.py): the request
parsing, and the server itself over HTTPS on loopback reading real files (no cluster: the
API server's hop is tests/cluster/test_cli.py)."""

from __future__ import annotations

import os
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_dev.nodeagent.logserver import BadRequest, LogRequest, LogServer, parse, tail
from finetune_dev.nodeagent.paths import log_path
from finetune_operator.http import tls


def test_parse_reads_the_kubelet_path_and_its_options() -> None:
    assert parse("/containerLogs/ns/pod-a1-0/trainer?follow=true&tailLines=5&limitBytes=9") == \
        LogRequest("ns", "pod-a1-0", "trainer", follow=True, tail_lines=5, limit_bytes=9)
    assert parse("/containerLogs/ns/p/c?previous=false&timestamps=false") == \
        LogRequest("ns", "p", "c")
    assert parse("/containerLogs/ns/p/c?tailLines=99999999999").tail_lines == 1_000_000


@pytest.mark.parametrize(("path", "says"), [
    ("/containerLogs/ns/p/c?previous=true", "does not serve previous"),
    ("/containerLogs/ns/p/c?sinceSeconds=10", "does not serve sinceSeconds"),
    ("/containerLogs/ns/p/c?tailLines=x", "tailLines must be an integer"),
    ("/containerLogs/ns/p/c?limitBytes=-1", "limitBytes must not be negative"),
    ("/containerLogs/ns/%2E%2E/c", "not a namespace/pod/container"),
])
def test_parse_refuses_what_it_cannot_serve(path: str, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        parse(path)


@pytest.mark.parametrize("path", ["/exec/ns/p/c?command=sh", "/containerLogs/ns/p",
                                  "/pods", "/containerLogs/ns/p/c/extra"])
def test_other_kubelet_paths_are_not_found(path: str) -> None:
    with pytest.raises(LookupError, match="serves only /containerLogs"):
        parse(path)


def test_tail_keeps_the_last_lines() -> None:
    data = b"a\nb\nc\n"
    assert tail(data, None) == data
    assert tail(data, 2) == b"b\nc\n"
    assert tail(data, 0) == b""
    assert tail(b"a\nno newline", 1) == b"no newline"


class Served:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.running = threading.Event()
        cert = tls.generate(["127.0.0.1"], root / "tls")
        self.ctx = ssl.create_default_context(cadata=cert.ca_pem)
        self.server = LogServer(root, cert.cert_file, cert.key_file,
                                lambda ns, pod, c: self.running.is_set())

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"https://127.0.0.1:{self.server.port}{path}"
        try:
            with urllib.request.urlopen(url, context=self.ctx, timeout=30) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path)
    s.server.start()
    yield s
    s.server.stop()


def test_the_server_answers_with_the_newest_log_of_the_container(served: Served) -> None:
    old = log_path(served.root, "ns", "p", "uid-1", "trainer")
    new = log_path(served.root, "ns", "p", "uid-2", "trainer")
    for path, text in ((old, "old attempt\n"), (new, "one\ntwo\nthree\n")):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    os.utime(old, (1, 1))  # older
    assert served.get("/containerLogs/ns/p/trainer") == (200, b"one\ntwo\nthree\n")
    assert served.get("/containerLogs/ns/p/trainer?tailLines=1") == (200, b"three\n")
    assert served.get("/containerLogs/ns/p/trainer?limitBytes=5") == (200, b"one\nt")
    code, body = served.get("/containerLogs/ns/p/sidecar")
    assert code == 404 and b"has no log on this node" in body
    code, body = served.get("/containerLogs/ns/p/trainer?previous=true")
    assert code == 400 and b"never restart" in body
    code, body = served.get("/exec/ns/p/trainer")
    assert code == 404 and b"serves only /containerLogs" in body


def test_follow_streams_what_is_written_until_the_container_exits(served: Served) -> None:
    path = log_path(served.root, "ns", "p", "uid", "trainer")
    path.parent.mkdir(parents=True)
    path.write_text("first\n")
    served.running.set()
    got: list[tuple[int, bytes]] = []
    reader = threading.Thread(target=lambda: got.append(
        served.get("/containerLogs/ns/p/trainer?follow=true")))
    reader.start()
    with open(path, "a") as f:  # written while it follows
        f.write("second\n")
    reader.join(1.0)
    assert reader.is_alive(), "a follow of a running container must not end"
    with open(path, "a") as f:
        f.write("last\n")
    served.running.clear()  # the container exits: the stream ends with everything written
    reader.join(30)
    assert got == [(200, b"first\nsecond\nlast\n")]
