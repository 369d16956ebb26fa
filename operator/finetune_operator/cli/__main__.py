"""``python -m finetune_operator.cli`` = ``kubectl finetune``."""

import sys

from finetune_operator.cli import main

sys.exit(main())
