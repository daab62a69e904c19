"""Rank-based ROC AUC (ties averaged): the one AUC of crossrank, shared by the oracle and the evaluator.

TorchRec's ``compute_auc`` orders tied scores arbitrarily (a constant predictor scores 0.67 instead of 0.5
on some inputs), so evaluation uses this Mann-Whitney form instead.

:class:`StreamingAuc` computes it over batches in bounded memory: exact up to ``exact_rows`` rows (their
order keys are kept, 7 bytes a row), then from a fixed histogram of 2**20 bins per group and class over the
keys' top 20 bits (sign, exponent and 11 mantissa bits: scores within ~5e-4 relative count as tied).
"""

from __future__ import annotations

import numpy as np

#: Rows up to which :class:`StreamingAuc` is exact; beyond, a fixed histogram.
EXACT_AUC_ROWS = 1 << 20
_BIN_SHIFT = 12  # histogram bin = key >> 12: 2**20 bins
BINS = 1 << (32 - _BIN_SHIFT)


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


def order_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of float32 ``scores`` (equal scores, -0.0 and 0.0 included, equal keys)."""
    x = np.asarray(scores, dtype=np.float32) + np.float32(0.0)  # + 0.0 turns -0.0 into 0.0
    bits = x.view(np.uint32)
    return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))


def histogram_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Rank AUC from per-bin counts in ascending score order (a bin's rows count as tied); NaN without
    positives or negatives."""
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    wins2 = 2 * int(np.dot(pos, neg_below)) + int(np.dot(pos, neg))  # twice (wins + ties / 2), exact
    return wins2 / (2.0 * n_pos * n_neg)


class StreamingAuc:
    """Overall and per-group AUC over batches of (order key, label, group), in bounded memory.

    Args:
        n_groups: number of group indices (e.g. domains).
        exact_rows: rows up to which the AUC is exact (keys kept); past them, a fixed histogram.

    Example::

        auc = StreamingAuc(n_groups=2)
        for scores, labels, groups in batches:
            auc.add(order_keys(scores), labels, groups)
        overall, group0, group1 = auc.local_result()
    """

    def __init__(self, n_groups: int, exact_rows: int = EXACT_AUC_ROWS) -> None:
        self.n_groups, self.exact_rows = n_groups, exact_rows
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (keys, labels, groups)
        self.held = 0
        self.hist: np.ndarray | None = None  # [n_groups, 2 (neg, pos), BINS] int64, once folded

    def add(self, keys: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> None:
        """One batch: uint32 keys (:func:`order_keys`), 0/1 labels, group indices."""
        self.parts.append((keys, np.asarray(labels).astype(np.uint8), np.asarray(groups).astype(np.int16)))
        self.held += len(keys)
        if self.held > self.exact_rows:  # past the exact range: count from now on
            self.fold()

    def buffered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kept (keys, labels, groups) rows."""
        if not self.parts:
            return np.empty(0, np.uint32), np.empty(0, np.uint8), np.empty(0, np.int16)
        return tuple(np.concatenate(c) for c in zip(*self.parts, strict=True))  # type: ignore[return-value]

    def fold(self) -> None:
        """Count the kept rows into the histogram (created at the first fold) and drop them."""
        if self.hist is None:
            self.hist = np.zeros((self.n_groups, 2, BINS), np.int64)
        keys, labels, groups = self.buffered()
        self.parts, self.held = [], 0
        cell = (groups.astype(np.int64) * 2 + labels) * BINS + (keys >> _BIN_SHIFT)
        self.hist += np.bincount(cell, minlength=self.hist.size).reshape(self.hist.shape)

    def histogram_aucs(self) -> list[float]:
        """[overall, group 0, 1, ...] from the histogram (folding what is kept first)."""
        self.fold()
        assert self.hist is not None
        total = self.hist.sum(axis=0)
        return [histogram_auc(*total), *(histogram_auc(*self.hist[g]) for g in range(self.n_groups))]

    def local_result(self) -> list[float]:
        """[overall, group 0, 1, ...] of this process's rows: exact unless past ``exact_rows``."""
        if self.hist is not None:
            return self.histogram_aucs()
        return exact_aucs(*self.buffered(), self.n_groups)


def exact_aucs(keys: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_groups: int) -> list[float]:
    """[overall, group 0, 1, ...] exact rank AUCs (NaN where a class is absent)."""

    def auc(mask: np.ndarray | None) -> float:
        k, y = (keys, labels) if mask is None else (keys[mask], labels[mask])
        return roc_auc(k, y) if len(k) else float("nan")

    return [auc(None), *(auc(groups == g) for g in range(n_groups))]
