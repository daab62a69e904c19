"""``crossrank``: the one entry point (prepare, features check, train, score, evaluate, report).

Exit status: 0 on success; 2 on bad input (one paragraph on stderr that names the file, column or feature
and the fix, never a traceback); 1 otherwise: a bug (with its traceback), or a process of a job that stopped
because another process failed (one short line; see :mod:`crossrank.pipeline.cli.launcher`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from crossrank.features.errors import InputError
from crossrank.pipeline.cli.parser import build_parser

# The known, harmless deprecation notices from inside the stack: (category, module regex, message regex).
# Nothing a crossrank user can act on; every other warning stays visible.
_KNOWN_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"torchrec\.distributed\.model_parallel", r"`broadcast_buffers` is deprecated"),
    (FutureWarning, r"torch\.distributed\.checkpoint\.", r"Please use DTensor instead"),
    (FutureWarning, r"torchrec\.optim\.keyed", r"Please use DTensor instead"),
    (DeprecationWarning, r"fbgemm_gpu\.", r""),
    (DeprecationWarning, r"torch\.jit\._script", r"`torch\.jit\.(script|interface)` is deprecated"),
    (DeprecationWarning, r"torchrec\.optim\.apply_optimizer_in_backward", r"This API is deprecated"),
)


def _quiet_third_party() -> None:
    """Hide the named, known-noisy warnings and loggers of torch, torchrec and fbgemm."""
    for category, module, message in _KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in (
        "torch.fx._symbolic_trace",
        "torchrec.distributed.planner",
        "torchrec.distributed.train_pipeline",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _print_error(text: str) -> None:
    """Print ``text`` to stderr on a line of its own: open progress bars are finished first, and in a job of
    several processes (whose logs share one stream) it starts on a new line."""
    std = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()
    in_job = int(os.environ.get("WORLD_SIZE", "1")) > 1
    print(("\n" if in_job else "") + text, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return int(args.fn(args) or 0)
    from crossrank.pipeline.cli.launcher import recorded  # imports torch: only under a launcher

    return int(recorded(args.fn)(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one ``crossrank`` command and return its exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    try:
        return _run(args)
    except InputError as e:
        _print_error(f"crossrank: error: {e}")
        return 2
    except Exception as e:
        if "torch" not in sys.modules:  # no collective ran
            raise
        from crossrank.pipeline.cli.launcher import peer_failure, stopped_by_peer

        if not peer_failure(e):
            raise
        return stopped_by_peer(e, _print_error)
