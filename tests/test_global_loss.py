"""The training loss is the global mean over every rank's real rows of a step: uneven ranks, short last
batches and all-padding batches never change a step's gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from crossrank.pipeline.core.distributed import launch_local
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.training.global_loss import GlobalMeanLoss

BATCH = 4
RANK_ROWS = [6, 1]  # step 0: 4 + 1 real rows; step 1: 2 + 0 (rank 1 only pads)


class _Linear(nn.Module):
    """Stands in for the ranker: logits from the dense features, no fusion directions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(3, 1)

    def forward(
        self, dense: torch.Tensor, pooled: object, sequences: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(dense).squeeze(-1), dense.new_zeros(dense.shape[0], 0)


def _rows(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    n = RANK_ROWS[rank]
    return torch.randn(n, 3, generator=g), (torch.rand(n, generator=g) > 0.5).float()


def _batches(rank: int, steps: int) -> list[Batch]:
    dense, labels = _rows(rank)
    out = []
    for step in range(steps):
        d, y = dense[step * BATCH : (step + 1) * BATCH], labels[step * BATCH : (step + 1) * BATCH]
        pad = BATCH - len(y)
        out.append(
            Batch(
                dense=torch.cat([d, torch.zeros(pad, 3)]),
                pooled=None,  # type: ignore[arg-type]  # unused by the stand-in model
                sequences=None,  # type: ignore[arg-type]
                labels=torch.cat([y, torch.zeros(pad)]),
                weights=torch.cat([torch.ones(len(y)), torch.zeros(pad)]),
                domains=torch.zeros(BATCH, dtype=torch.int64),
                row_ids=torch.arange(BATCH),
                loss_scale=torch.tensor([1.0 / max(len(y), 1)]),
            )
        )
    return out


def _rank_gradients(steps: int) -> list[list[float]]:
    """On each rank: DDP over the real ``RankerTrain`` loss, the trainer's scales; each step's gradient."""
    import torch.distributed as dist

    from crossrank.models.ranker import RankerTrain
    from crossrank.pipeline.core.distributed import init_distributed

    ctx = init_distributed()
    model = nn.parallel.DistributedDataParallel(RankerTrain(_Linear()))  # type: ignore[arg-type]
    scales = GlobalMeanLoss.gather(RANK_ROWS[ctx.rank], BATCH, ctx)
    grads = []
    for batch in scales.apply(iter(_batches(ctx.rank, steps)), first_step=0):
        model.zero_grad()
        model(batch)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    del model  # DDP's reducer holds the process group: destroying the group under it hangs at exit
    dist.destroy_process_group()
    # Plain floats back to the launcher: tensors would go through torch.multiprocessing's file-descriptor
    # sharing, whose hand-over can leave a finished worker waiting for the parent.
    return [g.tolist() for g in grads]


def test_real_rows_and_scales() -> None:
    scales = GlobalMeanLoss([10, 3, 0], batch_size=4)
    assert [scales.real_rows(s) for s in range(4)] == [7, 4, 2, 0]
    assert scales.scale(0) == 3 / 7 and scales.scale(3) == 0.0
    # What a rank logs: its own mean, recovered from its scaled loss; none on an all-padding step.
    rank1 = GlobalMeanLoss([10, 3, 0], batch_size=4, rank=1)
    assert rank1.rank_mean(0.9 * 3 * scales.scale(0), step=0) == pytest.approx(0.9)
    assert rank1.rank_mean(0.5, step=1) is None


def test_ddp_step_gradient_is_the_global_mean(tmp_path: Path) -> None:
    steps = 2
    got = launch_local(2, tmp_path, _rank_gradients, steps)
    model = _Linear()
    for step in range(steps):
        rows = [_rows(r) for r in range(2)]
        dense = torch.cat([d[step * BATCH : (step + 1) * BATCH] for d, _ in rows])
        labels = torch.cat([y[step * BATCH : (step + 1) * BATCH] for _, y in rows])
        model.zero_grad()
        logits, _ = model(dense, None, None)
        nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()  # mean over real rows
        want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        for rank in (0, 1):  # DDP leaves the same averaged gradient on both ranks
            torch.testing.assert_close(torch.tensor(got[rank][step]), want)
