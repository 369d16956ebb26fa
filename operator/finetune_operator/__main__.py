"""`finetune-operator` / `python -m finetune_operator`: the operator process."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from finetune_operator.settings import OperatorSettings, SettingsError, add_arguments


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="finetune-operator",
                                 description="Queue, admit, preempt and resume FineTuneJobs.")
    add_arguments(ap)
    ap.add_argument("--kubeconfig", default=None, help="default: in-cluster, then $KUBECONFIG")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    try:
        settings = OperatorSettings.from_args(args)
    except SettingsError as e:
        print(f"finetune-operator: {e}", file=sys.stderr)
        return 2
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig

    import kopf

    from finetune_operator import lifecycle
    from finetune_operator.http import metrics as metrics_server
    from finetune_operator.http import server as serve
    from finetune_operator.http.identity import PodIdentity
    from finetune_operator.jobs.controller import Controller, Fence
    from finetune_operator.jobs.ports import SystemClock
    from finetune_operator.kube.client import Kube, TokenBucket, load_client
    from finetune_operator.reports.channel import start_channel
    from finetune_operator.reports.model import ProgressReport
    from finetune_operator.reports.rejects import Rejections

    kopf.configure(verbose=args.verbose)  # one log handler for kopf's and our loggers
    logging.getLogger("finetune_operator").setLevel(logging.DEBUG if args.verbose
                                                    else logging.INFO)
    clock = SystemClock()
    fence = Fence(clock)  # the Lease moves it; every write is checked against it
    limiter = (TokenBucket(settings.cycle.api_qps, settings.cycle.api_burst)
               if settings.cycle.api_qps > 0 else None)  # one bucket for every API call
    kube = Kube(load_client(args.kubeconfig), timeout_seconds=settings.cycle.api_timeout_seconds,
                fence=fence.may_write, limiter=limiter)
    rejections = Rejections()  # bad reports and termination messages, counted once per pod

    def on_report(who: PodIdentity, report: ProgressReport) -> None:
        controller.feeds.on_report(who, report)

    # bound, not answering yet: the trainer config names its port and CA, and the Controller
    # that hears its reports is built next; it listens once every handler is wired (below)
    channel = start_channel(settings, kube.token_review, on_report, rejections=rejections,
                            listen=False)
    controller = Controller(kube, settings, clock=clock, fence=fence,
                            report_config=channel.config, on_termination=rejections.reject)
    lifecycle.install(controller)
    # /metrics over HTTPS (the report channel's certificate unless it has its own), for
    # bearer tokens allowed to get /metrics (TokenReview + SubjectAccessReview, cached)
    metrics_tls = (metrics_server.tls_context(settings.endpoints.metrics_tls_cert_file,
                                              settings.endpoints.metrics_tls_key_file)
                   if settings.endpoints.metrics_tls_cert_file else channel.server.context)
    metrics_server.serve(settings.endpoints.metrics_port, metrics_tls, metrics_server.ScrapeAuth(
        lambda token: kube.may_access(token, metrics_server.SCRAPE)))
    endpoints = serve.Endpoints(controller.healthy, controller.ready,
                                lambda: controller.queue_view,
                                channel.cached_access(kube.may_list_jobs))
    serve.serve(endpoints, settings.endpoints.health_port)  # /healthz, /readyz (plain HTTP: probes)
    channel.server.on_get = endpoints.visibility  # the queue, over the report port's TLS
    channel.server.serving = controller.may_write  # a standby sends clients on to the leader
    channel.listen()
    kopf.run(
        standalone=True,
        clusterwide=not settings.admission.namespaces,
        namespaces=settings.admission.namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
