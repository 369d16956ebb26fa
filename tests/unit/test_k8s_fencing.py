"""The API client's own guards (k8s.py), against a real socket that never answers: a request
that times out is sent once (not retried into a multiple of the timeout) and surfaces as an
OSError every caller handles; a fenced write is never sent at all."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from finetune_operator.kube.client import Fenced, Kube, Unreachable, load_client

pytestmark = pytest.mark.unit


class Silent:
    """A TCP server that accepts connections, reads what comes and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)

    def close(self) -> None:
        for c in self.held:
            c.close()
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def kube(server: Silent, tmp_path: Path, fence: Callable[[], bool] = lambda: True) -> Kube:
    """The operator's client as __main__ makes it (load_client), for the silent server."""
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return Kube(load_client(str(path)), timeout_seconds=0.3, fence=fence)


@pytest.mark.parametrize("verb", ["get", "replace"])  # idempotent: urllib3 would retry them
def test_a_timed_out_request_is_sent_once_and_is_an_oserror(
        silent: Silent, tmp_path: Path, verb: str) -> None:
    k = kube(silent, tmp_path)
    with pytest.raises(Unreachable) as err:
        if verb == "get":
            k.get("Lease", "ns", "l")
        else:
            k.hold_lease("ns", "l", "me", 15, dt.datetime.now(dt.UTC),
                         known={"metadata": {"name": "l"}, "spec": {}})
    assert isinstance(err.value, OSError) and "timeout 0.3" in str(err.value)
    assert silent.connections == 1  # one attempt, not four


def test_a_fenced_write_is_never_sent(silent: Silent, tmp_path: Path) -> None:
    k = kube(silent, tmp_path, fence=lambda: False)  # this replica does not hold the Lease
    pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
    for write in (lambda: k.create(pod), lambda: k.delete_pod("ns", "p"),
                  lambda: k.patch_job_status("ns", "j", {"phase": "Running"})):
        with pytest.raises(Fenced):
            write()
    assert silent.connections == 0 and k.writes() == 0
    with pytest.raises(Unreachable):  # reads and the Lease are not fenced
        k.get("Pod", "ns", "p")
    assert silent.connections == 1
