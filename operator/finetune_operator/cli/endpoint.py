"""Where the operator's queue view (the visibility endpoint, on its HTTPS report port) is, for
``kubectl finetune list --queue``. Pure: the lookups go through an ``OperatorLookup`` (the
plugin's API client, or a test's fake).

In the order tried:

1. The chart's reports Service in the operator's namespace (``--operator-namespace``, else
   ``$FINETUNE_OPERATOR_NAMESPACE``, else ``finetune-system`` as docs/install.md installs it):
   the one named by ``--operator-service`` / ``$FINETUNE_OPERATOR_SERVICE``; else the one the
   chart labels (``app.kubernetes.io/part-of=finetune-operator``,
   ``app.kubernetes.io/component=reports``) where the user may list Services there; else
   ``finetune-operator-reports`` (the release ``finetune-operator``), which the chart's
   ``<release>-queue-proxy`` Role lets its subjects get. The plugin then calls it through the
   API server's service proxy. This works before any job was admitted.
2. No such Service, and neither flag nor variable set (an operator run outside the cluster, as
   in development): the report URL of a trainer config in the job's namespace (there is one
   once a job there was admitted), called directly with that config's CA; or through the proxy
   when it names a cluster Service.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

DEFAULT_NAMESPACE = "finetune-system"
DEFAULT_SERVICE = "finetune-operator-reports"
SERVICE_SELECTOR = "app.kubernetes.io/part-of=finetune-operator,app.kubernetes.io/component=reports"
PORT_NAME = "reports"
NAMESPACE_ENV = "FINETUNE_OPERATOR_NAMESPACE"
SERVICE_ENV = "FINETUNE_OPERATOR_SERVICE"


class Forbidden(Exception):
    """The user may not make that lookup (HTTP 403)."""


class OperatorLookup(Protocol):
    def list_services(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Services of a namespace by label; raises Forbidden."""

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Service, None when there is none; raises Forbidden."""

    def trainer_report(self, namespace: str) -> Mapping[str, Any] | None:
        """The ``report`` section (url, caPem) of a trainer config in the namespace; None when
        there is none (or it may not be read)."""


@dataclass(frozen=True)
class ProxiedService:
    """The operator's Service, reached through the API server's service proxy."""

    name: str
    namespace: str
    port: str  # number or name, as the proxy path names it


@dataclass(frozen=True)
class DirectUrl:
    """An operator outside the cluster: its report URL's base, verified with the config's CA."""

    base: str  # https://host:port (the routes /v1/... go after it)
    ca_pem: str


Endpoint = ProxiedService | DirectUrl


class NotFound(ValueError):
    """No operator endpoint found; the message says what was looked for and what to pass."""


def operator_namespace(flag: str | None) -> str:
    return flag or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def operator_service(flag: str | None) -> str | None:
    return flag or os.environ.get(SERVICE_ENV) or None


def _proxied(service: Mapping[str, Any], namespace: str) -> ProxiedService:
    meta, ports = service.get("metadata") or {}, (service.get("spec") or {}).get("ports") or []
    port = next((p for p in ports if p.get("name") == PORT_NAME), ports[0] if ports else {})
    return ProxiedService(name=str(meta.get("name")), namespace=str(meta.get("namespace")
                                                                   or namespace),
                          port=str(port.get("port") or PORT_NAME))


def find_operator(lookup: OperatorLookup, job_namespace: str, *,
                  namespace: str | None = None, service: str | None = None) -> Endpoint:
    """The operator's queue view (see the module's docstring); ``namespace`` and ``service``
    are the flags (None: the environment, then the defaults). Raises NotFound."""
    ns, name = operator_namespace(namespace), operator_service(service)
    pointed = bool(namespace or os.environ.get(NAMESPACE_ENV) or name)
    looked: list[str] = []
    if name is None:
        try:
            found = sorted(lookup.list_services(ns, SERVICE_SELECTOR),
                           key=lambda s: str((s.get("metadata") or {}).get("name")))
        except Forbidden:  # a tenant: the chart's queue-proxy Role lets it get the Service
            looked.append(f"Services labelled {SERVICE_SELECTOR} in namespace {ns} (you may "
                          "not list Services there)")
            name = DEFAULT_SERVICE
        else:
            if len(found) > 1:
                names = ", ".join(str((s.get("metadata") or {}).get("name")) for s in found)
                raise NotFound(f"several finetune-operator report Services in namespace {ns} "
                               f"({names}); pick one with --operator-service NAME (or "
                               f"{SERVICE_ENV})")
            if found:
                return _proxied(found[0], ns)
            looked.append(f"Services labelled {SERVICE_SELECTOR} in namespace {ns} (none)")
    if name is not None:
        try:
            svc = lookup.get_service(ns, name)
        except Forbidden:
            looked.append(f"Service {ns}/{name} (you may not get it)")
        else:
            if svc is not None:
                return _proxied(svc, ns)
            looked.append(f"Service {ns}/{name} (not found)")
    report = None if pointed else lookup.trainer_report(job_namespace)
    if report and report.get("url"):
        url = str(report["url"])
        in_cluster = service_of(url)
        if in_cluster is not None:
            return ProxiedService(*in_cluster)
        return DirectUrl(base=url.rsplit("/v1/", 1)[0], ca_pem=str(report.get("caPem") or ""))
    if not pointed:
        looked.append(f"a trainer config naming the operator in namespace {job_namespace} "
                      "(none: there is one once a job there was admitted)")
    raise NotFound(
        f"cannot find the operator's queue view; looked for {'; '.join(looked)}. Point the "
        f"plugin at the namespace the finetune-operator chart is installed in with "
        f"--operator-namespace NAMESPACE (or {NAMESPACE_ENV}), and at its reports Service "
        f"with --operator-service NAME (or {SERVICE_ENV}) when the release is not named "
        "finetune-operator; an admin finds both with kubectl get services -A -l "
        f"{SERVICE_SELECTOR}")


_SERVICE_HOST = re.compile(r"^(?P<name>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\."
                           r"(?P<ns>[a-z0-9]([-a-z0-9]*[a-z0-9])?)\.svc(\.cluster\.local)?\.?$")


def service_of(report_url: str) -> tuple[str, str, str] | None:
    """(service, namespace, port) when the report URL names a cluster Service
    (``https://<svc>.<ns>.svc:<port>/...``), else None (an external or loopback URL)."""
    from urllib.parse import urlsplit

    url = urlsplit(report_url)
    m = _SERVICE_HOST.match(url.hostname or "")
    if url.scheme != "https" or not m:
        return None
    return m["name"], m["ns"], str(url.port or 443)
