"""The chart's alert rules: promtool `check rules` and `test rules` (fire / stay silent)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders.chart import CHART, ROOT, metric_names, rules_file_text

pytestmark = pytest.mark.unit

RULES = CHART / "rules" / "finetune-alerts.yaml"
RULE_TESTS = ROOT / "tests" / "unit" / "alerts" / "finetune-alerts.test.yaml"
ALERTS = {"FineTuneJobStuckInQueue", "FineTuneCheckpointTooOld", "FineTuneFailureRateHigh"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install the Debian package `prometheus` "
                    "(apt-get install --no-install-recommends prometheus; `make system-deps`)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def strip_header(text: str) -> str:
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("# "))


def rules(text: str) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def test_plain_rules_file_is_the_chart_rendering() -> None:
    assert strip_header(RULES.read_text()) == rules_file_text(), (
        f"{RULES} is stale: run scripts/render-alert-rules.sh")


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


def test_promtool_unit_tests_fire_and_stay_silent() -> None:
    proc = promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    # every alert has at least one firing and one silent expectation
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    checks = [c for t in cases for c in t["alert_rule_test"]]
    for alert in ALERTS:
        mine = [c for c in checks if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"no firing case for {alert}"
        assert any(not c["exp_alerts"] for c in mine), f"no silent case for {alert}"


def test_failure_rate_silent_namespaces_really_silent() -> None:
    """The firing case lists exactly the namespaces expected: good/few stay silent."""
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    (case,) = [c for t in cases for c in t["alert_rule_test"]
               if c["alertname"] == "FineTuneFailureRateHigh" and c["exp_alerts"]]
    assert {a["exp_labels"]["namespace"] for a in case["exp_alerts"]} == {"bad", "nocompletions"}


def test_rules_are_complete_and_use_real_metrics() -> None:
    rs = rules(RULES.read_text())
    assert {r["alert"] for r in rs} == ALERTS
    known = metric_names()
    for r in rs:
        assert r["labels"]["severity"] in {"info", "warning", "critical", "page"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        used = set(re.findall(r"\bfinetune_[a-z_]+", r["expr"]))
        assert used and used <= known, f"{r['alert']}: unknown {sorted(used - known)}"


def test_thresholds_come_from_values(tmp_path: Path) -> None:
    values = {"monitoring": {"alerts": {
        "stuckInQueue": {"seconds": 600, "for": "1m", "severity": "critical"},
        "checkpointTooOld": {"factor": 5, "rateWindow": "30m", "minSeconds": 60,
                             "maxSeconds": 7200},
        "failureRate": {"threshold": 0.2, "window": "6h", "minFailures": 10},
    }}}
    text = rules_file_text(values)
    by_name = {r["alert"]: r for r in rules(text)}
    stuck = by_name["FineTuneJobStuckInQueue"]
    assert re.search(r">\s*600\b", stuck["expr"]) and stuck["for"] == "1m"
    assert stuck["labels"]["severity"] == "critical"
    ckpt = by_name["FineTuneCheckpointTooOld"]["expr"]
    assert "5 * max by" in ckpt and "[30m]" in ckpt and "60, 7200" in ckpt
    rate = by_name["FineTuneFailureRateHigh"]["expr"]
    assert "> 0.2" in rate and "[6h]" in rate and ">= 10" in rate
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
