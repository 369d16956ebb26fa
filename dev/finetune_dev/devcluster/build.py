"""Build the control-plane binaries from the Go module proxy, cached by version.

Nothing is downloaded from release pages: every binary is compiled from its Go module.
Each component is built in a throwaway module under the cache so the checkout stays clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_dev.devcluster import versions as v


class BuildError(RuntimeError):
    """A build step failed; the message says which step and what to do."""


@dataclass(frozen=True)
class Component:
    name: str
    version: str
    binaries: tuple[str, ...]

    @property
    def bin_dir(self) -> Path:
        return v.bin_dir(self.name, self.version)

    def paths(self) -> dict[str, Path]:
        return {b: self.bin_dir / b for b in self.binaries}

    def is_built(self) -> bool:
        return all(p.is_file() and os.access(p, os.X_OK) for p in self.paths().values())


K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

COMPONENTS = (
    Component("etcd", v.ETCD, ("etcd",)),
    Component("kwok", v.KWOK, ("kwok",)),
    Component("kubernetes", v.KUBERNETES, K8S_BINARIES),
    Component("helm", v.HELM, ("helm",)),
)


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise KeyError(name)


def binary(name: str) -> Path:
    """Path of a built binary by its name (e.g. 'kube-apiserver')."""
    for c in COMPONENTS:
        if name in c.binaries:
            return c.bin_dir / name
    raise KeyError(name)


def _log(msg: str) -> None:
    print(f"[devcluster build] {msg}", file=sys.stderr, flush=True)


def _go_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = "-mod=mod -buildvcs=false"
    env["GOWORK"] = "off"
    env.setdefault("GOTOOLCHAIN", "local")
    return env


def _run(step: str, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run one step, printing elapsed time every 30 s so a long build shows progress."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _log(f"  ... {step}: {int(time.monotonic() - started)}s elapsed")

    t = threading.Thread(target=heartbeat, daemon=True)
    t.start()
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=env or _go_env(cwd), capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:
        raise BuildError(f"{step}: {cmd[0]} not found ({e}); install Go >= 1.26 and retry") from e
    finally:
        done.set()
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BuildError(
            f"{step} failed (exit {proc.returncode}) after {int(time.monotonic() - started)}s "
            f"in {cwd}:\n{tail}\nFix the cause above and run the build again; finished "
            "components are cached and not rebuilt."
        )
    return proc.stdout


def _workdir(c: Component) -> Path:
    d = v.cache_root() / "build" / f"{c.name}-{c.version}"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def _write_gomod(d: Path, module: str, extra: str = "") -> None:
    (d / "go.mod").write_text(f"module {module}\n\ngo 1.26\n{extra}")


def staging_replaces(gomod_text: str, minor_version: str) -> list[str]:
    """Turn k8s.io/kubernetes's `k8s.io/x => ./staging/src/k8s.io/x` lines into real versions."""
    out = []
    for m in re.finditer(r"^\s*(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/", gomod_text, re.M):
        out.append(f"\t{m.group(1)} => {m.group(1)} {minor_version}")
    return out


def godebug_block(gomod_text: str) -> str:
    m = re.search(r"^godebug\s*\((.*?)^\)", gomod_text, re.M | re.S)
    if m:
        return f"godebug ({m.group(1)})\n"
    lines = re.findall(r"^godebug\s+\S.*$", gomod_text, re.M)
    return "\n".join(lines) + ("\n" if lines else "")


def _k8s_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def build_kubernetes(c: Component) -> None:
    d = _workdir(c)
    _write_gomod(d, "finetune.dev/k8s-build")
    info = json.loads(
        _run("download k8s.io/kubernetes", ["go", "mod", "download", "-json",
                                            f"k8s.io/kubernetes@{c.version}"], d)
    )
    upstream = Path(info["GoMod"]).read_text()
    staging_version = "v0." + c.version.lstrip("v").split(".", 1)[1]
    replaces = staging_replaces(upstream, staging_version)
    if not replaces:
        raise BuildError(f"no staging replaces found in k8s.io/kubernetes@{c.version} go.mod")
    extra = (
        f"\nrequire k8s.io/kubernetes {c.version}\n\nreplace (\n" + "\n".join(replaces) + "\n)\n"
        + godebug_block(upstream)
    )
    _write_gomod(d, "finetune.dev/k8s-build", extra)
    pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in c.binaries]
    _run("resolve kubernetes dependencies", ["go", "get", *[f"{p}@{c.version}" for p in pkgs]], d)
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    _run(f"go build {' '.join(c.binaries)} (the long one: 20-40 min cold on 2 cores)",
         ["go", "build", "-trimpath", "-ldflags", _k8s_ldflags(c.version),
          "-o", str(c.bin_dir) + "/", *pkgs], d)


def build_etcd(c: Component) -> None:
    d = _workdir(c)
    _write_gomod(d, "finetune.dev/etcd-build")
    _run("resolve etcd", ["go", "get", "-tool", f"go.etcd.io/etcd/server/v3@{c.version}"], d)
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    _run("go build etcd", ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o",
                           str(c.bin_dir / "etcd"), "go.etcd.io/etcd/server/v3"], d)


def _go_install(c: Component, pkg: str, ldflags: str = "-s -w") -> None:
    d = _workdir(c)
    env = _go_env(d)
    env["GOBIN"] = str(c.bin_dir)
    env["GOFLAGS"] = "-buildvcs=false"
    c.bin_dir.mkdir(parents=True, exist_ok=True)
    _run(f"go install {pkg}@{c.version}",
         ["go", "install", "-trimpath", "-ldflags", ldflags, f"{pkg}@{c.version}"], d, env)


def build_kwok(c: Component) -> None:
    _go_install(c, "sigs.k8s.io/kwok/cmd/kwok")


def build_helm(c: Component) -> None:
    minor = v.KUBERNETES.lstrip("v").split(".")[1]
    base = "helm.sh/helm/v3/pkg/chartutil"
    ver = "helm.sh/helm/v3/internal/version"
    _go_install(c, "helm.sh/helm/v3/cmd/helm",
                f"-s -w -X {base}.k8sVersionMajor=1 -X {base}.k8sVersionMinor={minor} "
                f"-X {ver}.version={c.version} -X {ver}.gitTreeState=clean")


BUILDERS = {"etcd": build_etcd, "kwok": build_kwok, "kubernetes": build_kubernetes,
            "helm": build_helm}


def ensure_built(names: list[str] | None = None) -> None:
    """Build what is missing from the cache; a cached component costs nothing."""
    if shutil.which("go") is None:
        raise BuildError("Go is not on PATH; install Go >= 1.26 (the cluster binaries are "
                         "built from the Go module proxy)")
    for c in COMPONENTS:
        if names and c.name not in names:
            continue
        if c.is_built():
            continue
        _log(f"building {c.name} {c.version} -> {c.bin_dir}")
        started = time.monotonic()
        BUILDERS[c.name](c)
        if not c.is_built():
            raise BuildError(f"{c.name} {c.version}: build finished but {c.paths()} are missing")
        _log(f"built {c.name} {c.version} in {int(time.monotonic() - started)}s")
