"""Streaming evaluation: metrics accumulated batch by batch (bounded memory) equal the in-memory ones;
across 2 ranks they equal one process's; beyond the exact range the histogram AUC stays within tolerance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossrank.pipeline.core.auc import StreamingAuc, histogram_auc, roc_auc
from crossrank.pipeline.evaluation.metrics import (
    StreamingMetrics,
    compute_metrics,
    score_keys,
)
from tests.conftest import launch


def _data(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.float32)
    logits = (labels * 1.2 + rng.normal(size=n)).astype(np.float32)
    weights = np.ones(n, np.float32)
    weights[rng.random(n) < 0.1] = 0  # padding rows
    domains = rng.integers(0, 2, n)
    ortho = rng.random((n, 2)).astype(np.float32)
    return tuple(torch.from_numpy(a) for a in (logits, labels, weights, domains, ortho))


def test_score_keys_order_like_the_logits() -> None:
    x = np.array([-np.inf, -3e38, -2.5, -1e-30, -0.0, 0.0, 1e-30, 0.7, 0.7, 3e38, np.inf], np.float32)
    keys = score_keys(torch.from_numpy(x))
    assert keys.dtype == np.uint32
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert keys[4] == keys[5] and keys[7] == keys[8]  # -0.0 == 0.0, equal logits tie
    assert len(np.unique(keys)) == len(np.unique(x))


def test_streamed_batches_equal_the_metrics_of_all_rows_at_once() -> None:
    logits, labels, weights, domains, ortho = _data(5000)
    acc = StreamingMetrics(["A", "B"], ["ab", "ba"])
    for s in range(0, 5000, 512):
        acc.update(
            logits[s : s + 512],
            labels[s : s + 512],
            weights[s : s + 512],
            domains[s : s + 512],
            ortho[s : s + 512],
        )
    streamed = acc.finish()
    whole = compute_metrics(logits, labels, weights, domains, ["A", "B"])
    for k, v in whole.items():
        assert streamed[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    keep = weights > 0
    p = torch.sigmoid(logits[keep].double()).numpy()
    assert streamed["auc"] == roc_auc(p, labels[keep].numpy())  # exact range: today's AUC, bit for bit
    assert streamed["ortho/ba"] == pytest.approx(float(ortho[keep, 1].double().mean()), rel=1e-12)


def test_histogram_auc_is_exact_when_each_bin_holds_one_score_and_close_otherwise() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 20000)
    coarse = (np.round(rng.normal(size=20000) * 4) / 4 + labels).astype(np.float32)  # few distinct scores
    fine = (rng.normal(size=20000) + labels).astype(np.float32)
    for scores, tol in ((coarse, 0.0), (fine, 1e-4)):
        acc = StreamingAuc(n_groups=1, exact_rows=1000)  # past the exact range: histogram
        for s in range(0, 20000, 3000):
            part = slice(s, s + 3000)
            acc.add(
                score_keys(torch.from_numpy(scores[part])), labels[part], np.zeros(len(labels[part]), int)
            )
        assert acc.hist is not None and not acc.parts
        overall, dom0 = acc.local_result()
        exact = roc_auc(scores, labels)
        assert abs(overall - exact) <= tol and overall == dom0
    assert math.isnan(histogram_auc(np.array([3, 0]), np.array([0, 0])))
    assert histogram_auc(np.array([1, 0]), np.array([0, 1])) == 1.0


def _rank_metrics(n: int) -> list[dict[str, float]]:
    from crossrank.pipeline.core.distributed import init_distributed

    ctx = init_distributed()
    s = slice(0, 700) if ctx.rank == 0 else slice(700, n)  # uneven shares
    out = []
    for exact_rows in (10**6, 100):  # exact AUC gathered to rank 0; histograms all-reduced
        acc = StreamingMetrics(["A", "B"], ["ab", "ba"], exact_rows=exact_rows)
        acc.update(*(t[s] for t in _data(n)))
        out.append(acc.finish(ctx))
    return out


def test_two_ranks_equal_one_process_exact_and_histogram(tmp_path: Path) -> None:
    n = 3000
    got = launch(2, tmp_path, _rank_metrics, n)
    for mode, exact_rows in enumerate((10**6, 100)):
        one = StreamingMetrics(["A", "B"], ["ab", "ba"], exact_rows=exact_rows)
        one.update(*_data(n))
        expected = one.finish()
        for rank in (0, 1):
            for k, v in expected.items():
                assert got[rank][mode][k] == pytest.approx(v, rel=1e-9, nan_ok=True), (exact_rows, rank, k)
