"""Rank-based ROC AUC (ties averaged): the one AUC of crossrank, shared by the oracle and the evaluator.

TorchRec's ``compute_auc`` orders tied scores arbitrarily (a constant predictor scores 0.67 instead of 0.5
on some inputs), so evaluation uses this Mann-Whitney form instead.
"""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney U); tied scores get their average rank.

    Args:
        scores: scores, any real dtype, shape (n,).
        labels: 0/1 (or bool) labels, shape (n,).

    Returns:
        The AUC, or NaN when there are no positives or no negatives.
    """
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Tie groups: [start, end) runs of equal scores; each member gets the mean 1-based rank.
    new_group = np.empty(scores.size, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], scores.size)
    group_rank = (starts + ends + 1) / 2.0
    group_pos = np.add.reduceat(labels[order].astype(np.int64), starts)
    rank_sum = float(np.dot(group_rank, group_pos))
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (float(n_pos) * float(n_neg))
