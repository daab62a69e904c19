"""Predictions of a (sharded) model over a reader on every rank, and the metrics computed from them."""

from __future__ import annotations

import torch

from crossrank.features.spec import FeatureSpec
from crossrank.pipeline.core.distributed import DistContext, all_gather_cat, all_reduce_max
from crossrank.pipeline.evaluation.metrics import compute_metrics
from crossrank.pipeline.evaluation.ranking import ranking_metrics
from crossrank.pipeline.reading.reader import ParquetBatchReader


@torch.no_grad()
def predict(model: torch.nn.Module, reader: ParquetBatchReader, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Every rank runs the same number of (padded) batches; predictions of all ranks are gathered on every
    rank: ``logits, labels, weights, domains, ortho, row_ids``."""
    was_training = model.training
    model.eval()
    steps = all_reduce_max(reader.num_batches, ctx)
    outs: list[tuple[torch.Tensor, ...]] = []
    for batch in reader.batches(num_batches=steps):
        batch = batch.to(ctx.device)
        _, (_, logits, labels, weights, domains, ortho) = model(batch)
        outs.append((logits.float(), labels.float(), weights.float(), domains, ortho.float(), batch.row_ids))
    model.train(was_training)
    names = ("logits", "labels", "weights", "domains", "ortho", "row_ids")
    return {
        n: all_gather_cat(torch.cat(c), ctx).cpu()
        for n, c in zip(names, zip(*outs, strict=True), strict=True)
    }


def evaluate(
    model: torch.nn.Module,
    reader: ParquetBatchReader,
    spec: FeatureSpec,
    ctx: DistContext,
    directions: list[str],
) -> dict[str, float]:
    """AUC, NE, log loss, calibration, per-domain AUC and mean |cos(X, X')| per fusion direction."""
    p = predict(model, reader, ctx)
    metrics = compute_metrics(
        p["logits"], p["labels"], p["weights"], p["domains"], domain_names=spec.domain_names
    )
    keep = p["weights"] > 0
    for i, direction in enumerate(directions):  # mean over real rows and slots
        metrics[f"ortho/{direction}"] = float(p["ortho"][keep, i].mean())
    return metrics


def evaluate_ranking(
    model: torch.nn.Module, reader: ParquetBatchReader, spec: FeatureSpec, ctx: DistContext, group_size: int
) -> dict[str, float]:
    """HR@10 / NDCG@10 on the sampled ranking protocol (``crossrank prepare ranking``)."""
    p = predict(model, reader, ctx)
    keep = p["weights"] > 0
    return ranking_metrics(
        p["logits"][keep], p["row_ids"][keep], p["domains"][keep], group_size, spec.domain_names
    )
