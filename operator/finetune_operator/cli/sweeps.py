"""``kubectl finetune sweep list|describe|compare`` and ``kubectl finetune compare JOB...``:
API calls through cli/client.py's PluginApi; the rows and tables come from the view layer
(view/compare.py, view/sweeps.py), printed by cli/render.py."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import IO

from kubernetes.client.exceptions import ApiException

from finetune_api.labels import SWEEP_LABEL
from finetune_api.sweep import FineTuneSweep
from finetune_operator.cli import render
from finetune_operator.cli.client import PluginApi
from finetune_operator.cli.commands import _detail, api_errors, get_job
from finetune_operator.cli.errors import CliError, forbidden_message
from finetune_operator.sweep.plan import owned_by
from finetune_operator.view.compare import (
    CompareRow,
    compare_rows,
    compare_table,
    comparison,
    default_metric,
)
from finetune_operator.view.sweeps import describe_sweep, sweep_row


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sweep_error(e: ApiException, api: PluginApi, namespace: str | None,
                 name: str | None) -> CliError:
    status = e.status or 0
    if status == 404 and name:
        return CliError(f"FineTuneSweep {name} not found in namespace {namespace}; list them "
                        f"with kubectl finetune sweep list -n {namespace}")
    if status == 404:
        return CliError(f"the FineTuneSweep API is not served at {api.server}: {_detail(e)}; "
                        "install the finetune-operator chart (it brings both CRDs) or check "
                        "--context")
    if status == 403:
        return CliError(forbidden_message(
            _detail(e), verb="read", target=f"FineTuneSweep {name}" if name else "FineTuneSweeps",
            namespace=namespace))
    return CliError(f"reading FineTuneSweeps failed: HTTP {status}: {_detail(e)}")


def sweep_and_trials(api: PluginApi, namespace: str, name: str) -> tuple[dict, list[dict]]:
    try:
        sweep = api.get_sweep(namespace, name)
    except ApiException as e:
        raise _sweep_error(e, api, namespace, name) from e
    uid = (sweep.get("metadata") or {}).get("uid", "")
    with api_errors(api, "list", namespace):
        jobs = api.list_jobs_labeled(namespace, f"{SWEEP_LABEL}={name}")
    return sweep, [j for j in jobs if owned_by(j, uid)]


def _rows(sweep: dict, trials: list[dict]) -> list[CompareRow]:
    spec = (sweep.get("spec") or {})
    objective = spec.get("objective") or {}
    metric = objective.get("metric") or "evalLoss"
    direction = objective.get("direction")
    minimize = None if direction is None else direction == "minimize"
    return compare_rows(trials, _now(), metric, minimize)


def cmd_sweep(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    action = args.sweep_command
    if action in ("list", "ls"):
        scope = None if args.all_namespaces else namespace
        try:
            sweeps = api.list_sweeps(scope)
        except ApiException as e:
            raise _sweep_error(e, api, scope, None) from e
        if args.output in ("json", "yaml"):
            out.write(render.dump(render.as_list(sweeps), args.output))
        elif not sweeps:
            where = "any namespace" if scope is None else f"namespace {scope}"
            out.write(f"No FineTuneSweeps in {where}; create one with kubectl apply -f "
                      "examples/sweep.yaml (see docs/sweeps.md)\n")
        else:
            out.write(render.sweep_list_table([sweep_row(s, _now()) for s in sweeps],
                                              all_namespaces=scope is None))
        return 0
    sweep, trials = sweep_and_trials(api, namespace, args.name)
    rows = _rows(sweep, trials)
    if args.output in ("json", "yaml"):
        out.write(render.dump(comparison(sweep, rows) if action == "compare"
                           else {**sweep, "trials": rows}, args.output))
        return 0
    if action == "describe":
        out.write(render.sweep_describe_text(describe_sweep(sweep, rows)))
        return 0
    if not rows:
        out.write(f"FineTuneSweep {namespace}/{args.name} has no trials yet "
                  f"({(sweep.get('status') or {}).get('phase') or 'Pending'})\n")
        return 0
    _validate_note(sweep, out)
    out.write(render.compare_table(compare_table(rows)))
    return 0


def _validate_note(sweep: dict, out: IO[str]) -> None:
    try:
        FineTuneSweep.from_body(sweep)
    except Exception as e:  # the comparison is still useful; say why the sweep is off
        out.write(f"note: the sweep's spec does not parse ({type(e).__name__}); "
                  "see kubectl finetune sweep describe\n")


def cmd_compare(api: PluginApi, args: argparse.Namespace, namespace: str, out: IO[str]) -> int:
    if len(args.jobs) < 1:
        raise CliError("name at least one FineTuneJob: kubectl finetune compare JOB [JOB...]")
    jobs = [get_job(api, namespace, n) for n in dict.fromkeys(args.jobs)]
    metric = args.metric or default_metric(jobs)
    minimize = None if args.direction is None else args.direction == "minimize"
    rows = compare_rows(jobs, _now(), metric, minimize)
    if args.output in ("json", "yaml"):
        out.write(render.dump(comparison(None, rows), args.output))
        return 0
    out.write(render.compare_table(compare_table(rows)))
    return 0
