"""``crossrank``: the one entry point (prepare, features check, train, score, evaluate, report)."""

from __future__ import annotations

import logging
import sys
import warnings

from crossrank.features.errors import InputError
from crossrank.pipeline.cli.parser import build_parser


def _quiet_third_party() -> None:
    # Deprecation chatter from inside torch/torchrec says nothing actionable to a crossrank user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in (
        "torch.fx._symbolic_trace",
        "torchrec.distributed.planner",
        "torchrec.distributed.train_pipeline",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run one ``crossrank`` command; exit status 2 on bad input (a one-paragraph message, no traceback)."""
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    try:
        code = args.fn(args)
    except InputError as e:
        print(f"crossrank: error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)
