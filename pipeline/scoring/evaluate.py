"""``crossrank evaluate``: the metrics table of a checkpoint on labeled data, without training."""

from __future__ import annotations

import json

from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.evaluation.metrics import format_metrics_table
from crossrank.pipeline.evaluation.predict import evaluate, evaluate_ranking
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.scoring.model import load_for_inference


def run_evaluate(
    checkpoint: str, data: str, ranking: str | None, batch_size: int, grouped: bool = True
) -> dict[str, float]:
    """The ``crossrank evaluate`` job: the metrics table of a checkpoint on labeled data, without training.
    With ``grouped`` (the default), the rows of a batch that share their histories share one history
    encoding (the ranking protocol's 1 + 99 candidates); ``grouped=False`` encodes every row's history."""
    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    spec, model = loaded.spec, loaded.sharded.model
    reader = ParquetBatchReader(spec, data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    metrics = evaluate(model, reader, spec, ctx, loaded.sharded.directions, grouped)
    if ranking:
        rk = ParquetBatchReader(spec, ranking, batch_size, rank=ctx.rank, world_size=ctx.world_size)
        size = loaded.cfg.data.ranking_group_size
        metrics.update(evaluate_ranking(model, rk, spec, ctx, size, grouped))
    if ctx.is_main:
        print(f"checkpoint {loaded.checkpoint} on {data}:")
        print(format_metrics_table({"eval": metrics}))
        print(json.dumps(metrics))
    return metrics
