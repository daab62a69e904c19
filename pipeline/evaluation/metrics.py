"""Evaluation metrics over gathered predictions: NE, log loss and calibration with ``torchrec.metrics``'
own functions, AUC by ranks (``crossrank.pipeline.core.auc``: TorchRec's ``compute_auc`` does not average ties)."""

from __future__ import annotations

import torch
from torchrec.metrics.calibration import compute_calibration
from torchrec.metrics.ne import compute_cross_entropy, compute_logloss, compute_ne

from crossrank.pipeline.core.auc import roc_auc

ETA = 1e-12


def _auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    # NaN (not 0 or 1) when a class is absent: AUC is undefined there.
    return roc_auc(preds.numpy(), labels.numpy()) if preds.numel() else float("nan")


def compute_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    domains: torch.Tensor,
    domain_names: list[str],
) -> dict[str, float]:
    """AUC, NE, log loss, calibration, per-domain AUC and row counts of one evaluation.

    Args:
        logits, labels, weights, domains: [N] each, gathered from every rank (padding rows have weight 0).
        domain_names: name of each domain index.

    Returns:
        ``{"auc", "ne", "logloss", "calibration", "positive_rate", "rows", "auc/<domain>", "rows/<domain>"}``.

    Example::

        compute_metrics(torch.randn(8), torch.randint(0, 2, (8,)).float(), torch.ones(8),
                        torch.zeros(8, dtype=torch.long), ["A", "B"])
    """
    keep = weights > 0
    logits, labels, weights, domains = (
        logits[keep].double(),
        labels[keep].double(),
        weights[keep].double(),
        domains[keep],
    )
    preds = torch.sigmoid(logits)
    ce_sum = compute_cross_entropy(labels, preds, weights, ETA).sum()
    pos = (labels * weights).sum()
    neg = ((1 - labels) * weights).sum()
    out: dict[str, float] = {
        "auc": _auc(preds, labels),
        "ne": float(compute_ne(ce_sum, weights.sum(), pos, neg, ETA)),
        # torchrec's cross entropy is in bits; log loss is conventionally in nats.
        "logloss": float(compute_logloss(ce_sum, pos, neg, ETA)) * float(torch.log(torch.tensor(2.0))),
        "calibration": float(compute_calibration((preds * weights).sum(), pos)),
        "positive_rate": float(pos / weights.sum().clamp(min=ETA)),
        "rows": int(keep.sum()),
    }
    for i, name in enumerate(domain_names):
        mask = domains == i
        out[f"auc/{name}"] = _auc(preds[mask], labels[mask])
        out[f"rows/{name}"] = int(mask.sum())
    return out


def format_metrics_table(results: dict[str, dict[str, float]], extra: dict[str, float] | None = None) -> str:
    """A fixed-width table: one row per metric, one column per split (e.g. valid, test)."""
    splits = list(results)
    names = list(dict.fromkeys(k for r in results.values() for k in r))
    width = max(len(n) for n in [*names, "metric", *(extra or {})])
    lines = ["metric".ljust(width) + "".join(s.rjust(12) for s in splits)]
    for n in names:
        cells = []
        for s in splits:
            v = results[s].get(n, float("nan"))
            cells.append(f"{v:12d}" if isinstance(v, int) else f"{v:12.4f}")
        lines.append(n.ljust(width) + "".join(cells))
    for n, v in (extra or {}).items():
        lines.append(n.ljust(width) + f"{v:12.4f}")
    return "\n".join(lines)


def latest_tables(result: dict) -> dict[str, dict[str, float]]:
    """The columns of a run's metrics table: the last validation and the test metrics (``metrics.json``)."""
    tables = {}
    if result.get("valid"):
        tables["valid"] = {k: v for k, v in result["valid"][-1].items() if k != "epoch"}
    if result.get("test"):
        tables["test"] = result["test"]
    return tables
