"""FineTuneSweep controller: a pure planner (``plan_sweep``) and a thin executor
(``SweepRunner``) that the operator's scheduling cycle calls with its cached objects."""

from finetune_operator.sweep.expand import SweepInvalid, Trial, expand, parameter_sets, trial_name
from finetune_operator.sweep.plan import SweepPlan, TrialJob, plan_sweep, rank_trials
from finetune_operator.sweep.runner import SweepRunner, SyncResult

__all__ = [
    "SweepInvalid", "SweepPlan", "SweepRunner", "SyncResult", "Trial", "TrialJob", "expand",
    "parameter_sets", "plan_sweep", "rank_trials", "trial_name",
]
