"""HR@k and NDCG@k of the sampled ranking protocol (groups of 1 positive + N negatives)."""

from __future__ import annotations

import torch

from crossrank.features.errors import InputError


def ranking_metrics(
    logits: torch.Tensor,
    row_ids: torch.Tensor,
    domains: torch.Tensor,
    group_size: int,
    domain_names: list[str],
    k: int = 10,
) -> dict[str, float]:
    """HR@k and NDCG@k (overall and per domain) from the scores of complete ranking groups.

    The positive's rank counts the negatives scored at least as high (ties count against the model).

    Args:
        logits, row_ids, domains: [N] of real rows (padding removed), any order, every group complete.
        group_size: 1 + negatives.

    Raises:
        InputError: the rows do not make whole groups of ``group_size`` (a ranking set prepared with
            another ``--negatives``).
    """
    if logits.numel() % group_size:
        raise InputError(
            f"the ranking set's {logits.numel():,} rows are not whole groups of {group_size} (1 positive + "
            f"{group_size - 1} negatives).",
            fix="set data.ranking_group_size to 1 + the --negatives of `crossrank prepare ranking` (its "
            "ranking.json says group_size), or prepare the ranking set again.",
        )
    order = torch.argsort(row_ids)
    scores = logits[order].reshape(-1, group_size)
    dom = domains[order].reshape(-1, group_size)[:, 0]
    rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # 0 = the positive is on top
    hit = (rank < k).double()
    ndcg = torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros_like(hit))
    out = {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean())}
    for i, name in enumerate(domain_names):
        mask = dom == i
        if mask.any():
            out[f"hr@{k}/{name}"] = float(hit[mask].mean())
            out[f"ndcg@{k}/{name}"] = float(ndcg[mask].mean())
    return out
