"""``python -m crossrank.pipeline.cli``: what TorchX components run on every process."""

import sys

from crossrank.pipeline.cli.main import main

sys.exit(main())
