"""HR@k and NDCG@k of the sampled ranking protocol (groups of 1 positive + N negatives), streamed: each rank
scores the groups it holds whole as its batches arrive and keeps only the rows of groups still incomplete;
the few groups split between ranks meet on rank 0; then the per-domain sums are all-reduced."""

from __future__ import annotations

import torch
import torch.distributed as dist

from crossrank.features.errors import InputError
from crossrank.pipeline.core.distributed import DistContext, gather_to_main


class StreamingRanking:
    """HR@k and NDCG@k over groups of ``group_size`` rows (``row_id // group_size`` is the group; its lowest
    row id is the positive, as ``crossrank prepare ranking`` writes them), in memory O(batch + incomplete
    groups) per rank. The positive's rank counts the negatives scored at least as high (ties count against
    the model).

    Args:
        group_size: 1 + negatives.
        domain_names: the spec's domains (``domains`` are indices into it).
        k: the cut-off.

    Example::

        acc = StreamingRanking(100, ["A", "B"])
        for logits, row_ids, domains in batches:  # real rows only, any order
            acc.update(logits, row_ids, domains)
        metrics = acc.finish(ctx)  # {"hr@10": ..., "ndcg@10": ..., "hr@10/A": ..., ...} on every rank
    """

    def __init__(self, group_size: int, domain_names: list[str], k: int = 10) -> None:
        self.group_size, self.domain_names, self.k = group_size, domain_names, k
        self.sums = torch.zeros(len(domain_names), 3, dtype=torch.float64)  # per domain: groups, hits, ndcg
        self.rows = torch.zeros(0, dtype=torch.int64)  # the rows of incomplete groups: ids, scores, domains
        self.scores = torch.zeros(0)
        self.domains = torch.zeros(0, dtype=torch.int64)

    def update(self, logits: torch.Tensor, row_ids: torch.Tensor, domains: torch.Tensor) -> None:
        """Add [N] scores of real rows; every group complete so far is scored and dropped."""
        rows = torch.cat([self.rows, row_ids.cpu().long()])
        scores = torch.cat([self.scores, logits.detach().float().cpu()])
        doms = torch.cat([self.domains, domains.cpu().long()])
        order = torch.argsort(rows)
        rows, scores, doms = rows[order], scores[order], doms[order]
        _, counts = torch.unique_consecutive(rows // self.group_size, return_counts=True)
        whole = torch.repeat_interleave(counts == self.group_size, counts)
        self._score(scores[whole].reshape(-1, self.group_size), doms[whole][:: self.group_size])
        self.rows, self.scores, self.domains = rows[~whole], scores[~whole], doms[~whole]

    def _score(self, scores: torch.Tensor, domain: torch.Tensor) -> None:
        """Add whole groups ([G, group_size] scores, positive first; [G] domains) to the sums."""
        rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # 0 = the positive is on top
        hit = (rank < self.k).double()
        ndcg = torch.where(rank < self.k, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros_like(hit))
        self.sums.index_add_(0, domain, torch.stack([torch.ones_like(hit), hit, ndcg], dim=1))

    def finish(self, ctx: DistContext | None = None) -> dict[str, float]:
        """The metrics (the same dict on every rank): the ranks' incomplete groups meet on rank 0 first.

        Raises:
            InputError: rows left that make no whole group of ``group_size`` (a ranking set prepared with
                another ``--negatives``), on every rank.
        """
        left = self.rows.numel()
        if ctx is not None and ctx.world_size > 1:
            rows, scores, doms = (
                gather_to_main(t.to(ctx.device), ctx) for t in (self.rows, self.scores, self.domains)
            )
            self.rows, self.scores, self.domains = self.rows[:0], self.scores[:0], self.domains[:0]
            if rows is not None and scores is not None and doms is not None:  # rank 0
                self.update(scores, rows, doms)
            totals = torch.cat([self.sums.flatten(), torch.tensor([float(self.rows.numel())])]).to(ctx.device)
            dist.all_reduce(totals)  # one collective: the sums and the rows left over (on rank 0)
            self.sums, left = totals[:-1].cpu().reshape(self.sums.shape), int(totals[-1].item())
        if left:
            raise InputError(
                f"the ranking set has {left:,} row(s) outside whole groups of {self.group_size} (1 positive + "
                f"{self.group_size - 1} negatives).",
                fix="set data.ranking_group_size to 1 + the --negatives of `crossrank prepare ranking` (its "
                "ranking.json says group_size), or prepare the ranking set again.",
            )
        return self._metrics()

    def _metrics(self) -> dict[str, float]:
        k, total = self.k, self.sums.sum(dim=0)
        out = {
            f"hr@{k}": float(total[1] / total[0].clamp(min=1)),
            f"ndcg@{k}": float(total[2] / total[0].clamp(min=1)),
        }
        for i, name in enumerate(self.domain_names):
            groups, hits, ndcg = self.sums[i].tolist()
            if groups:
                out[f"hr@{k}/{name}"], out[f"ndcg@{k}/{name}"] = hits / groups, ndcg / groups
        return out


def ranking_metrics(
    logits: torch.Tensor,
    row_ids: torch.Tensor,
    domains: torch.Tensor,
    group_size: int,
    domain_names: list[str],
    k: int = 10,
) -> dict[str, float]:
    """HR@k and NDCG@k (overall and per domain) of [N] scores of real rows that make whole groups, in one
    process (:class:`StreamingRanking` with a single update).

    Raises:
        InputError: the rows do not make whole groups of ``group_size``.
    """
    acc = StreamingRanking(group_size, domain_names, k)
    acc.update(logits, row_ids, domains)
    return acc.finish()
