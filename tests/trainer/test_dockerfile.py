"""Dockerfile.trainer stays consistent with pyproject (no Docker engine here to build it)."""

from __future__ import annotations

import re
import tomllib

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.unit

DOCKERFILE = ROOT / "Dockerfile.trainer"


def test_multi_stage_non_root_and_pinned_base() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) >= 2, "multi-stage"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1)), "pinned base"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["finetune-trainer"\]', text, re.M)
    assert "COPY --from=builder /opt/venv /opt/venv" in text


def test_installs_the_pinned_extras_ci_installs() -> None:
    text = DOCKERFILE.read_text()
    m = re.search(r'pip install "\.\[([a-z,]+)\]"', text)
    assert m, "installs the project with extras"
    extras = set(m.group(1).split(","))
    assert {"trainer", "gpu"} <= extras
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ci = re.search(r"pip install .*-e '\.\[([a-z,]+)\]'", (ROOT / "Makefile").read_text())
    assert ci and "trainer" in ci.group(1).split(","), "CI installs the same trainer extra"
    for extra in sorted(extras):
        for req in project["optional-dependencies"][extra]:
            assert "==" in req, f"{extra}: {req} is not pinned"
    for req in project["dependencies"]:
        assert "==" in req, f"{req} is not pinned"
    assert "finetune-trainer" in project["scripts"]
