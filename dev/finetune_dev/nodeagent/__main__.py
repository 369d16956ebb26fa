"""`python -m finetune_dev.nodeagent --node NAME --gpus N [--kubeconfig PATH]
[--root DIR]`: register NAME as a Ready node and run the pods bound to it as local processes.
SIGTERM/SIGINT stop every pod gracefully (SIGTERM, grace period, SIGKILL), then the agent."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from finetune_dev.nodeagent.process import run_agent
from finetune_dev.nodeagent.sources import POD_IP_ENV


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--label wants KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="finetune-nodeagent", description=__doc__)
    ap.add_argument("--node", required=True, help="Node name (also kubernetes.io/hostname)")
    ap.add_argument("--gpus", type=int, required=True, help="nvidia.com/gpu capacity (accounting)")
    ap.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, else the dev cluster's")
    ap.add_argument("--root", type=Path,
                    help="state dir: pvc/, pods/ (default: <cluster state>/nodeagent)")
    ap.add_argument("--cpu", default="64", help="cpu capacity to advertise (not enforced)")
    ap.add_argument("--memory", default="512Gi", help="memory capacity to advertise (not enforced)")
    ap.add_argument("--pods", default="110", help="pod capacity to advertise")
    ap.add_argument("--label", type=_label, action="append", default=[], metavar="KEY=VALUE",
                    help="extra node label (repeatable)")
    ap.add_argument("--pod-ip", default=None,
                    help="report this address (a non-loopback one of this host) as every pod's "
                    "status.podIP, so the API server's service proxy reaches pods that listen "
                    "on every interface (default 127.0.0.1, which it refuses)")
    args = ap.parse_args(argv)
    if args.pod_ip:
        os.environ[POD_IP_ENV] = args.pod_ip
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s nodeagent[%(threadName)s] %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_agent(args.node, args.gpus, kubeconfig=args.kubeconfig, root=args.root, cpu=args.cpu,
                  memory=args.memory, pods=args.pods, labels=dict(args.label), stop=stop)
    except RuntimeError as e:
        print(f"finetune-nodeagent: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
