"""Metrics against brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import torch

from crossrank.pipeline.evaluation.metrics import compute_metrics, format_metrics_table


def brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_metrics_match_definitions() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n).astype(np.float32)
    logits = (labels * 1.5 + rng.normal(size=n)).astype(np.float32)
    domains = rng.integers(0, 2, n)
    weights = np.ones(n, np.float32)
    weights[-50:] = 0  # padding rows are ignored
    m = compute_metrics(
        torch.tensor(logits), torch.tensor(labels), torch.tensor(weights), torch.tensor(domains), ["A", "B"]
    )
    keep = weights > 0
    p = 1 / (1 + np.exp(-logits[keep].astype(np.float64)))
    y = labels[keep]
    assert m["rows"] == 350
    assert math.isclose(m["auc"], brute_auc(p, y), abs_tol=1e-6)
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert math.isclose(m["logloss"], ll, rel_tol=1e-6)
    base = -np.mean(y * np.log(y.mean()) + (1 - y) * np.log(1 - y.mean()))
    assert math.isclose(m["ne"], ll / base, rel_tol=1e-6)
    assert math.isclose(m["calibration"], p.sum() / y.sum(), rel_tol=1e-6)
    for i, d in enumerate(["A", "B"]):
        mask = domains[keep] == i
        assert math.isclose(m[f"auc/{d}"], brute_auc(p[mask], y[mask]), abs_tol=1e-6)
        assert m[f"rows/{d}"] == int(mask.sum())


def test_constant_predictor_at_base_rate_has_ne_one_and_auc_half() -> None:
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    logit = math.log(0.4 / 0.6)
    m = compute_metrics(
        torch.full((5,), logit), labels, torch.ones(5), torch.zeros(5, dtype=torch.long), ["A", "B"]
    )
    assert math.isclose(m["ne"], 1.0, rel_tol=1e-6)
    assert math.isclose(m["auc"], 0.5, abs_tol=1e-9)
    assert math.isnan(m["auc/B"])  # no rows in B: undefined, not 0


def test_table_lists_every_metric_per_split() -> None:
    text = format_metrics_table(
        {"valid": {"auc": 0.7, "rows": 10}, "test": {"auc": 0.6, "rows": 12}}, {"oracle": 0.8}
    )
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "valid", "test"]
    assert lines[1].split() == ["auc", "0.7000", "0.6000"]
    assert lines[2].split() == ["rows", "10", "12"]
    assert lines[3].split() == ["oracle", "0.8000"]
