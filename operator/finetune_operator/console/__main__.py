"""``python -m finetune_operator.console``: the chart's in-cluster console."""

import sys

from finetune_operator.console.main import run_in_cluster

sys.exit(run_in_cluster())
