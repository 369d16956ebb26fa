"""``kubectl finetune``: a kubectl plugin for FineTuneJobs (console script ``kubectl-finetune``).

Layers: ``args`` (command line), ``manifest`` (pure: flags/file -> validated manifest),
``commands``, ``sweeps`` and ``output`` (API calls through ``client.PluginApi``), the view layer
``finetune_operator.view`` (pure: API objects -> view models, shared with the web console) and
``render`` (view models -> tables, describe text, json/yaml). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, TYPE_CHECKING

from finetune_operator.cli.errors import CliError

if TYPE_CHECKING:
    from finetune_operator.cli.client import PluginApi

__all__ = ["CliError", "main"]


def main(argv: list[str] | None = None, out: IO[str] | None = None,
         err: IO[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 error, 2 usage)."""
    from finetune_operator.cli.args import build_parser

    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return _run(args, out)
    except CliError as e:
        err.write(f"error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `kubectl finetune logs x | head`
        return 0


def _run(args: argparse.Namespace, out: IO[str]) -> int:
    from finetune_operator.cli import commands

    cmd = args.command
    if cmd == "submit" and args.dry_run == "client":
        return commands.cmd_submit(None, args, _namespace_offline(args), out)
    if cmd == "console":
        from finetune_operator.console.main import run_local

        ns = [n for n in [args.namespace, *args.watch_namespace] if n]
        return run_local(args.kubeconfig, args.context, ns, args.port, not args.no_browser,
                         out)
    import urllib3

    api, namespace = _connect(args)
    try:
        if cmd == "submit":
            return commands.cmd_submit(api, args, namespace, out)
        if cmd in ("list", "ls"):
            return commands.cmd_list(api, args, namespace, out)
        if cmd == "describe":
            return commands.cmd_describe(api, args, namespace, out)
        if cmd in ("suspend", "resume"):
            return commands.cmd_suspend(api, args, namespace, out, suspend=cmd == "suspend")
        if cmd == "logs":
            return commands.cmd_logs(api, args, namespace, out)
        if cmd == "top":
            return commands.cmd_top(api, args, namespace, out)
        if cmd == "output":
            from finetune_operator.cli.output import cmd_output

            return cmd_output(api, args, namespace, out)
        if cmd in ("serve", "chat"):
            from finetune_operator.cli import serving

            if cmd == "serve":
                return serving.cmd_serve(api, args, namespace, out)
            return serving.cmd_chat(api, args, namespace, out)
        if cmd in ("sweep", "compare"):
            from finetune_operator.cli import sweeps

            if cmd == "sweep":
                return sweeps.cmd_sweep(api, args, namespace, out)
            return sweeps.cmd_compare(api, args, namespace, out)
    except urllib3.exceptions.HTTPError as e:  # connection refused, TLS, timeouts
        text = str(e) if len(str(e)) < 200 else str(e)[:200] + "..."
        raise CliError(f"cannot reach the API server at {api.server}: {text}; is the cluster "
                       "up? check --kubeconfig / KUBECONFIG / --context") from e
    raise CliError(f"unknown command {cmd}; see kubectl finetune --help")


def _connect(args: argparse.Namespace) -> tuple[PluginApi, str]:
    from kubernetes.config import ConfigException

    from finetune_operator.cli.client import PluginApi, plugin_client

    try:
        client, ctx_namespace = plugin_client(args.kubeconfig, args.context)
    except (ConfigException, OSError) as e:
        raise CliError(f"cannot load Kubernetes credentials: {e}; pass --kubeconfig FILE, set "
                       "KUBECONFIG, or pick a --context that exists") from e
    client.configuration.retries = 1
    return PluginApi(client), args.namespace or ctx_namespace


def _namespace_offline(args: argparse.Namespace) -> str | None:
    """-n, else the kubeconfig context's namespace when one can be read; None otherwise."""
    if args.namespace:
        return str(args.namespace)
    try:
        from finetune_operator.cli.client import plugin_client

        return plugin_client(args.kubeconfig, args.context)[1]
    except Exception:  # no kubeconfig at all: the manifest just names no namespace
        return None
