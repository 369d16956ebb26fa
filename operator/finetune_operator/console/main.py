"""Starting the console: ``kubectl finetune console`` (local, the user's kubeconfig) and
``python -m finetune_operator.console`` (the chart's in-cluster mode)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import sys
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from finetune_operator.console.app import Console, Settings, serve
from finetune_operator.console.history import History
from finetune_operator.console.identity import (
    ImpersonatingIdentity,
    LocalIdentity,
    TokenIdentity,
)
from finetune_operator.console.prometheus import PrometheusSource

if TYPE_CHECKING:
    from finetune_operator.kube.client import Kube

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """Where the local console keeps the curves' history (``$XDG_CACHE_HOME`` or
    ``~/.cache``, ``finetune-console``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "finetune-console"


PROMETHEUS_ENV = "FINETUNE_CONSOLE_PROMETHEUS_URL"


def prometheus_source(url: str | None) -> PrometheusSource | None:
    """The curves' Prometheus (``prometheus.py``) at ``url``, else at ``$FINETUNE_CONSOLE_
    PROMETHEUS_URL``; None when neither names one (the console's own record then)."""
    url = url or os.environ.get(PROMETHEUS_ENV) or ""
    return PrometheusSource(url) if url else None


def run_local(kubeconfig: str | None, context: str | None, namespaces: list[str], port: int,
              open_browser: bool, out: IO[str], history_dir: Path | None = None,
              ready: threading.Event | None = None, stop: threading.Event | None = None,
              prometheus_url: str | None = None) -> int:
    """``kubectl finetune console``: serve on 127.0.0.1 with the kubeconfig's credentials, print
    (and open) the URL, run until interrupted (or ``stop``)."""
    from finetune_operator.cli.client import plugin_client
    from finetune_operator.console.api import ConsoleApi
    from finetune_operator.kube.client import CONSOLE_SURFACE, Kube

    api, ctx_ns = plugin_client(kubeconfig, context)
    api.configuration.retries = 1
    kube = Kube(api, surface=CONSOLE_SURFACE)
    secret = secrets.token_urlsafe(24)
    console = Console(LocalIdentity(kube, secret), History(history_dir or state_dir()),
                      Settings(namespaces=namespaces or [ctx_ns], secret=secret),
                      prometheus=prometheus_source(prometheus_url))
    server = serve(console, "127.0.0.1", port)
    url = f"http://127.0.0.1:{server.port}/login?token={secret}"
    recorder = console.record(ConsoleApi(kube), ConsoleApi(kube).namespaces(
        namespaces or [ctx_ns]))
    out.write(f"Fine-tuning console for {', '.join(namespaces or [ctx_ns])} at {url}\n"
              "(as the kubeconfig's user; Ctrl-C stops it)\n")
    out.flush()
    if open_browser:
        webbrowser.open(url)
    if ready is not None:
        ready.set()
    try:
        (stop or threading.Event()).wait()
    except KeyboardInterrupt:
        pass
    finally:
        recorder.set()
        server.stop()
    return 0


def run_in_cluster(argv: list[str] | None = None) -> int:
    """The chart's console Deployment: ``--mode token`` (the forwarded bearer token) or
    ``--mode impersonate`` (the forwarded user name, after a SubjectAccessReview)."""
    from kubernetes import client, config

    from finetune_operator.kube.client import CONSOLE_SURFACE, Kube

    ap = argparse.ArgumentParser(prog="finetune-console")
    ap.add_argument("--mode", choices=("token", "impersonate"), default="token")
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--namespace", action="append", default=[],
                    help="namespaces served (default: every one the user may list jobs in)")
    ap.add_argument("--state-dir", default="/var/lib/finetune-console")
    ap.add_argument("--prometheus-url", help="the Prometheus that scrapes the operator: the "
                    "curves come from it (default: $FINETUNE_CONSOLE_PROMETHEUS_URL, else the "
                    "console's own record)")
    ap.add_argument("--kubeconfig", help="outside a cluster (tests): the API server and CA of "
                    "this kubeconfig; its credentials are used only in impersonate mode")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    base = client.Configuration()
    if args.kubeconfig:
        config.load_kube_config(config_file=args.kubeconfig, client_configuration=base)  # type: ignore[no-untyped-call, unused-ignore]
    elif args.mode == "token":
        base = _tokenless_in_cluster()
    else:
        config.load_incluster_config(client_configuration=base)  # type: ignore[no-untyped-call, unused-ignore]
    secret = os.environ.get("FINETUNE_CONSOLE_SECRET") or secrets.token_urlsafe(24)
    if args.mode == "token":
        identity: TokenIdentity | ImpersonatingIdentity = TokenIdentity(base)
    else:
        own = Kube(client.ApiClient(base), surface=CONSOLE_SURFACE)
        identity = ImpersonatingIdentity(own, args.namespace, _reviewer(own))
    console = Console(identity, History(Path(args.state_dir)),
                      Settings(namespaces=args.namespace, secret=secret),
                      prometheus=prometheus_source(args.prometheus_url))
    server = serve(console, args.host, args.port)
    log.info("finetune console (%s mode) on %s:%d", args.mode, args.host, server.port)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.stop()
    return 0


def _tokenless_in_cluster() -> Any:
    """The API server's address and CA in a pod without a ServiceAccount token (the chart's
    token mode mounts none): ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the CA file of
    ``KUBERNETES_CA_FILE`` (the namespace's ``kube-root-ca.crt`` ConfigMap)."""
    from kubernetes import client

    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    cfg = client.Configuration()
    cfg.host = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    cfg.ssl_ca_cert = os.environ.get("KUBERNETES_CA_FILE") or \
        "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    return cfg


def _reviewer(own: Kube) -> Callable[[str, list[str], str | None], bool]:
    """A SubjectAccessReview on the console's own ServiceAccount: may ``user`` (with
    ``groups``) list FineTuneJobs in ``namespace`` (None: anywhere)?"""
    from finetune_api import GROUP, PLURAL

    def review(user: str, groups: list[str], namespace: str | None) -> bool:
        attrs: dict[str, str] = {"verb": "list", "group": GROUP, "resource": PLURAL}
        if namespace:
            attrs["namespace"] = namespace
        res = own.call("create", "subjectaccessreviews", "POST",
                       "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                       body={"apiVersion": "authorization.k8s.io/v1",
                             "kind": "SubjectAccessReview",
                             "spec": {"user": user, "groups": groups,
                                      "resourceAttributes": attrs}})
        return bool((res.get("status") or {}).get("allowed"))

    return review


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_in_cluster())
