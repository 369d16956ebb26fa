"""Pure: a sweep's search -> the ordered list of trials (parameter sets) and their job specs.

Grid: the Cartesian product of every parameter's values, the first parameter varying slowest.
Random: ``search.trials`` draws from ``random.Random(search.seed)``, each parameter in order
(a choice among ``values``, or a uniform / log-uniform draw in ``range``), so the same sweep
always expands to the same trials: restart-safe and reproducible.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from finetune_api.spec import FineTuneJobSpec
from finetune_api.sweep import MAX_TRIALS, FineTuneSweepSpec, SweepParameter


class SweepInvalid(ValueError):
    """The sweep cannot be expanded into valid trials; the message names the field."""


@dataclass(frozen=True)
class Trial:
    index: int
    parameters: dict[str, Any]
    spec: dict[str, Any]  # the child FineTuneJob's spec (wire form, validated)


def trial_name(sweep_name: str, index: int) -> str:
    """``<sweep>-t<index>``: deterministic, so a restarted operator finds its trials again."""
    return f"{sweep_name}-t{index}"


def _draw(p: SweepParameter, rng: random.Random) -> Any:
    if p.values is not None:
        return rng.choice(p.values)
    r = p.range
    assert r is not None  # exactly one of values/range (validated by the model)
    u = rng.random()
    if r.scale == "log":
        value = math.exp(math.log(r.min) + u * (math.log(r.max) - math.log(r.min)))
    else:
        value = r.min + u * (r.max - r.min)
    return round(value) if r.integer else float(f"{value:.6g}")


def parameter_sets(spec: FineTuneSweepSpec) -> list[dict[str, Any]]:
    """Every trial's parameters, in trial-index order. Raises SweepInvalid when too many."""
    count = spec.trial_count()
    if count > MAX_TRIALS:
        sizes = " x ".join(str(len(p.values or [])) for p in spec.parameters)
        raise SweepInvalid(f"spec.parameters: the grid has {count} trials ({sizes}); at most "
                           f"{MAX_TRIALS} are allowed: use fewer values or search.strategy random")
    paths = [p.path for p in spec.parameters]
    if spec.search.strategy == "grid":
        grid = itertools.product(*[p.values or [] for p in spec.parameters])
        return [dict(zip(paths, combo, strict=True)) for combo in grid]
    rng = random.Random(spec.search.seed)
    return [{p.path: _draw(p, rng) for p in spec.parameters} for _ in range(count)]


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating the intermediate objects."""
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[leaf] = value


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(x) for x in loc) or "<spec>"


def expand(spec: FineTuneSweepSpec) -> list[Trial]:
    """The trials of the sweep with their validated child specs. Raises SweepInvalid naming
    the first trial whose parameters do not make a valid FineTuneJob spec."""
    template = spec.template.to_wire()
    trials = []
    for index, params in enumerate(parameter_sets(spec)):
        doc = copy.deepcopy(template)
        for path, value in params.items():
            set_path(doc, path, value)
        try:
            child = FineTuneJobSpec.model_validate(doc)
        except ValidationError as e:
            first = e.errors()[0]
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise SweepInvalid(
                f"trial {index} ({shown}): spec.template.{_loc(first['loc'])}: "
                f"{first['msg'].removeprefix('Value error, ')}; fix spec.parameters or "
                "spec.template") from None
        trials.append(Trial(index, params, child.to_wire()))
    return trials
