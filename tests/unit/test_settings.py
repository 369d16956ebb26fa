"""Operator settings: env names and defaults from docs/contracts.md, flags, errors, helpers."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from finetune_operator.settings import (
    SECTION_OF,
    OperatorSettings,
    SettingsError,
    add_arguments,
    env_name,
)
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _contract_table() -> dict[str, str]:
    """env name -> default, from the "Operator settings" table of docs/contracts.md."""
    text = CONTRACTS.read_text()
    section = text.split("## Operator settings", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(FINETUNE_[A-Z_]+)` \| ([^|]+) \|", section, re.MULTILINE)
    assert len(rows) >= 10, "could not read the settings table from docs/contracts.md"
    out = {}
    for name, default in rows:
        default = default.strip()
        m = re.match(r'^`([^`]*)`|^"([^"]*)"', default)
        assert m, f"unparsed default {default!r} for {name}"
        out[name] = m.group(1) if m.group(1) is not None else m.group(2)
    return out


def test_env_names_and_defaults_match_the_contract() -> None:
    table = _contract_table()
    defaults = OperatorSettings.from_env({}).as_env()
    assert set(defaults) == set(table), "settings and docs/contracts.md list different variables"
    parsed_doc = OperatorSettings.from_env(table)
    assert parsed_doc == OperatorSettings.from_env({})


def test_from_env_reads_every_kind_of_value() -> None:
    s = OperatorSettings.from_env(
        {
            "FINETUNE_NAMESPACES": " team-a, team-b ,",
            "FINETUNE_ALLOWED_PRIORITY_CLASSES": "finetune-high,finetune-low",
            "FINETUNE_DEFAULT_PRIORITY_CLASS": "finetune-low",
            "FINETUNE_NAMESPACE_PRIORITY_CLASSES": '{"team-a": ["finetune-high", "x"]}',
            "FINETUNE_AGING_CAP": "50",
            "FINETUNE_GRACE_PERIOD_SECONDS": "300",
            "FINETUNE_MIN_RUNTIME_BEFORE_PREEMPTION_SECONDS": "0.5",
            "UNRELATED": "ignored",
        }
    )
    assert s.admission.namespaces == ["team-a", "team-b"]
    assert s.admission.allowed_priority_classes == ["finetune-high", "finetune-low"]
    assert s.admission.namespace_priority_classes == {"team-a": ["finetune-high", "x"]}
    assert s.admission.aging_cap == 50
    assert s.trainer.grace_period_seconds == 300
    assert s.admission.min_runtime_before_preemption_seconds == 0.5
    assert OperatorSettings.from_env(s.as_env()) == s


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FINETUNE_AGING_CAP": "lots"}, "FINETUNE_AGING_CAP"),
        ({"FINETUNE_METRICS_PORT": "70000"}, "FINETUNE_METRICS_PORT"),
        ({"FINETUNE_GRACE_PERIOD_SECONDS": "0"}, "FINETUNE_GRACE_PERIOD_SECONDS"),
        ({"FINETUNE_BACKOFF_BASE_SECONDS": "nan"}, "FINETUNE_BACKOFF_BASE_SECONDS"),
        ({"FINETUNE_NAMESPACE_PRIORITY_CLASSES": "{team-a: x}"},
         "FINETUNE_NAMESPACE_PRIORITY_CLASSES"),
        ({"FINETUNE_NAMESPACE_PRIORITY_CLASSES": '{"team-a": "finetune-high"}'},
         "FINETUNE_NAMESPACE_PRIORITY_CLASSES"),
        ({"FINETUNE_NAMESPACE_PRIORITY_CLASSES": '{"team-a": []}'},
         "FINETUNE_NAMESPACE_PRIORITY_CLASSES"),
        ({"FINETUNE_ALLOWED_PRIORITY_CLASSES": "Not_A_Name"}, "FINETUNE_ALLOWED_PRIORITY_CLASSES"),
        ({"FINETUNE_ALLOWED_PRIORITY_CLASSES": ""}, "FINETUNE_ALLOWED_PRIORITY_CLASSES"),
        ({"FINETUNE_DEFAULT_PRIORITY_CLASS": "system-cluster-critical"},
         "FINETUNE_DEFAULT_PRIORITY_CLASS"),
        ({"FINETUNE_NAMESPACES": "Team_A"}, "FINETUNE_NAMESPACES"),
        ({"FINETUNE_HEALTH_PORT": "8080"}, "FINETUNE_HEALTH_PORT"),
    ],
)
def test_invalid_env_fails_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named) as e:
        OperatorSettings.from_env(env)
    assert isinstance(e.value, ValueError)


def test_flags_override_env_and_are_named_in_errors() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    env = {"FINETUNE_AGING_CAP": "7", "FINETUNE_TRAINER_IMAGE": "from-env:1"}
    args = parser.parse_args(["--aging-cap", "5", "--namespaces", "a,b",
                              "--namespace-priority-classes", '{"a": ["finetune-low"]}'])
    s = OperatorSettings.from_args(args, env)
    assert s.admission.aging_cap == 5
    assert s.admission.namespaces == ["a", "b"]
    assert s.trainer.trainer_image == "from-env:1"
    assert s.admission.namespace_priority_classes == {"a": ["finetune-low"]}
    bad = parser.parse_args(["--grace-period-seconds", "soon"])
    with pytest.raises(SettingsError, match="--grace-period-seconds"):
        OperatorSettings.from_args(bad, {})


def test_every_setting_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    assert set(SECTION_OF) <= dests
    assert env_name("aging_cap") == "FINETUNE_AGING_CAP"


def test_allowed_classes_per_namespace_replace_the_global_list() -> None:
    s = make_settings(namespace_priority_classes={"team-a": ["finetune-high", "finetune-normal"]})
    assert s.allowed_classes("team-a") == ["finetune-high", "finetune-normal"]
    assert s.allowed_classes("team-b") == s.admission.allowed_priority_classes
    # the preempting band is granted per namespace, never by default (issue 11)
    assert "finetune-critical" not in s.allowed_classes("team-b")
    granted = make_settings(namespace_priority_classes={"team-b": ["finetune-critical"]})
    assert granted.allowed_classes("team-b") == ["finetune-critical"]


def test_resolve_priority_class_rejects_classes_outside_the_allowed_set() -> None:
    s = make_settings(namespace_priority_classes={"team-a": ["finetune-high", "finetune-normal"]})
    job = make_job(namespace="team-a", priority_class="system-cluster-critical")
    assert s.resolve_priority_class(job) == (
        None,
        "priorityClassName system-cluster-critical is not allowed in namespace team-a; "
        "allowed: finetune-high, finetune-normal; ask your platform team or pick one of these",
    )
    cls, err = s.resolve_priority_class(
        make_job(namespace="team-a", priority_class="finetune-high")
    )
    assert (cls, err) == ("finetune-high", None)
    cls, err = s.resolve_priority_class(
        make_job(namespace="team-a", priority_class="finetune-critical")
    )
    assert cls is None and err is not None and "finetune-critical" in err


def test_resolve_priority_class_default_and_default_not_allowed() -> None:
    s = make_settings(namespace_priority_classes={"team-b": ["finetune-low"]})
    assert s.resolve_priority_class(make_job(priority_class=None)) == ("finetune-normal", None)
    cls, err = s.resolve_priority_class(make_job(namespace="team-b", priority_class=None))
    assert cls is None
    assert err is not None and "default finetune-normal" in err and "finetune-low" in err


def test_may_preempt_and_watches() -> None:
    s = make_settings(preempting_priority_classes=["finetune-critical", "finetune-high"],
                      namespaces=["team-a"])
    assert s.may_preempt("finetune-high")
    assert not s.may_preempt("finetune-normal")
    assert not s.may_preempt(None)
    assert s.watches("team-a") and not s.watches("team-b")
    assert make_settings().watches("anything")


def test_backoff_doubles_and_is_capped() -> None:
    s = make_settings(backoff_base_seconds=10)
    assert [s.backoff_seconds(n) for n in (0, 1, 2, 3)] == [0.0, 10.0, 20.0, 40.0]
    assert s.backoff_seconds(7) == 600.0
    assert s.backoff_seconds(10_000) == 600.0
