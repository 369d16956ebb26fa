"""The view layer: FineTuneJobs, pods' events, ResourceQuotas and FineTuneSweeps (plain dicts as
the API server returns them) -> view models that say what a person is shown: list rows, describe
sections, top rows, the compare table. Shared by ``kubectl finetune`` (``cli/render.py`` turns
them into kubectl-style text) and the web console (which serves them as JSON as they are).

Pure: no API calls, no printing, no command line; the time is passed in. Every view model is a
TypedDict of strings, numbers, lists and dicts, so ``json.dumps`` takes it unchanged. Modules:
``cells`` (how one value reads), ``jobs`` (list rows, phase, reason, progress, ETA, queue
position), ``describe`` (one job's spec, status, conditions and events), ``top`` (GPUs held vs
quota, and the queue), ``compare`` (trials ranked by a metric), ``sweeps`` (sweep rows and
summary).
"""
