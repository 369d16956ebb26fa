"""``python -m finetune_operator.cli`` = ``kubectl finetune``."""

import sys

from . import main

sys.exit(main())
