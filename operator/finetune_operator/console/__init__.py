"""The web console for the people who fine-tune (issue 22; docs/console.md): My jobs, a job's
curves and controls, the New job form, Team and Sweeps, in English and Simplified Chinese, every
Kubernetes call made as the signed-in user.

Layers: ``i18n`` (the two languages), ``charts`` (inline SVG), ``model`` and ``forms`` (pure view
models on top of ``finetune_operator.view``), ``history`` (the curves, from the jobs' watch),
``pages`` (HTML), ``api`` (the calls, through ``kube.client.Kube``), ``identity`` (who is asking),
``app`` (routes on ``http.server``'s Router/HttpServer, server-sent events) and ``main``
(``kubectl finetune console``; ``python -m finetune_operator.console`` in the cluster).
"""
