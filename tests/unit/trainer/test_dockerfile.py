"""The Dockerfiles' supply-chain rules, checked on their text (tests/image runs the built images).

Both: multi-stage, the public base pinned by digest (overridable with BASE_IMAGE, as `make images`
does with its local Debian base), non-root, no compiler or build tools in the runtime stage, the
pinned extras CI installs, a .dockerignore that lets only the package sources in."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.builders.trainer import ROOT

pytestmark = pytest.mark.unit

DOCKERFILES = ["Dockerfile.operator", "Dockerfile.trainer"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "python3-dev", "libc6-dev")


def _stages(name: str) -> tuple[str, str]:
    text = (ROOT / name).read_text()
    froms = [m.start() for m in re.finditer(r"^FROM\s", text, re.M)]
    assert len(froms) >= 2, f"{name}: build stages and a runtime stage"
    return text[froms[0]:froms[-1]], text[froms[-1]:]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_pinned_by_digest_and_overridable(name: str) -> None:
    text = (ROOT / name).read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1))
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms[0] == froms[-1] == "${BASE_IMAGE}"
    assert all(f == "${BASE_IMAGE}" or f in re.findall(r"^FROM .* AS (\S+)$", text, re.M)
               for f in froms), froms


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_is_non_root_without_build_tools(name: str) -> None:
    builder, runtime = _stages(name)
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^COPY --from=(builder|deps) /opt/venv /opt/venv$", runtime, re.M)
    installs = " ".join(re.findall(r"apt-get install([^&\n]*)", runtime))
    assert not [t for t in BUILD_TOOLS if re.search(rf"(?<![\w-]){re.escape(t)}(?![\w-])",
                                                    installs)], installs
    # the host's package-index settings exist in the builder stage only
    assert "ARG PIP_" in builder and "ARG PIP_" not in runtime


def test_trainer_prebuilds_deepspeed_ops_with_a_compiler_in_the_builder() -> None:
    builder, runtime = _stages("Dockerfile.trainer")
    assert re.search(r"apt-get install[^\n]*g\+\+", builder)
    assert "DS_BUILD_CPU_ADAM=1" in builder and "installed_ops['cpu_adam']" in builder
    assert "libgomp1" in runtime  # the OpenMP runtime the op links, not a compiler
    assert re.search(r'^ENTRYPOINT \["finetune-trainer"\]', runtime, re.M)


@pytest.mark.parametrize(("name", "dists"), [("Dockerfile.operator", {"api", "operator"}),
                                             ("Dockerfile.trainer", {"api", "trainer[gpu]"})])
def test_installs_its_own_distributions_pinned(name: str, dists: set[str]) -> None:
    """Each image installs its product's distribution and the api, nothing else of ours (no
    operator in the trainer image, no trainer or dev tooling in the operator image), and every
    third-party requirement of those is pinned."""
    builder, _ = _stages(name)
    m = re.search(r"pip install --no-deps (.+?) \\$", builder, re.M)
    assert m, "the project's own distributions are installed without dependencies"
    installed = {a.strip("'\"").removeprefix("./") for a in m.group(1).split()}
    assert installed == dists
    deps = re.findall(r"requirements\.py (?:--extras-only )?([^>\n]+?)\s*>", builder)
    assert {d.strip("'").split("[")[0] for dd in deps for d in dd.split()} == {
        d.split("[")[0] for d in dists}
    for dist in dists:
        folder, _, extras = dist.partition("[")
        project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"]) + [
            r for e in filter(None, extras.rstrip("]").split(","))
            for r in project["optional-dependencies"][e]]
        for req in reqs:
            assert "==" in req, f"{folder}: {req} is not pinned"
            assert not req.startswith("finetune-dev"), f"{folder} depends on the dev tooling"
    ci = (ROOT / "Makefile").read_text()
    for dist in dists:
        assert f"-e ./{dist.split('[')[0]}" in ci, "CI installs the same distributions"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerignore_lets_only_the_sources_in(name: str) -> None:
    lines = [ln for ln in (ROOT / f"{name}.dockerignore").read_text().splitlines()
             if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = [ln[1:] for ln in lines if ln.startswith("!")]
    assert not [a for a in allowed if a.startswith(("tests", ".venv", "benchmarks"))]
    assert {"**/__pycache__", "**/*.pyc"} <= set(lines)
    text = (ROOT / name).read_text()
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert any(path == a.rstrip("/") or path.startswith(a) for a in allowed), path
