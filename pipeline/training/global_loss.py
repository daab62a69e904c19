"""The training loss as the global mean over every rank's real rows of a step.

Each rank's batches are full (``B`` real rows) until its rows run out: one short batch, then all-padding
batches while longer ranks finish the epoch. A per-rank mean would give a row of a short batch more weight
than a row of a full one, and an all-padding rank would still pull the DDP-averaged step towards zero. With
every rank's row count known at the start, each rank computes the step's real-row total on its own (no
collective per step) and scales its summed loss by ``world_size / total``: DDP's gradient average is then
exactly the gradient of the mean over the step's real rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from crossrank.pipeline.core.distributed import DistContext, all_gather_cat
from crossrank.pipeline.reading.batch import Batch


class GlobalMeanLoss:
    """Per-step loss scales for ranks that hold ``rank_rows`` rows each, in batches of ``batch_size``.

    Args:
        rank_rows: real rows of each rank's split, in rank order.
        batch_size: rows per batch (B), the same on every rank.
        rank: this process's rank (for :meth:`rank_mean`).

    Example::

        scales = GlobalMeanLoss([10, 3], batch_size=4)
        scales.real_rows(0), scales.real_rows(1)   # 7 (4 + 3), 4 (4 + 0)
        batches = scales.apply(reader.batches(epoch=0), rank=0, first_step=0)
    """

    def __init__(self, rank_rows: list[int], batch_size: int, rank: int = 0) -> None:
        self.rank_rows = np.asarray(rank_rows, dtype=np.int64)
        self.batch_size, self.rank = batch_size, rank

    @staticmethod
    def gather(num_rows: int, batch_size: int, ctx: DistContext) -> GlobalMeanLoss:
        """Every rank's row count, exchanged once (a collective: call on all ranks)."""
        counts = all_gather_cat(torch.tensor([num_rows], dtype=torch.int64, device=ctx.device), ctx)
        return GlobalMeanLoss([int(c) for c in counts.cpu()], batch_size, ctx.rank)

    def real_rows(self, step: int, rank: int | None = None) -> int:
        """Real (non-padding) rows of epoch step ``step``, summed over all ranks or of ``rank`` only."""
        left = self.rank_rows - step * self.batch_size
        rows = np.clip(left, 0, self.batch_size)
        return int(rows.sum() if rank is None else rows[rank])

    def scale(self, step: int) -> float:
        """``world_size / real rows``: each rank's summed loss times this, averaged over ranks, is the mean.
        A step past every rank's data (only possible with a larger step count) has scale 0."""
        rows = self.real_rows(step)
        return len(self.rank_rows) / rows if rows else 0.0

    def rank_mean(self, loss: float, step: int) -> float | None:
        """The mean loss over this rank's real rows of ``step``, from its scaled loss (None without any):
        what the progress bar logs, since the scaled loss of a rank with a short batch is not a mean."""
        scale, rows = self.scale(step), self.real_rows(step, self.rank)
        return loss / scale / rows if scale and rows else None

    def apply(self, batches: Iterator[Batch], first_step: int) -> Iterator[Batch]:
        """``batches`` (epoch steps ``first_step``, ``first_step + 1``, ...) with their loss scales set."""
        for step, batch in enumerate(batches, start=first_step):
            batch.loss_scale = torch.tensor([self.scale(step)], dtype=torch.float32)
            yield batch
