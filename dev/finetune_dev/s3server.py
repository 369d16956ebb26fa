"""A real S3-compatible object store for tests and local runs: SeaweedFS (Apache-2.0).

Built from the Go module proxy like the cluster binaries (devcluster/build.py), cached outside
the checkout under ``~/.cache/finetune-operator/seaweedfs-<version>/bin/weed``, and run as
``weed mini`` (master, volume server, filer and S3 gateway in one process) on free local ports
with one admin identity. The MinIO server is AGPL and is not used.

    python -m finetune_dev.s3server build        # compile once (11 CPU-minutes cold)
    python -m finetune_dev.s3server run DIR      # serve until Ctrl-C; prints endpoint and keys

Tests use :func:`start` (tests/trainer/conftest.py has the fixture).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_dev.devcluster import build as b

MODULE = "github.com/seaweedfs/seaweedfs"
VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # the one pseudo-version the module proxy has
COMPONENT = b.Component("seaweedfs", VERSION.rsplit("-", 1)[-1], ("weed",))
# tyler-smith/go-bip39 is gone upstream; seaweedfs's own go.mod replaces it the same way.
REPLACES = "replace github.com/tyler-smith/go-bip39 => github.com/cosmos/go-bip39 v1.0.0\n"
ACCESS_KEY = "finetune-test"
SECRET_KEY = "finetune-test-secret-key"  # a local test server's key, not a credential
REGION = "us-east-1"


def binary() -> Path:
    return COMPONENT.paths()["weed"]


def ensure_built() -> Path:
    """Compile ``weed`` from the module proxy unless it is cached; returns its path."""
    if COMPONENT.is_built():
        return binary()
    if shutil.which("go") is None:
        raise b.BuildError("Go is not on PATH; install Go >= 1.26 (the S3 test server is built "
                           "from the Go module proxy)")
    started = time.monotonic()
    b._log(f"building seaweedfs {VERSION} -> {COMPONENT.bin_dir}")
    d = b._workdir(COMPONENT)
    b._write_gomod(d, "finetune.dev/seaweedfs-build", f"\n{REPLACES}")
    b._run("resolve seaweedfs", ["go", "get", f"{MODULE}/weed@{VERSION}"], d)
    COMPONENT.bin_dir.mkdir(parents=True, exist_ok=True)
    b._run("go build weed (11 CPU-minutes cold: 6-17 min on 2 cores)",
           ["go", "build", "-ldflags", "-s -w", "-o", str(binary()),
            f"{MODULE}/weed"], d)
    if not COMPONENT.is_built():
        raise b.BuildError(f"seaweedfs: build finished but {binary()} is missing")
    b._log(f"built seaweedfs in {int(time.monotonic() - started)}s")
    return binary()


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_S3_CONFIG = """{"identities": [{"name": "admin", "credentials": [{"accessKey": "%s",
"secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}"""


@dataclass
class S3Server:
    endpoint: str
    metrics_url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    log_path: Path = field(default_factory=Path)

    def client(self) -> Any:
        """A MinIO SDK client (the trainer's) for this server with the test credentials."""
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=self.access_key,
                     secret_key=self.secret_key, secure=False, region=self.region)

    def credentials_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def read_requests(self, bucket: str) -> int:
        """GET and HEAD requests the server answered on ``bucket`` so far (its own counter,
        SeaweedFS_s3_request_total{type="GET"}: object reads and HEADs)."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as r:
            text = r.read().decode()
        total = 0
        for line in text.splitlines():
            if not line.startswith("SeaweedFS_s3_request_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if labels.get("type") == "GET" and labels.get("bucket") == bucket:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def start(data_dir: Path, timeout: float = 180.0) -> S3Server:
    """Start ``weed mini`` on free ports with the test identity; returns once a bucket can be
    created and written (the volume server is up), or raises with the log's tail."""
    weed = ensure_built()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3.json"
    config.write_text(_S3_CONFIG % (ACCESS_KEY, SECRET_KEY))
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, metrics) = free_ports(9)
    cmd = [str(weed), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           f"-master.port={master}", f"-master.port.grpc={master_g}",
           f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
           f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
           f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-metricsPort={metrics}",
           "-metricsIp=127.0.0.1",
           "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
           "-master.telemetry=false", f"-s3.config={config}",
           f"-filer.localSocket={data_dir}/filer.sock", f"-s3.localSocket={data_dir}/s3.sock"]
    log_path = data_dir / "weed.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    env = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir, env=env,
                            start_new_session=True)
    log.close()
    server = S3Server(endpoint=f"http://127.0.0.1:{s3}",
                      metrics_url=f"http://127.0.0.1:{metrics}/metrics", data_dir=data_dir,
                      proc=proc, log_path=log_path)
    deadline = time.monotonic() + timeout
    last, made = "", False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            c = server.client()
            if not made:
                c.make_bucket("ready-probe")
                made = True
            c.put_object("ready-probe", "probe", io.BytesIO(b"ok"), 2)
            urllib.request.urlopen(server.metrics_url, timeout=5).close()
            return server
        except Exception as e:  # not up yet: connection refused, no volume yet, ...
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.5)
    server.stop()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"the S3 test server did not come up in {timeout:.0f}s (last: {last}); "
                       f"its log {log_path}:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune_dev.s3server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="compile weed into the cache")
    run = sub.add_parser("run", help="serve S3 from DIR until interrupted")
    run.add_argument("dir", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(ensure_built())
        return 0
    server = start(args.dir.resolve())
    print(f"endpoint {server.endpoint}  access key {server.access_key}  secret key "
          f"{server.secret_key}  region {server.region}  (Ctrl-C stops)", flush=True)
    try:
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
