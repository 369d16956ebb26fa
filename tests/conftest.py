"""Shared fixtures: one real local cluster per test session, a fresh namespace per test.

Every test's tier marker comes from its folder (tests/unit -> unit, ...; `gpu` stays an extra
marker), a module that declares another tier is an error at collection, and every run ends with
the time spent per tier."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
CRD_FILE = ROOT / "crds" / "finetunejobs.finetune.dev.yaml"
SWEEP_CRD_FILE = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"
# folder under tests/ -> its tier marker (the folder name is the marker)
TIERS = ("unit", "cluster", "e2e", "trainer", "image", "chaos")


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the first folder under tests/ (None outside a tier folder)."""
    try:
        first = Path(path).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


def misplaced(tier: str | None, declared: set[str]) -> str | None:
    """Why a test with these declared tier markers cannot live in this tier's folder (None: it
    can)."""
    if tier is None:
        return f"is outside the tier folders (tests/{{{','.join(TIERS)}}}/): move it into one"
    other = sorted(declared - {tier})
    if other:
        return (f"is marked {', '.join(other)} but lives in tests/{tier}/, whose tests are "
                f"{tier} tests: move it to tests/{other[0]}/ or drop the marker")
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    errors: dict[str, str] = {}
    for item in items:
        tier = tier_of(item.path)
        declared = {m.name for m in item.iter_markers() if m.name in TIERS}
        why = misplaced(tier, declared)
        if why is not None:
            errors.setdefault(str(item.path.relative_to(ROOT)), why)
        elif tier is not None and tier not in declared:
            item.add_marker(tier)
    if errors:
        raise pytest.UsageError("tier markers follow folders:\n" + "\n".join(
            f"  {path} {why}" for path, why in sorted(errors.items())))


@dataclass
class TierTime:
    tests: int = 0
    seconds: float = 0.0  # setup + call + teardown, summed
    first: float = float("inf")
    last: float = 0.0


@dataclass
class RunClock:
    """This run's per-tier times, fed by every test report."""
    root: Path = ROOT
    started: float = 0.0
    tiers: dict[str, TierTime] = field(default_factory=dict)

    def record(self, report: pytest.TestReport) -> None:
        tier = tier_of(self.root / report.nodeid.split("::", 1)[0]) or "other"
        t = self.tiers.setdefault(tier, TierTime())
        t.seconds += report.duration
        t.first, t.last = min(t.first, report.start), max(t.last, report.stop)
        if report.when == "setup":
            t.tests += 1


CLOCK = RunClock()


def pytest_sessionstart(session: pytest.Session) -> None:
    CLOCK.root, CLOCK.started, CLOCK.tiers = session.config.rootpath, time.time(), {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    CLOCK.record(report)


LOG_OFFSET = pytest.StashKey[int]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> object:
    """Remember where the module's operator log stood when this test's body started."""
    op = getattr(item, "funcargs", {}).get("operator")
    if op is not None and getattr(op, "log_path", None) is not None and op.log_path.exists():
        item.stash[LOG_OFFSET] = op.log_path.stat().st_size
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> pytest.TestReport:
    """A failed test that ran against the operator process carries what the operator logged
    while it ran (the last 12,000 characters): a failure in CI can be read without a rerun."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed and LOG_OFFSET in item.stash:
        op = item.funcargs["operator"]  # type: ignore[attr-defined]
        with open(op.log_path, "rb") as f:
            f.seek(item.stash[LOG_OFFSET])
            text = f.read().decode(errors="replace")
        report.sections.append(("operator log while the test ran (tail)", text[-12000:]))
    return report


def tier_summary(times: dict[str, TierTime], wall: float) -> list[str]:
    """Lines of the per-tier table: tests, summed setup+call+teardown, and the wall-clock span
    from the tier's first test start to its last test end."""
    order = [*TIERS, "other"]
    lines = [f"{'tier':<8} {'tests':>6} {'test time':>10} {'span':>9}"]
    for tier in sorted(times, key=order.index):
        t = times[tier]
        lines.append(f"{tier:<8} {t.tests:>6} {t.seconds:>9.1f}s {t.last - t.first:>8.1f}s")
    lines.append(f"{'all':<8} {sum(t.tests for t in times.values()):>6} "
                 f"{sum(t.seconds for t in times.values()):>9.1f}s {wall:>8.1f}s wall")
    return lines


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CLOCK.tiers:
        return
    terminalreporter.write_sep("=", "time per tier")
    for line in tier_summary(CLOCK.tiers, time.time() - CLOCK.started):
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    """The local control plane: reuse a running one, else start one and stop it at the end."""
    from finetune_dev.devcluster import cluster as dc

    from .kube import Cluster

    cfg = dc.ClusterConfig()
    started_here = not dc.is_up(cfg)
    if started_here:
        dc.up(cfg)
    yield Cluster(cfg)
    if started_here and os.environ.get("FINETUNE_KEEP_CLUSTER") != "1":
        dc.down(cfg)


@pytest.fixture
def namespace(cluster, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh namespace enforcing the restricted Pod Security Standard (deleted afterwards,
    without waiting for finalization)."""
    from .kube import short_id

    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = cluster.create_namespace(f"t-{base}-{short_id()}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="session")
def crd_installed(cluster) -> Path:  # type: ignore[no-untyped-def]
    """The generated CRDs (FineTuneJob and FineTuneSweep: a test may create either, in any
    order), applied and Established; returns the FineTuneJob one."""
    from .kube import wait_for

    for crd in (CRD_FILE, SWEEP_CRD_FILE):
        assert crd.exists(), f"{crd} missing: run `make crd`"
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for name in ("finetunejobs.finetune.dev", "finetunesweeps.finetune.dev"):
        # polled: `kubectl wait` fails at once while a new CRD has no conditions yet
        wait_for(f"CRD {name} Established", lambda name=name: any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in ((cluster.get("crd", name) or {}).get("status") or {}).get(
                "conditions") or []), 60)
    return CRD_FILE


@pytest.fixture(scope="session")
def priority_classes(cluster) -> list[str]:  # type: ignore[no-untyped-def]
    """The chart's PriorityClass bands, rendered by helm from the chart (one source)."""
    import subprocess

    from finetune_dev.devcluster import build

    out = subprocess.run(
        [str(build.binary("helm")), "template", "ft", str(ROOT / "charts" / "finetune-operator"),
         "--show-only", "templates/priorityclasses.yaml"],
        capture_output=True, text=True, check=True).stdout
    cluster.kubectl("apply", "-f", "-", input=out)
    return re.findall(r"^  name: (\S+)$", out, re.M)


@pytest.fixture(scope="module")
def operator(cluster, crd_installed, priority_classes, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The real operator process (module-scoped); tests may kill and restart it."""
    from .operator_proc import OperatorProcess

    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture
def gpu_nodes(cluster):  # type: ignore[no-untyped-def]
    """make(count, gpus) -> nodeSelector of fresh fake GPU nodes only this test uses."""
    from .kube import short_id

    made: list[str] = []

    def make(count: int, gpus: int) -> dict[str, str]:
        sid = short_id()
        for i in range(count):
            made.append(cluster.gpu_node(f"t-{sid}-{i}", gpus, {"finetune.dev/test": sid}))
        return {"finetune.dev/test": sid}

    yield make
    if made:
        cluster.kubectl("delete", "node", *made, "--ignore-not-found", "--wait=false")


@pytest.fixture
def make_namespace(cluster, request):  # type: ignore[no-untyped-def]
    """make(gpu_quota=None) -> a fresh namespace enforcing the restricted Pod Security Standard
    (with a GPU ResourceQuota when asked)."""
    from .kube import short_id, wait_for

    made: list[str] = []

    def make(gpu_quota: int | None = None) -> str:
        name = f"t-{short_id()}"
        made.append(name)
        cluster.create_namespace(name)
        cluster.kubectl("create", "configmap", "data", "-n", name,
                        "--from-literal=train.jsonl={}")
        if gpu_quota is not None:
            cluster.kubectl("create", "quota", "gpus", "-n", name,
                            f"--hard=requests.nvidia.com/gpu={gpu_quota}")
            wait_for("quota status", lambda: (cluster.get("resourcequota", "gpus", name) or {})
                     .get("status", {}).get("hard"), 30)
        return name

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


# ---- admission mode kueue (tests/cluster/test_kueue_mode.py, tests/e2e/test_kueue_e2e.py) ----

@pytest.fixture(scope="module")
def kueue(cluster, tmp_path_factory) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    """Kueue v0.17.0 running out of cluster for the module (tests/builders/kueue.py)."""
    from tests.builders import kueue as kq

    work = tmp_path_factory.mktemp("kueue")
    with kq.running_kueue(cluster, work):
        yield work


@pytest.fixture(scope="module")
def kueue_operator(cluster, crd_installed, priority_classes, kueue,  # type: ignore[no-untyped-def]
                   tmp_path_factory):
    """The operator in admission mode kueue, and a WorkloadPriorityClass per band."""
    from tests.builders import kueue as kq

    from .operator_proc import OperatorProcess

    kq.priority_classes(cluster, ["finetune-critical", "finetune-high", "finetune-normal",
                                  "finetune-low"])
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"),
                         env={"FINETUNE_ADMISSION_MODE": "kueue"})
    op.start()
    yield op
    op.stop()
