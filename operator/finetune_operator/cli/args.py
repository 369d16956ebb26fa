"""The command line of ``kubectl finetune`` (argparse; no API calls)."""

from __future__ import annotations

import argparse
from typing import Any, get_args

from finetune_api.spec import DEFAULT_GPU_RESOURCE
from finetune_operator.cli.manifest import SubmitOptions

OUTPUTS = ("table", "wide", "json", "yaml")

EPILOG = """examples:
  kubectl finetune submit --name bot --model-hub Qwen/Qwen2.5-0.5B \\
      --dataset-configmap support-data:train.jsonl --gpus 2 --priority finetune-high
  kubectl finetune list -A
  kubectl finetune describe bot
  kubectl finetune suspend bot; kubectl finetune resume bot
  kubectl finetune logs bot --tail 50
  kubectl finetune output bot
  kubectl finetune top -A
  kubectl finetune sweep list; kubectl finetune sweep compare lr-sweep -o yaml
  kubectl finetune compare bot-a bot-b --metric testRougeL
  kubectl finetune console
  kubectl finetune serve bot; kubectl finetune chat bot-server --adapter bot -m "hello"
docs: docs/cli.md, docs/sweeps.md, docs/serving.md"""


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Connection and output options, accepted before and after the subcommand."""
    d = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--kubeconfig", default=d,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    g.add_argument("--context", default=d, help="kubeconfig context (default: the current one)")
    g.add_argument("-n", "--namespace", default=d,
                   help="namespace (default: the context's namespace)")
    g.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS if suppress
                   else "table", help="table (default), wide, json or yaml")
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="kubectl finetune", parents=[_common(False)],
        description="Submit and watch FineTuneJobs: queue position, progress, preemptions, "
        "GPU quota.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = _common(True)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("submit", parents=[common], help="create a FineTuneJob from flags or -f",
                       description="Create a FineTuneJob from a manifest (-f) or from flags. "
                       "Unset fields get the API server's defaults.")
    s.add_argument("-f", "--filename", help="manifest file (YAML or JSON; '-' = stdin)")
    s.add_argument("--dry-run", nargs="?", const="client", choices=("client", "server"),
                   help="print the manifest instead of creating it (server: let the API server "
                   "validate it too)")
    s.add_argument("--name", help="job name")
    g = s.add_argument_group("model and data")
    g.add_argument("--model", help="model name/label (default: the hub repo or the PVC path)")
    g.add_argument("--model-pvc", metavar="CLAIM:PATH", help="model files on a PVC")
    g.add_argument("--model-hub", metavar="REPO[@REVISION]", help="model from a hub repo")
    g.add_argument("--dataset-configmap", metavar="NAME:KEY", help="dataset in a ConfigMap key")
    g.add_argument("--dataset-pvc", metavar="CLAIM:PATH", help="dataset file on a PVC")
    g.add_argument("--dataset-hub", metavar="REPO[@SPLIT]", help="dataset from a hub repo")
    g.add_argument("--dataset-format", choices=("alpaca", "sharegpt", "messages", "text"))
    g = s.add_argument_group("method and training")
    g.add_argument("--method", choices=("lora", "qlora", "full"))
    g.add_argument("--lora-rank", type=int)
    g.add_argument("--lora-alpha", type=float)
    g.add_argument("--quantization-bits", type=int, choices=(4, 8), help="qlora only (default 4)")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--epochs", type=float)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--gradient-accumulation-steps", type=int)
    g.add_argument("--precision", choices=("bf16", "fp16", "fp32"))
    g = s.add_argument_group("resources and scheduling")
    g.add_argument("--gpus", type=int, help="GPUs per node (0 = CPU job)")
    g.add_argument("--nodes", type=int, help="nodes (> 1 = multi-node gang)")
    g.add_argument("--gpu-resource", help="e.g. nvidia.com/mig-1g.10gb")
    g.add_argument("--cpu")
    g.add_argument("--memory")
    g.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--priority", help="PriorityClass, e.g. finetune-high")
    g.add_argument("--backoff-limit", type=int)
    g.add_argument("--suspend", action="store_true", help="create it suspended")
    g = s.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-size", help="size of the PVC the operator creates, e.g. 20Gi")
    g.add_argument("--checkpoint-claim", help="an existing PVC (the job gets its own sub-path)")
    g.add_argument("--checkpoint-interval", type=int, metavar="STEPS")
    g.add_argument("--image", help="trainer image override")
    g.add_argument("--merge-adapter", action="store_true")
    g.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="any other spec field, e.g. --set training.warmupRatio=0.03")

    ls = sub.add_parser("list", aliases=["ls"], parents=[common], help="list FineTuneJobs")
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    ls.add_argument("--queue", action="store_true",
                    help="exact queue positions from the operator's visibility endpoint (your "
                    "bearer token), reached through the API server's proxy to the chart's "
                    "reports Service")
    ls.add_argument("--operator-namespace", metavar="NAMESPACE",
                    help="where the finetune-operator chart is installed, for --queue (default: "
                    "$FINETUNE_OPERATOR_NAMESPACE, else finetune-system)")
    ls.add_argument("--operator-service", metavar="NAME",
                    help="the chart's reports Service there, for --queue (default: "
                    "$FINETUNE_OPERATOR_SERVICE, else the one labelled "
                    "app.kubernetes.io/component=reports, else finetune-operator-reports)")

    d = sub.add_parser("describe", parents=[common],
                       help="spec summary, status, counters, conditions and events of a job")
    d.add_argument("name")
    d.add_argument("--events", type=int, default=20, metavar="N", help="recent events shown")

    for verb, text in (("suspend", "checkpoint and stop a job, keeping its place"),
                       ("resume", "put a suspended job back in the queue")):
        p = sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("name")

    lg = sub.add_parser("logs", parents=[common],
                        help="trainer logs of the current attempt (rank 0)")
    lg.add_argument("name")
    lg.add_argument("--attempt", type=int, help="attempt (default: the current one)")
    lg.add_argument("--rank", type=int, default=0, help="node rank of a multi-node job")
    lg.add_argument("-c", "--container", default="trainer")
    lg.add_argument("--tail", type=int, metavar="LINES")
    lg.add_argument("-f", "--follow", action="store_true")

    t = sub.add_parser("top", parents=[common],
                       help="GPUs held by FineTuneJobs vs ResourceQuota, and the queue")
    t.add_argument("-A", "--all-namespaces", action="store_true")
    t.add_argument("--gpu-resource", metavar="RESOURCE",
                   help="GPU resource of jobs that name none: the operator's default (default: "
                   "the one the ResourceQuotas limit, else the one the jobs name, else "
                   f"{DEFAULT_GPU_RESOURCE})")
    co = sub.add_parser("console", parents=[common], help="the web console on localhost, as "
                        "you (docs/console.md)", description="Serve the fine-tuning web console "
                        "on 127.0.0.1 with your kubeconfig's credentials and open it in the "
                        "browser; nothing is installed in the cluster.")
    co.add_argument("--port", type=int, default=8001, help="local port (0: any free one)")
    co.add_argument("--no-browser", action="store_true", help="print the URL only")
    co.add_argument("--watch-namespace", action="append", default=[], metavar="NAMESPACE",
                    help="more namespaces to show beside -n (repeatable)")
    from finetune_operator.cli.output import add_parser as add_output_parser

    add_output_parser(sub, common)
    _sweep_parsers(sub, common)
    from finetune_operator.cli.serving import add_parsers as add_serving_parsers

    add_serving_parsers(sub, common)
    return ap


def _sweep_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    from finetune_api.sweep import ObjectiveMetric

    metrics = get_args(ObjectiveMetric)
    sw = sub.add_parser("sweep", parents=[common], help="FineTuneSweeps: list, describe, compare",
                        description="FineTuneSweeps and their trials, ranked by the sweep's "
                        "objective metric (docs/sweeps.md).")
    ssub = sw.add_subparsers(dest="sweep_command", metavar="ACTION", required=True)
    sl = ssub.add_parser("list", aliases=["ls"], parents=[common], help="list FineTuneSweeps")
    sl.add_argument("-A", "--all-namespaces", action="store_true")
    for action, text in (("describe", "the sweep's search, status and ranked trials"),
                         ("compare", "the trials ranked by the objective: parameters, metrics, "
                                     "GPU-hours, preemptions")):
        p = ssub.add_parser(action, parents=[common], help=text)
        p.add_argument("name")
    c = sub.add_parser("compare", parents=[common], help="rank any FineTuneJobs by a metric",
                       description="Rank FineTuneJobs by a metric of status.output.metrics; the "
                       "spec fields that differ among them are shown as parameters.")
    c.add_argument("jobs", nargs="+", metavar="JOB")
    c.add_argument("--metric", choices=metrics,
                   help="default: testLoss, else evalLoss, else trainLoss (what the jobs report)")
    c.add_argument("--direction", choices=("minimize", "maximize"),
                   help="default: minimize losses and perplexity, maximize scores")


def submit_options(args: argparse.Namespace, namespace: str | None) -> SubmitOptions:
    fields = SubmitOptions.__dataclass_fields__
    values = {k: getattr(args, k) for k in fields if hasattr(args, k) and k != "namespace"}
    return SubmitOptions(namespace=namespace, **values)
