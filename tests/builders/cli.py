"""The kubectl plugin run in this process against the local cluster, and its tables parsed back
(tests/cluster/test_cli.py, test_visibility.py, test_helm_install.py).

    from tests.builders.cli import cli, ok, table

    rc, out, err = cli(cluster, "list", "-n", ns)
    rows = table(ok(cluster, "top", "-A"))  # [{"NAMESPACE": ..., "RESOURCE": ...}, ...]
"""

from __future__ import annotations

import io
from pathlib import Path

from finetune_operator.cli import main
from tests.kube import Cluster

SWEEP_CRD = Path(__file__).resolve().parents[2] / "crds" / "finetunesweeps.finetune.dev.yaml"


def cli(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    """Run the plugin in this process, as `kubectl finetune ARGS` would (the admin's
    kubeconfig): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--kubeconfig", str(cluster.kubeconfig), *args], out, err)
    return rc, out.getvalue(), err.getvalue()


def ok(cluster: Cluster, *args: str) -> str:
    rc, out, err = cli(cluster, *args)
    assert rc == 0, f"kubectl finetune {' '.join(args)} failed ({rc}): {err}"
    return out


def table(text: str) -> list[dict[str, str]]:
    """Parse a plugin table by its header's column offsets."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header = lines[0]
    names = header.split("   ")
    names = [n.strip() for n in names if n.strip()]
    starts, pos = [], 0
    for n in names:  # left to right: NAME also occurs inside NAMESPACE
        pos = header.index(n, pos)
        starts.append(pos)
        pos += len(n)
    rows = []
    for ln in lines[1:]:
        cells = [ln[s:e].strip() for s, e in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows
