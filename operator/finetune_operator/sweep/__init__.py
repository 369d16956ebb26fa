"""FineTuneSweep controller: a pure planner (``plan_sweep``) and a thin executor
(``SweepRunner``) that the operator's scheduling cycle calls with its cached objects."""

from .expand import SweepInvalid, Trial, expand, parameter_sets, trial_name
from .plan import SweepPlan, plan_sweep, rank_trials
from .runner import SWEEP_SURFACE, SweepRunner, SyncResult

__all__ = [
    "SWEEP_SURFACE", "SweepInvalid", "SweepPlan", "SweepRunner", "SyncResult", "Trial", "expand",
    "parameter_sets", "plan_sweep", "rank_trials", "trial_name",
]
