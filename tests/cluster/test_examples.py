"""Every file in examples/ passes `kubectl apply --dry-run=server` on the real API server: the
generated CRDs (schema, CEL rules) and the chart's admission policy, as a team member would apply
it (a user bound to the chart's -edit role and Kubernetes' own `edit` role in the namespace, so the
policy's checks of referenced Secrets, claims and ConfigMaps see a real requester). And `kubectl
explain` serves the field reference the models carry."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.spec import ConfigMapSource, ResourcesSpec
from finetune_api.sweep import FineTuneSweepSpec
from finetune_dev.nodeagent.node import AGENT_LABEL
from tests.builders.chart import CHART, POLICY_KINDS, render_chart

from ..kube import Cluster, short_id, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
SWEEP_CRD = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"
MEMBER = "examples-member"


@dataclass
class Team:
    cluster: Cluster
    ns: str

    def apply(self, manifest: str) -> Any:
        return self.cluster.kubectl("apply", "--as", MEMBER, "-n", self.ns, "--dry-run=server",
                                    "-f", "-", input=manifest, check=False)


@pytest.fixture(scope="module")
def team(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
         make_namespace_module: Callable[[], str]) -> Iterator[Team]:
    """Both CRDs, the chart's policy bound to a fresh namespace, and a member of that team."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    sid = short_id()
    release, release_ns = f"ex-{sid}", f"ft-ex-{sid}"
    ns = make_namespace_module()
    cluster.create_namespace(release_ns)
    # The chart's default policy, plus the node label of the local cluster's node agent, which
    # examples/sweep.yaml selects (it runs on the local cluster: `make demo-sweep`).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = render_chart(release, release_ns, {
        "crds": {"install": False}, "priorityClasses": {"create": False},
        "watchNamespaces": [ns], "policy": {"enabled": True, "nodeSelectorKeys": [
            *values["policy"]["nodeSelectorKeys"], AGENT_LABEL]}})
    edit_roles = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"
                  and d["metadata"]["name"].endswith("-edit")]
    assert len(edit_roles) == 1, f"the chart's user role: {edit_roles}"
    wanted = [d for d in docs if d["kind"] in POLICY_KINDS
              or d["metadata"]["name"] in edit_roles]
    team = Team(cluster, ns)
    try:
        cluster.apply(wanted)
        for role in (edit_roles[0], "edit"):
            cluster.kubectl("create", "rolebinding", f"{MEMBER}-{role}"[:63], "-n", ns,
                            f"--clusterrole={role}", f"--user={MEMBER}")
        # informer-fed: live once it refuses a class outside the allowed bands, in its own words
        lora = (ROOT / "examples" / "lora.yaml").read_text()
        probe = lora.replace("priorityClassName: finetune-normal",
                             "priorityClassName: system-cluster-critical")
        assert probe != lora
        wait_for("the chart's policy to refuse a class it does not allow",
                 lambda: "system-cluster-critical is not allowed" in team.apply(probe).stderr, 60)
        yield team
    finally:
        for d in wanted:
            cluster.kubectl("delete", d["kind"], d["metadata"]["name"], "--ignore-not-found")
        cluster.kubectl("delete", "namespace", release_ns, "--wait=false", "--ignore-not-found")


@pytest.fixture(scope="module")
def make_namespace_module(cluster: Cluster) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        made.append(cluster.create_namespace(f"t-ex-{short_id()}"))
        return made[-1]

    yield make
    for name in made:
        cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"lora.yaml", "qlora.yaml", "full.yaml",
                                          "deepspeed.yaml", "two-node.yaml", "sweep.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_a_server_side_dry_run(team: Team, path: Path) -> None:
    objects = [d for d in yaml.safe_load_all(path.read_text()) if d]
    proc = team.apply(path.read_text())
    assert proc.returncode == 0, f"examples/{path.name} was rejected:\n{proc.stderr}"
    for d in objects:
        kind, name = d["kind"].lower(), d["metadata"]["name"]
        assert re.search(rf"^{re.escape(kind)}[./]\S*{re.escape(name)} \w+ \(server dry run\)$",
                         proc.stdout, re.M), f"{kind}/{name} not in:\n{proc.stdout}"
        # a dry run: nothing stored
        assert team.cluster.get(d["kind"], name, team.ns) is None


def test_a_broken_example_is_rejected_naming_the_field(team: Team) -> None:
    """The control: the same path refuses what the API server must refuse."""
    lora = yaml.safe_load((ROOT / "examples" / "lora.yaml").read_text())
    lora["spec"]["method"] = "full"  # with its lora block: a CEL rule of the CRD
    proc = team.apply(json.dumps(lora))
    assert proc.returncode != 0 and "lora must not be set when method is full" in proc.stderr, (
        proc.stdout + proc.stderr)
    del lora["spec"]["model"]
    proc = team.apply(json.dumps(lora))
    assert proc.returncode != 0 and "spec.model: Required value" in proc.stderr, proc.stderr


def _explained(cluster: Cluster, field: str) -> str:
    proc = cluster.kubectl("explain", field, check=False)
    return " ".join(proc.stdout.split()) if proc.returncode == 0 else ""


@pytest.mark.parametrize("field, description", [
    ("finetunejob.spec.resources.gpus", ResourcesSpec.model_fields["gpus"].description),
    ("finetunejob.spec.dataset.source.configMap.name",
     ConfigMapSource.model_fields["name"].description),
    ("finetunesweep.spec.maxParallel", FineTuneSweepSpec.model_fields["max_parallel"].description),
])
def test_kubectl_explain_reads_the_field_reference(team: Team, field: str,
                                                   description: str | None) -> None:
    assert description
    words = " ".join(description.split())
    wait_for(f"kubectl explain {field} to print the model's description",
             lambda: words in _explained(team.cluster, field), 60)
