"""Wiring of the report channel for the operator process: settings -> TLS, URL, authenticator,
server, and the ``report`` section every trainer config gets.

The operator calls :func:`start_channel` once at start (every replica: a standby answers
reports too, its callback decides what to keep) and passes ``channel.config`` to
``build.build_children(..., report=channel.config)``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from finetune_api.trainer_config import ReportConfig
from finetune_operator.http import tls
from finetune_operator.http.identity import TokenAuthenticator, TokenReview
from finetune_operator.http.limits import Authorize, CachedAccess, ReviewBudget
from finetune_operator.http.reports import OnReport, ReportServer
from finetune_operator.reports.model import (
    BadReport,
)
from finetune_operator.reports.rejects import Rejections
from finetune_operator.settings import OperatorSettings, env_name

log = logging.getLogger(__name__)


@dataclass
class Channel:
    server: ReportServer
    config: ReportConfig  # goes into every trainer config (URL + CA PEM; no secret)
    authenticator: TokenAuthenticator
    rejections: Rejections
    budget: ReviewBudget  # every TokenReview/SubjectAccessReview of the port spends it

    def cached_access(self, authorize: Authorize) -> CachedAccess:
        """``authorize`` (e.g. ``Kube.may_list_jobs``) with a short cache of its answers, its
        reviews spending this channel's budget."""
        return CachedAccess(authorize, self.budget)

    def listen(self) -> None:
        """Start answering (after ``start_channel(..., listen=False)``: once ``on_report``'s
        receiver exists)."""
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


def report_config(settings: OperatorSettings, ca_pem: str,
                  pod_namespace: str | None) -> ReportConfig:
    """The trainer config's ``report`` section (pure)."""
    return ReportConfig(url=settings.resolved_report_url(pod_namespace), ca_pem=ca_pem)


def serving_cert(settings: OperatorSettings, url: str) -> tls.ServingCert:
    """The configured certificate (and CA), or a new self-signed one for the URL's host."""
    if settings.reports.report_tls_cert_file:
        ca_file = settings.reports.report_tls_ca_file or settings.reports.report_tls_cert_file
        try:
            ca_pem = Path(ca_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise OSError(f"{env_name('report_tls_ca_file')}: cannot read {ca_file} ({e}); "
                          "mount the CA the trainers should trust there") from None
        return tls.ServingCert(settings.reports.report_tls_cert_file,
                               settings.reports.report_tls_key_file, ca_pem)
    host = urlsplit(url).hostname or "localhost"
    log.info("report channel: no %s set; using a self-signed CA made now for %s (fine for "
             "local development; set a certificate in a cluster)",
             env_name("report_tls_cert_file"), host)
    return tls.generate([host])


def start_channel(settings: OperatorSettings, token_review: TokenReview, on_report: OnReport,
                  pod_namespace: str | None = None, host: str = "0.0.0.0",
                  port: int | None = None,
                  rejections: Rejections | None = None, listen: bool = True) -> Channel:
    """Start the HTTPS report server in background threads. ``token_review`` is
    ``Kube.token_review``; ``on_report(pod, report)`` is called from server threads with each
    report that passed every check. ``pod_namespace`` defaults to ``$POD_NAMESPACE``. With
    ``listen=False`` the port is bound (the config names it) but no request is answered until
    ``Channel.listen()``."""
    if pod_namespace is None:
        pod_namespace = os.environ.get("POD_NAMESPACE") or None
    url = settings.resolved_report_url(pod_namespace)
    cert = serving_cert(settings, url)
    rejections = rejections or Rejections()
    rate = settings.reports.report_reviews_per_second
    budget = ReviewBudget(rate, burst=5 * rate)
    auth = TokenAuthenticator(token_review, settings.reports.report_audience, budget=budget)
    server = ReportServer(host, settings.reports.report_port if port is None else port,
                          cert.cert_file, cert.key_file, auth, on_report, rejections=rejections,
                          max_per_address=settings.reports.report_max_connections_per_address,
                          timeout=settings.reports.report_request_timeout_seconds)
    if listen:
        server.start()
    if port is not None:  # e.g. 0 in tests: trainers dial the port actually bound
        settings = settings.replace(report_port=server.port)
    return Channel(server, report_config(settings, cert.ca_pem, pod_namespace), auth,
                   rejections, budget)


__all__ = ["BadReport", "Channel", "report_config", "serving_cert", "start_channel"]
