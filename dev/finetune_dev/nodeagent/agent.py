"""The node agent: one Node whose pods run as local processes (test and demo tooling).

Threads: the watch loop (list + watch of pods with spec.nodeName == node, relisted every
`resync_seconds`), the heartbeat (Lease + Ready), one waiter per container process, one
terminator per graceful stop. Each pod's status reports go through its run's lock, so a late
"Running" can never overwrite a finished status.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import signal
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, watch

from finetune_dev.nodeagent import podapi, runner, volumes
from finetune_dev.nodeagent.logserver import LogServer
from finetune_dev.nodeagent.node import NodeSpec, heartbeat, register
from finetune_dev.nodeagent.paths import log_path, pod_dir, termination_file
from finetune_dev.nodeagent.pod_status import Exit, Started, exit_code, failed_patch, observed_patch
from finetune_dev.nodeagent.prepare import prepare_pod
from finetune_dev.nodeagent.sources import NotReady, Unsupported, raw

log = logging.getLogger("nodeagent")
TERMINAL = ("Succeeded", "Failed")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class AgentConfig:
    node: NodeSpec
    root: Path
    api_host: str
    api_port: int
    resync_seconds: int = 10
    heartbeat_seconds: float = 10.0


@dataclass
class PodRun:
    pod: dict[str, Any]
    dir: Path
    tokens: list[volumes.Token]
    procs: dict[str, Any] = field(default_factory=dict)
    started: dict[str, Started] = field(default_factory=dict)
    exits: dict[str, Exit] = field(default_factory=dict)
    deleting: bool = False
    shutdown: bool = False
    finalized: bool = False
    dirty: bool = True  # the API does not have the latest status yet (a patch failed)
    all_exited: threading.Event = field(default_factory=threading.Event)
    reported: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"


def grace_seconds(pod: dict[str, Any]) -> int:
    meta, spec = pod["metadata"], pod["spec"]
    value = meta.get("deletionGracePeriodSeconds")
    return int(value if value is not None else spec.get("terminationGracePeriodSeconds", 30))


class NodeAgent:
    def __init__(self, api: client.ApiClient, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.core, self.coord = client.CoreV1Api(api), client.CoordinationV1Api(api)
        self.version = client.VersionApi(api).get_code().git_version
        self.runs: dict[str, PodRun] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.since = utcnow()
        self.node_uid = ""

    def run(self, stop: threading.Event) -> None:
        """Register the node, serve pods until `stop` is set, then stop every pod gracefully."""
        spec = self.cfg.node
        lock_path = self.cfg.root / "nodes" / f"{spec.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"another node agent already serves node {spec.name} with "
                                   f"root {self.cfg.root}; stop it first") from None
            for name in runner.TOOLS:
                runner.tool(name)  # fail now, not at the first pod
            reaped = runner.reap_orphans(self.cfg.root, spec.name)
            if reaped:
                log.warning("stopped %d process(es) left by a previous agent: %s", len(reaped),
                            reaped)
            logs = self._log_server()
            spec = self.cfg.node = replace(spec, log_port=logs.port)
            self.node_uid = register(self.core, spec)
            heartbeat(self.core, self.coord, spec, self.node_uid, utcnow(), self.since,
                      self.version)
            log.info("node %s registered (%d GPUs), root %s", spec.name, spec.gpus, self.cfg.root)
            for target in (self._heartbeat_loop, self._watch_loop):
                threading.Thread(target=target, daemon=True, name=target.__name__).start()
            stop.wait()
            self.shutdown()
            logs.stop()

    def _log_server(self) -> LogServer:
        """The kubelet log endpoint for this node's pods (a fresh self-signed certificate: the
        API server does not verify it)."""
        from finetune_operator.http import tls

        cert = tls.generate(["127.0.0.1"], self.cfg.root / "nodes" / f"{self.cfg.node.name}-tls")
        server = LogServer(self.cfg.root, cert.cert_file, cert.key_file, self._running)
        server.start()
        return server

    def _running(self, namespace: str, pod: str, container: str) -> bool:
        """Whether that container of a pod of this node still runs (its log may still grow)."""
        with self.lock:
            runs = [r for r in self.runs.values() if r.key == f"{namespace}/{pod}"]
        return any(container in r.procs and container not in r.exits for r in runs)

    def shutdown(self) -> None:
        """Stop every container (SIGTERM, its grace period, SIGKILL) and report it."""
        self.stopping.set()
        with self.lock:
            runs = list(self.runs.values())
        log.info("shutting down: stopping %d pod(s)", sum(not r.all_exited.is_set() for r in runs))
        for run in runs:  # pods being deleted already have their terminator
            if not run.all_exited.is_set() and not run.deleting:
                run.shutdown = True
                threading.Thread(target=self._terminate, args=(run, grace_seconds(run.pod)),
                                 daemon=True).start()
        for run in runs:
            run.all_exited.wait(grace_seconds(run.pod) + 30)
            run.reported.wait(10)
        log.info("node agent stopped")

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(self.cfg.heartbeat_seconds):
            try:
                heartbeat(self.core, self.coord, self.cfg.node, self.node_uid, utcnow(),
                          self.since, self.version)
            except Exception as e:  # keep beating; the API may be restarting
                log.warning("heartbeat failed: %s", e)

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.cfg.node.name}"
        while not self.stopping.is_set():
            try:
                body = raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                self._resync(body["items"])
                w = watch.Watch()
                for ev in w.stream(self.core.list_pod_for_all_namespaces, field_selector=selector,
                                   resource_version=body["metadata"]["resourceVersion"],
                                   timeout_seconds=self.cfg.resync_seconds):
                    if self.stopping.is_set():
                        w.stop()
                        break
                    obj = ev["raw_object"]
                    if ev["type"] == "DELETED":
                        self._forget(obj["metadata"]["uid"])
                    elif ev["type"] in ("ADDED", "MODIFIED"):
                        self._sync(obj)
            except Exception:
                log.exception("pod watch failed; relisting in 2s")
                self.stopping.wait(2)

    def _resync(self, pods: list[dict[str, Any]]) -> None:
        seen = {p["metadata"]["uid"] for p in pods}
        for uid in [u for u in list(self.runs) if u not in seen]:
            self._forget(uid)
        for pod in pods:
            self._sync(pod)
        for run in list(self.runs.values()):
            if not run.all_exited.is_set():
                try:
                    volumes.refresh_tokens(self.core, run.pod, run.tokens, utcnow())
                except Exception as e:
                    log.warning("%s: token refresh failed: %s", run.key, e)

    def _sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            run = self.runs.get(meta["uid"])
            if run is not None:
                run.pod = pod
                self._sync_run(run)
                return
            if meta.get("deletionTimestamp"):
                podapi.finalize(self.core, pod)
                return
            phase = (pod.get("status") or {}).get("phase")
            if phase in TERMINAL:
                return
            pdir = pod_dir(self.cfg.root, meta["namespace"], meta["name"], meta["uid"])
            if phase == "Running" or any(pdir.glob("*.pid")):
                podapi.patch_status(self.core, pod, failed_patch(
                    pod, utcnow(), "NodeAgentRestarted",
                    f"the node agent on {self.cfg.node.name} restarted and lost this pod's "
                    "process (left-over processes were stopped); create a new pod"))
            elif not self.stopping.is_set():
                self._start(pod, pdir)
        except Exception:
            log.exception("%s/%s: sync failed (retried on the next resync)", meta["namespace"],
                          meta["name"])

    def _sync_run(self, run: PodRun) -> None:
        if run.dirty:
            self._report(run)
        if run.pod["metadata"].get("deletionTimestamp") and not run.deleting:
            run.deleting = True
            if not run.all_exited.is_set():
                threading.Thread(target=self._terminate, args=(run, grace_seconds(run.pod)),
                                 daemon=True).start()
        self._maybe_finalize(run)

    def _start(self, pod: dict[str, Any], pdir: Path) -> None:
        meta, now = pod["metadata"], utcnow()
        try:
            launches, vols = prepare_pod(self.core, pod, self.cfg.root, pdir,
                                         self.cfg.node.capacity(),
                                         (self.cfg.api_host, self.cfg.api_port), now)
        except NotReady as e:
            podapi.patch_waiting(self.core, pod, e.reason, str(e))
            return
        except Unsupported as e:
            log.warning("%s/%s: unsupported: %s", meta["namespace"], meta["name"], e)
            body = failed_patch(pod, now, "Unsupported", str(e), "StartError", 128)
            podapi.patch_status(self.core, pod, body)
            return
        run = PodRun(pod, pdir, vols.tokens)
        with self.lock:
            if self.stopping.is_set():
                return
            try:
                for name, launch in launches:
                    termination_file(pdir, name).write_bytes(b"")
                    termination_file(pdir, name).chmod(0o666)
                    proc = runner.start(launch, self.cfg.node.name)
                    run.procs[name], run.started[name] = proc, Started(utcnow(), proc.pid)
            except OSError as e:
                for proc in run.procs.values():
                    runner.signal_group(proc.pid, signal.SIGKILL)
                podapi.patch_status(self.core, pod, failed_patch(
                    pod, now, "StartError", f"cannot start the container process: {e}",
                    "StartError", 128))
                return
            self.runs[meta["uid"]] = run
        log.info("%s: started %s", run.key, {n: p.pid for n, p in run.procs.items()})
        for name, proc in run.procs.items():
            threading.Thread(target=self._wait_container, args=(run, name, proc),
                             daemon=True).start()
        self._report(run)

    def _wait_container(self, run: PodRun, name: str, proc: Any) -> None:
        code = exit_code(proc.wait())
        runner.signal_group(proc.pid, signal.SIGKILL)  # what the container left behind dies too
        m = run.pod["metadata"]
        c = next(c for c in run.pod["spec"]["containers"] if c["name"] == name)
        msg = runner.termination_message(
            termination_file(run.dir, name),
            log_path(self.cfg.root, m["namespace"], m["name"], m["uid"], name),
            c.get("terminationMessagePolicy", "File"), code)
        start_error = code == runner.SETUP_FAILED and msg.startswith(runner.SETUP_PREFIX)
        with run.lock:
            run.exits[name] = Exit(code, utcnow(), msg, start_error)
            done = len(run.exits) == len(run.procs)
        log.info("%s: container %s exited with %d", run.key, name, code)
        if done:
            run.all_exited.set()
        self._report(run)
        self._maybe_finalize(run)

    def _terminate(self, run: PodRun, grace: int) -> None:
        log.info("%s: SIGTERM, grace period %ds", run.key, grace)
        for proc in run.procs.values():
            runner.signal_group(proc.pid, signal.SIGTERM)
        if not run.all_exited.wait(grace):
            log.info("%s: grace period over, SIGKILL", run.key)
            for proc in run.procs.values():
                runner.signal_group(proc.pid, signal.SIGKILL)

    def _forget(self, uid: str) -> None:
        """The pod object is gone: kill what still runs (a forced delete), drop its volumes."""
        with self.lock:
            run = self.runs.pop(uid, None)
        if run is None:
            return
        if not run.all_exited.is_set():
            log.warning("%s: deleted while running; SIGKILL", run.key)
            for proc in run.procs.values():
                runner.signal_group(proc.pid, signal.SIGKILL)
        shutil.rmtree(run.dir / "volumes", ignore_errors=True)

    def _report(self, run: PodRun) -> None:
        with run.lock:
            if run.reported.is_set():  # the final status is out; nothing changes after it
                return
            body = observed_patch(run.pod, utcnow(), run.started, run.exits, run.shutdown)
            run.dirty = not podapi.patch_status(self.core, run.pod, body)
            if not run.dirty and len(run.exits) == len(run.procs):
                run.reported.set()

    def _maybe_finalize(self, run: PodRun) -> None:
        with run.lock:
            if not (run.deleting and run.reported.is_set()) or run.finalized:
                return
            run.finalized = True
        podapi.finalize(self.core, run.pod)
