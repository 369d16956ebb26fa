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

    from finetune_operator import lifecycle as handlers
    from finetune_operator.http import metrics as metrics_server
    from finetune_operator.http import server as serve
    from finetune_operator.jobs.controller import Controller
    from finetune_operator.kube.client import Kube, load_client
    from finetune_operator.reports.channel import start_channel

    kopf.configure(verbose=args.verbose)  # one log handler for kopf's and our loggers
    logging.getLogger("finetune_operator").setLevel(logging.DEBUG if args.verbose
                                                    else logging.INFO)
    kube = Kube(load_client(args.kubeconfig), timeout_seconds=settings.api_timeout_seconds)
    controller = Controller(kube, settings)
    channel = start_channel(settings, kube.token_review, controller.on_report)
    controller.report_config = channel.config
    controller.on_termination = channel.termination
    handlers.install(controller)
    # /metrics over HTTPS (the report channel's certificate unless it has its own), for
    # bearer tokens allowed to get /metrics (TokenReview + SubjectAccessReview, cached)
    metrics_tls = (metrics_server.tls_context(settings.metrics_tls_cert_file,
                                              settings.metrics_tls_key_file)
                   if settings.metrics_tls_cert_file else channel.server.context)
    metrics_server.serve(settings.metrics_port, metrics_tls, metrics_server.ScrapeAuth(
        lambda token: kube.may_access(token, metrics_server.SCRAPE)))
    endpoints = serve.Endpoints(controller.healthy, controller.ready,
                                lambda: controller.queue_view,
                                channel.cached_access(kube.may_list_jobs))
    serve.serve(endpoints, settings.health_port)  # /healthz, /readyz (plain HTTP: probes)
    channel.server.on_get = endpoints.visibility  # the queue, over the report port's TLS
    channel.server.serving = controller.may_write  # a standby sends clients on to the leader
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
