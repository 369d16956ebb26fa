"""Every label and annotation key the operator, the trainer, the CLI and the dev tools set or
read: one place, so a key means one thing everywhere (docs/contracts.md lists them)."""

from __future__ import annotations

GROUP_DOMAIN = "finetune.dev"

# on every object the operator creates (the recommended app.kubernetes.io labels)
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_VALUE = "finetune-operator"
MANAGED_BY_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
TRAINER_APP_NAME = "finetune-trainer"  # the NAME_LABEL value of a job's children

# a job's pods and children
JOB_LABEL = "finetune.dev/job"
ATTEMPT_LABEL = "finetune.dev/attempt"
RANK_LABEL = "finetune.dev/rank"
JOB_UID_ANNOTATION = "finetune.dev/job-uid"
# the same key as a label: on the objects others make for a job (a Kueue Workload, the
# ResourceClaims made from its claim template), so the operator selects and counts them
JOB_UID_LABEL = JOB_UID_ANNOTATION
POD_LABELS = (ATTEMPT_LABEL, RANK_LABEL, JOB_LABEL)  # what the operator reads of its pods

# a sweep's trials
SWEEP_LABEL = "finetune.dev/sweep"
TRIAL_LABEL = "finetune.dev/trial"
PARAMETERS_ANNOTATION = "finetune.dev/trial-parameters"
EARLY_STOP_ANNOTATION = "finetune.dev/early-stopped"

# nodes of the local node agent (dev tooling), and where that agent keeps pod logs
AGENT_LABEL = "finetune.dev/local-agent"
AGENT_ROOT_ANNOTATION = "finetune.dev/local-agent-root"

# a ModelServer's pod and Service (serving/)
SERVER_LABEL = "finetune.dev/server"
SERVER_APP_NAME = "finetune-server"  # the NAME_LABEL value of a server's children
