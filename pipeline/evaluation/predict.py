"""A (sharded) model's predictions over a reader, streamed into the metrics (:func:`evaluate`) and the ranking
protocol's HR/NDCG (:func:`evaluate_ranking`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from crossrank.features.spec import FeatureSpec
from crossrank.pipeline.core.distributed import DistContext, all_reduce_max
from crossrank.pipeline.evaluation.metrics import StreamingMetrics
from crossrank.pipeline.evaluation.ranking import StreamingRanking
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.history_groups import forward_batch, grouped_batches
from crossrank.pipeline.reading.reader import ParquetBatchReader


def model_outputs(
    model: torch.nn.Module, reader: ParquetBatchReader, ctx: DistContext, grouped: bool = False
) -> Iterator[tuple[Batch, torch.Tensor, torch.Tensor]]:
    """Every rank runs the same number of (padded) batches in eval mode, yielding each batch's rows
    (``labels, weights, domains, row_ids``), float logits [B] and ortho [B, directions]. With ``grouped``,
    the rows of a batch that share their histories share one encoding
    (:mod:`crossrank.pipeline.reading.history_groups`)."""
    was_training = model.training
    model.eval()
    try:
        steps = all_reduce_max(reader.num_batches, ctx)
        batches = grouped_batches(reader, steps) if grouped else reader.batches(num_batches=steps)
        for batch in batches:
            with torch.no_grad():
                rows, logits, ortho = forward_batch(model, batch.to(ctx.device))
            yield rows, logits.float(), ortho.float()
    finally:
        model.train(was_training)


def evaluate(
    model: torch.nn.Module,
    reader: ParquetBatchReader,
    spec: FeatureSpec,
    ctx: DistContext,
    directions: list[str],
    grouped: bool = False,
) -> dict[str, float]:
    """AUC, NE, log loss, calibration, per-domain AUC and mean |cos(X, X')| per fusion direction, streamed:
    no rank holds every prediction (:class:`StreamingMetrics`); the same dict on every rank."""
    acc = StreamingMetrics(spec.domain_names, directions)
    for rows, logits, ortho in model_outputs(model, reader, ctx, grouped):
        acc.update(logits, rows.labels, rows.weights, rows.domains, ortho)
    return acc.finish(ctx)


def evaluate_ranking(
    model: torch.nn.Module,
    reader: ParquetBatchReader,
    spec: FeatureSpec,
    ctx: DistContext,
    group_size: int,
    grouped: bool = False,
) -> dict[str, float]:
    """HR@10 / NDCG@10 on the sampled ranking protocol (``crossrank prepare ranking``), streamed: each rank
    scores the groups it holds whole (:class:`StreamingRanking`), so no rank holds every prediction."""
    acc = StreamingRanking(group_size, spec.domain_names)
    for rows, logits, _ in model_outputs(model, reader, ctx, grouped):
        keep = rows.weights > 0
        acc.update(logits[keep], rows.row_ids[keep], rows.domains[keep])
    return acc.finish(ctx)
