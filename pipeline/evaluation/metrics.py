"""Evaluation metrics, accumulated batch by batch in memory that does not grow with the evaluation set.

NE, log loss and calibration use ``torchrec.metrics``' own functions on running sums (all-reduced across
ranks). AUC is rank based (ties averaged; TorchRec's ``compute_auc`` does not average ties) through
:class:`crossrank.pipeline.core.auc.StreamingAuc` over an order key of each float32 logit: exact up to
``EXACT_AUC_ROWS`` evaluation rows of all ranks together (the keys, 8 bytes a row, gathered to rank 0 only),
beyond that from fixed histograms (32 MiB for 2 domains) all-reduced across ranks; ``benchmarks/scale.py``
measures the difference to the exact AUC at 10M rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torchrec.metrics.calibration import compute_calibration
from torchrec.metrics.ne import compute_cross_entropy, compute_logloss, compute_ne

from crossrank.pipeline.core.auc import EXACT_AUC_ROWS, StreamingAuc, exact_aucs, order_keys
from crossrank.pipeline.core.distributed import DistContext, gather_to_main

ETA = 1e-12


def score_keys(logits: torch.Tensor) -> np.ndarray:
    """uint32 keys in the order of the float32 logits (so of sigmoid(logits)); -0.0 and 0.0 are equal.

    Args:
        logits: [n] any float dtype (cast to float32, the model's output type).
    """
    return order_keys(logits.detach().float().cpu().numpy())


class AucAccumulator(StreamingAuc):
    """:class:`StreamingAuc` over the domains, with the result over every rank: exact keys gathered to
    rank 0 only while all ranks hold at most ``exact_rows`` together, else histograms all-reduced."""

    def result(self, ctx: DistContext | None) -> list[float]:
        """[overall AUC, AUC of domain 0, 1, ...], the same on every rank (collective with ``ctx``)."""
        if ctx is None or ctx.world_size == 1:
            return self.local_result()
        counts = torch.tensor([self.held, int(self.hist is not None)], dtype=torch.int64)
        dist.all_reduce(counts)
        if counts[1] == 0 and counts[0] <= self.exact_rows:
            return self._exact(ctx)
        self.fold()
        dist.all_reduce(torch.from_numpy(self.hist))  # in place
        return self.histogram_aucs()

    def _exact(self, ctx: DistContext) -> list[float]:
        """Exact AUCs of the kept rows of all ranks, computed on rank 0 and broadcast."""
        keys, labels, domains = self.buffered()
        # One int64 a row on the wire: key (32 bits) | label (1 bit) | domain (the bits above).
        packed = keys.astype(np.int64) | labels.astype(np.int64) << 32 | domains.astype(np.int64) << 33
        gathered = gather_to_main(torch.from_numpy(packed), ctx)
        out = torch.full((1 + self.n_groups,), float("nan"), dtype=torch.float64)
        if gathered is not None:
            g = gathered.numpy()
            aucs = exact_aucs((g & 0xFFFFFFFF).astype(np.uint32), (g >> 32) & 1, g >> 33, self.n_groups)
            out = torch.tensor(aucs, dtype=torch.float64)
        dist.broadcast(out, src=0)
        return [float(v) for v in out]


class StreamingMetrics:
    """AUC, NE, log loss, calibration, per-domain AUC, row counts and mean |cos(X, X')| per fusion
    direction, accumulated batch by batch; memory is bounded whatever the number of rows.

    Args:
        domain_names: name of each domain index.
        directions: names of the model's ``ortho`` columns (fusion directions), maybe none.
        exact_rows: evaluation rows (all ranks) up to which the AUC is exact.

    Example::

        acc = StreamingMetrics(["A", "B"])
        for logits, labels, weights, domains in outputs:  # [B] each, padding rows with weight 0
            acc.update(logits, labels, weights, domains)
        metrics = acc.finish(ctx)  # collective: the same dict on every rank
    """

    def __init__(
        self, domain_names: list[str], directions: list[str] | None = None, exact_rows: int = EXACT_AUC_ROWS
    ) -> None:
        self.domain_names, self.directions = domain_names, list(directions or [])
        self.auc = AucAccumulator(len(domain_names), exact_rows)
        # ce, weight, positive and negative weight, sum of p * w, rows, rows per domain, ortho sums
        self.sums = torch.zeros(6 + len(domain_names) + len(self.directions), dtype=torch.float64)

    def update(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        domains: torch.Tensor,
        ortho: torch.Tensor | None = None,
    ) -> None:
        """One batch: [B] logits, labels, weights (0 = padding, ignored) and domains; ortho [B, directions]."""
        keep = (weights > 0).cpu()
        logits, labels, w = logits.cpu()[keep], labels.cpu()[keep].double(), weights.cpu()[keep].double()
        domains = domains.cpu()[keep]
        preds = torch.sigmoid(logits.double())
        n_dom = len(self.domain_names)
        s = self.sums
        s[0] += compute_cross_entropy(labels, preds, w, ETA).sum()
        s[1] += w.sum()
        s[2] += (labels * w).sum()
        s[3] += ((1 - labels) * w).sum()
        s[4] += (preds * w).sum()
        s[5] += len(labels)
        s[6 : 6 + n_dom] += torch.bincount(domains, minlength=n_dom)[:n_dom].double()
        if self.directions and ortho is not None:
            s[6 + n_dom :] += ortho.cpu()[keep].double().sum(dim=0)
        self.auc.add(score_keys(logits), labels.numpy() > 0.5, domains.numpy())

    def finish(self, ctx: DistContext | None = None) -> dict[str, float]:
        """The metrics over every rank's batches (collective with ``ctx``; ``None``: this process only).

        Returns:
            ``{"auc", "ne", "logloss", "calibration", "positive_rate", "rows", "auc/<domain>",
            "rows/<domain>", "ortho/<direction>"}``.
        """
        s = self.sums.clone()
        if ctx is not None and ctx.world_size > 1:
            dist.all_reduce(s)
        aucs = self.auc.result(ctx)
        ce, w, pos, neg, pw, rows = s[:6]
        out: dict[str, float] = {
            "auc": aucs[0],
            "ne": float(compute_ne(ce, w, pos, neg, ETA)),
            # torchrec's cross entropy is in bits; log loss is conventionally in nats.
            "logloss": float(compute_logloss(ce, pos, neg, ETA)) * float(np.log(2.0)),
            "calibration": float(compute_calibration(pw, pos)),
            "positive_rate": float(pos / w.clamp(min=ETA)),
            "rows": int(rows),
        }
        n_dom = len(self.domain_names)
        for i, name in enumerate(self.domain_names):
            out[f"auc/{name}"] = aucs[1 + i]
            out[f"rows/{name}"] = int(s[6 + i])
        for i, direction in enumerate(self.directions):  # mean over real rows and slots
            out[f"ortho/{direction}"] = float(s[6 + n_dom + i] / rows) if rows else float("nan")
        return out


def compute_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    domains: torch.Tensor,
    domain_names: list[str],
) -> dict[str, float]:
    """AUC, NE, log loss, calibration, per-domain AUC and row counts of predictions held in memory
    (:class:`StreamingMetrics` over one batch, this process only).

    Args:
        logits, labels, weights, domains: [N] each (padding rows have weight 0).
        domain_names: name of each domain index.

    Example::

        compute_metrics(torch.randn(8), torch.randint(0, 2, (8,)).float(), torch.ones(8),
                        torch.zeros(8, dtype=torch.long), ["A", "B"])
    """
    acc = StreamingMetrics(domain_names)
    acc.update(logits, labels, weights, domains)
    return acc.finish(None)


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
