"""TensorBoard scalars of a training run, in ``RUN_DIR/tensorboard`` (rank 0 only; a no-op elsewhere).

Tags, with the global step as x: ``train/loss``, ``train/samples_per_s``, ``train/ortho``, ``train/lr/dense``,
``train/lr/sparse`` (each log point); ``valid/<metric>`` (each validation round: ``auc``, ``ne``,
``logloss``, ``calibration``, ``auc/<domain>``, ``ortho/<direction>``, ...); ``test/<metric>`` at the end.
Row counts are left out.

A resumed run appends to the same folder: its writer starts with a purge step one past the checkpoint's
step, so TensorBoard drops what the interrupted run logged after that checkpoint (the board is flushed at
every checkpoint, so everything up to it is on disk).

A remote run folder (``s3://...``): TensorBoard's writer writes local files only, so the event files go to a
local cache folder (``$CROSSRANK_CACHE/tensorboard/...``) and are uploaded to ``RUN_DIR/tensorboard`` at each
flush (every checkpoint) and at the end, whole files (an object cannot be appended to). Copy them down to
view them (``aws s3 sync``), or give ``tensorboard --logdir`` the URI where its build reads one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from crossrank.features.errors import InputError
from crossrank.features.storage import as_path, cache_dir, cache_key, copy_file, is_remote
from crossrank.pipeline.core.distributed import DistContext

TENSORBOARD_DIR = "tensorboard"


class Board:
    """Scalars to TensorBoard; with no writer (disabled, or not rank 0) every method does nothing.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``, or ``None``.

    Example::

        board = open_board("runs/demo", enabled=True, ctx=ctx, purge_step=1)
        board.scalar("train/loss", 0.69, step=20)
        board.metrics("valid", {"auc": 0.71, "rows": 1194}, step=20)  # rows are skipped
        board.close()
    """

    def __init__(self, writer: Any = None, upload_to: Path | None = None) -> None:
        self._writer = writer
        self._upload_to = upload_to  # the remote folder the local event files are copied to

    @property
    def enabled(self) -> bool:
        """Whether anything is written (rank 0 with ``train.tensorboard``)."""
        return self._writer is not None

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One point of one curve."""
        if self._writer is not None:
            self._writer.add_scalar(tag, float(value), global_step=step)

    def metrics(self, prefix: str, metrics: dict[str, Any], step: int) -> None:
        """Every numeric metric as ``prefix/<name>``, except row counts (``rows``, ``rows/<domain>``)."""
        for name, value in metrics.items():
            if name == "rows" or name.startswith("rows/") or name == "epoch":
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.scalar(f"{prefix}/{name}", value, step)

    def flush(self) -> None:
        """Write what is queued to disk (called at each checkpoint)."""
        if self._writer is not None:
            self._writer.flush()
            self._upload()

    def close(self) -> None:
        """Flush and close the event file; the board is a no-op afterwards."""
        if self._writer is not None:
            self._writer.close()
            self._upload()
            self._writer = None

    def _upload(self) -> None:
        """Copy the local event files to the remote run folder (whole files: an object cannot be appended)."""
        if self._writer is not None and self._upload_to is not None:
            local = Path(self._writer.log_dir)
            for f in sorted(local.iterdir()):
                copy_file(f, self._upload_to / f.name)


def open_board(run_dir: str | Path, enabled: bool, ctx: DistContext, purge_step: int) -> Board:
    """This rank's board: ``RUN_DIR/tensorboard`` on rank 0 when ``enabled``, else a no-op.

    Args:
        run_dir: the run folder.
        enabled: ``train.tensorboard``.
        ctx: this process's place in the job.
        purge_step: the first step this process logs; TensorBoard drops earlier runs' points from there on
            (a resumed run: one past its checkpoint; a fresh run: 1, which hides a previous run's curves).
    """
    if not enabled or not ctx.is_main:
        return Board()
    try:  # imports the tensorboard package: only where it is used
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise InputError(
            f"train.tensorboard is on but TensorBoard cannot be imported ({e}).",
            fix="pip install tensorboard (make install does), or set train.tensorboard=false.",
        ) from None
    target = as_path(run_dir) / TENSORBOARD_DIR
    if not is_remote(target):
        return Board(SummaryWriter(log_dir=str(target), purge_step=purge_step))
    local = cache_dir("tensorboard", cache_key(target))
    shutil.rmtree(local)  # this process's event files only: an earlier run's are in the run folder already
    return Board(SummaryWriter(log_dir=str(local), purge_step=purge_step), upload_to=target)
