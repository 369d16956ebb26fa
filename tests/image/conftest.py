"""Image-test fixtures: the images `make images` built, run with podman (scripts/images/podman.sh,
the image cache's storage). A missing image is an error that says how to build it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..conftest import ROOT

PODMAN = ROOT / "scripts" / "images" / "podman.sh"
TAG = "0.1.0"
OPERATOR_IMAGE = f"localhost/finetune-operator/operator:{TAG}"
TRAINER_IMAGE = f"localhost/finetune-operator/trainer:{TAG}"
SIZES: list[str] = []  # printed in the terminal summary


def podman(*args: str, timeout: float = 300, check: bool = True,
           ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(PODMAN), *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# Run inside an image: which of argv's top-level modules are importable, the installed
# distributions as importlib.metadata and `pip list` see them (PEP 503 names), and every
# directory named finetune_* (a package or its .dist-info) anywhere on the file system.
_CONTENTS = r"""
import importlib.metadata as md, importlib.util as iu, json, os, re, subprocess, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pip = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json",
                      "--disable-pip-version-check", "--no-color"],
                     capture_output=True, text=True, check=True).stdout
found = []
for top, dirs, _ in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    found += [os.path.join(top, d) for d in dirs if d.startswith("finetune_")]
print(json.dumps({
    "importable": {m: iu.find_spec(m) is not None for m in sys.argv[1:]},
    "distributions": sorted({norm(d.metadata["Name"] or "") for d in md.distributions()}),
    "pip": sorted(norm(p["name"]) for p in json.loads(pip)),
    "dirs": sorted(found)}))
"""


@dataclass(frozen=True)
class Contents:
    """What an image carries: importable top-level modules (of those asked about), installed
    distributions (PEP 503 names: `finetune-api`), and the finetune_* directories on disk."""
    importable: dict[str, bool]
    distributions: frozenset[str]
    pip: frozenset[str]
    dirs: tuple[str, ...]

    def packages_on_disk(self) -> set[str]:
        """finetune_* package names found on disk, with or without their .dist-info."""
        return {d.rsplit("/", 1)[1].split("-", 1)[0] for d in self.dirs}


@dataclass
class Image:
    ref: str

    def contents(self, *modules: str) -> Contents:
        """Probe the image as the pods run it (its own python, read-only root)."""
        out = self.run("-e", "PIP_NO_CACHE_DIR=1", "--entrypoint", "python", self.ref, "-c",
                       _CONTENTS, *modules).stdout
        got = json.loads(out.strip().splitlines()[-1])
        return Contents(got["importable"], frozenset(got["distributions"]),
                        frozenset(got["pip"]), tuple(got["dirs"]))

    def assert_carries_only(self, carried: dict[str, str], not_carried: dict[str, str],
                            dockerfile: str) -> None:
        """``carried``/``not_carried``: module -> distribution. Each carried one imports and is
        installed; no other is, and the only finetune_* packages on disk are the carried ones."""
        got = self.contents(*not_carried, *carried)
        for module, dist in carried.items():  # the probe sees what is there
            assert got.importable[module], f"{module} does not import in {self.ref}"
            assert dist in got.distributions and dist in got.pip, (dist, sorted(got.distributions))
        for module, dist in not_carried.items():
            assert not got.importable[module], (
                f"{self.ref} carries {module}: rebuild it with `make images` ({dockerfile})")
            assert dist not in got.distributions and dist not in got.pip, (
                f"{self.ref} has the distribution {dist} installed")
        ours = {m for m in carried if m.startswith("finetune_")}
        assert got.packages_on_disk() == ours, got.dirs

    def inspect(self) -> dict[str, Any]:
        return dict(json.loads(podman("image", "inspect", self.ref).stdout)[0])

    def layers(self) -> list[dict[str, Any]]:
        return list(json.loads(podman("history", "--format", "json", self.ref).stdout))

    def run(self, *args: str, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`podman run --rm` as the pods run it: uid 1000, read-only root, no capabilities."""
        return podman("run", "--rm", "--user", "1000:1000", "--read-only",
                      "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=256m",
                      "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network",
                      "none", *args, timeout=timeout, check=check)


def _image(ref: str) -> Image:
    if podman("image", "exists", ref, check=False).returncode != 0:
        raise AssertionError(f"image {ref} is not built: run `make images` (or "
                             "scripts/build-images.sh) first; `make test-images` does both")
    return Image(ref)


@pytest.fixture(scope="session")
def operator_image() -> Image:
    return _image(OPERATOR_IMAGE)


@pytest.fixture(scope="session")
def trainer_image() -> Image:
    return _image(TRAINER_IMAGE)


@pytest.fixture(scope="module")
def image_agent(cluster) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A local node agent that runs its pods' containers from their images under podman, with
    a read-only root file system (FINETUNE_NODEAGENT_READ_ONLY_ROOT)."""
    import os

    from finetune_dev.nodeagent import start_agent
    from finetune_dev.nodeagent.container import READ_ONLY_SWITCH, SWITCH

    from ..kube import short_id

    saved = {k: os.environ.get(k) for k in (SWITCH, READ_ONLY_SWITCH)}
    os.environ.update({SWITCH: "1", READ_ONLY_SWITCH: "1"})  # inherited by the agent process
    try:
        agent = start_agent(f"img-{short_id()}", gpus=1, cfg=cluster.cfg)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    yield agent
    agent.stop()
    cluster.kubectl("delete", "node", agent.node, "--ignore-not-found", "--wait=false")


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if SIZES:
        terminalreporter.section("image sizes")
        for line in SIZES:
            terminalreporter.write_line(line)
