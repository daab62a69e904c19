"""Offline batch scoring and evaluation from a checkpoint, on any number of ranks.

Scoring splits the input into (file, row group) units balanced over the ranks by rows. Each unit's scores
go to one Parquet file, ``OUT/part-NNNNN.parquet``, written atomically, and then to a manifest entry,
``OUT/_manifest/part-NNNNN.json``. A restart skips the units that have an entry, so every input row gets
exactly one output row even across crashes. No rank reads more than one row group at a time. Every rank
runs the same number of forward passes (padded with empty batches), so the sharded model's collectives
never wait on a rank that has finished.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from features.errors import InputError
from features.spec import FeatureSpec, load_spec
from pipeline.batch import Batch
from pipeline.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
from pipeline.config import JobConfig, config_from_dict
from pipeline.distributed import DistContext, all_reduce_max, init_distributed
from pipeline.metrics import format_metrics_table
from pipeline.parquet_out import write_json_atomic, write_parquet_atomic
from pipeline.reader import (
    BlockConverter,
    ParquetBatchReader,
    Unit,
    assign_units,
    discover_units,
    empty_batch,
    read_unit,
)
from pipeline.train import ShardedRanker, build_sharded_model, evaluate, evaluate_ranking


@dataclass
class LoadedModel:
    """A checkpoint's model, sharded for this job's world size, with the spec and config it was trained with."""

    sharded: ShardedRanker
    spec: FeatureSpec
    cfg: JobConfig
    checkpoint: Path


def load_for_inference(checkpoint: str | Path, ctx: DistContext) -> LoadedModel:
    """Build the model a checkpoint was trained as, planned for *this* world size, and load its weights
    (DCP reshards them); the optimizer state is not read."""
    path = resolve_checkpoint(checkpoint)
    meta = read_meta(path)
    spec = load_spec(path / "spec.yaml")
    cfg = config_from_dict(meta["config"], str(path / "meta.json"))
    sharded = build_sharded_model(spec, cfg, ctx)
    load_checkpoint(path, sharded.model, None, ctx)
    sharded.model.eval()
    return LoadedModel(sharded, spec, cfg, path)


@dataclass
class ScoreResult:
    """What one rank of a scoring job did."""

    rows: int
    units_scored: int
    units_skipped: int
    wall_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.wall_s, 1e-9)


def _part_name(index: int) -> str:
    return f"part-{index:05d}"


def _scores(model: torch.nn.Module, batch, ctx: DistContext) -> torch.Tensor:  # type: ignore[no-untyped-def]
    _, (_, logits, *_) = model(batch.to(ctx.device))
    return torch.sigmoid(logits.float()).cpu()


@torch.no_grad()
def score(
    loaded: LoadedModel,
    input_path: str | Path,
    output: str | Path,
    ctx: DistContext,
    *,
    batch_size: int = 4096,
    passthrough: list[str] | None = None,
) -> ScoreResult:
    """Score every row of ``input_path`` (a Parquet file or folder; labels not needed) into ``output``.

    Output columns: the spec's row id, ``domain`` (the candidate's domain), ``score`` (float32 click
    probability), then the ``passthrough`` columns, in input order within each unit.
    """
    spec, model = loaded.spec, loaded.sharded.model
    passthrough = list(passthrough or [])
    output = Path(output)
    manifest = output / "_manifest"
    units = discover_units(spec, input_path, with_label=False)
    for col in passthrough:
        schema = pq.ParquetFile(units[0].file).schema_arrow
        if col not in schema.names:
            raise InputError(
                f"passthrough column '{col}' is not in the input.",
                where=str(units[0].file),
                fix="check --passthrough.",
            )
    index = {u: i for i, u in enumerate(units)}
    mine = assign_units(units, ctx.world_size)[ctx.rank]
    todo = [u for u in mine if not (manifest / f"{_part_name(index[u])}.json").is_file()]
    steps = sum(-(-u.num_rows // batch_size) for u in todo)
    total = all_reduce_max(steps, ctx)
    converter = BlockConverter(spec, with_label=False)
    keys = (spec.pooled_keys, spec.sequence_keys)
    columns = list(dict.fromkeys([*converter.columns, spec.candidate.domain_column, *passthrough]))
    bar = tqdm(
        total=sum(u.num_rows for u in todo),
        desc="score",
        unit="rows",
        disable=not ctx.is_main,
        mininterval=1.0,
    )
    start, rows, done = time.perf_counter(), 0, 0

    def load(unit: Unit) -> tuple[pa.Table, list[tuple[Batch, int]]]:
        """A unit's table and its ready batches with their real row counts."""
        table = read_unit(unit, columns)
        block = converter.convert(table, str(unit))
        cuts = [block.slice(lo, lo + batch_size) for lo in range(0, len(block), batch_size)]
        return table, [(c.to_batch(*keys, batch_size), len(c)) for c in cuts]

    def commit(unit: Unit, out: pa.Table) -> None:
        # Scores first, then the manifest entry: a crash in between only means the unit is scored again.
        name = _part_name(index[unit])
        write_parquet_atomic(out, output / f"{name}.parquet", row_group_size=max(1, out.num_rows))
        write_json_atomic(
            {"file": str(unit.file), "row_group": unit.row_group, "rows": out.num_rows},
            manifest / f"{name}.json",
        )

    # Overlap I/O with the forward passes: the next unit is read, converted and batched, and the previous
    # one written, on background threads (pyarrow releases the GIL) while the model scores the current one.
    with ThreadPoolExecutor(max_workers=1) as reader_pool, ThreadPoolExecutor(max_workers=1) as writer_pool:
        pending = reader_pool.submit(load, todo[0]) if todo else None
        writes = []
        for i, unit in enumerate(todo):
            table, batches = pending.result()  # type: ignore[union-attr]
            pending = reader_pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            parts = []
            for batch, n_real in batches:
                parts.append(_scores(model, batch, ctx)[:n_real])
                done += 1
            out = pa.table(
                {
                    spec.row_id: table.column(spec.row_id),
                    "domain": table.column(spec.candidate.domain_column).cast(pa.string()),
                    "score": pa.array(torch.cat(parts).numpy().astype(np.float32)),
                    **{c: table.column(c) for c in passthrough},
                }
            )
            for w in writes:  # stop at the first failed write, as a crash would
                if w.done():
                    w.result()
            writes.append(writer_pool.submit(commit, unit, out))
            rows += out.num_rows
            bar.update(out.num_rows)
            bar.set_postfix(rows_per_s=f"{rows / (time.perf_counter() - start):,.0f}")
        for w in writes:
            w.result()  # surface write errors before reporting success
    for _ in range(total - done):  # keep step with ranks that still have units
        _scores(model, empty_batch(spec, batch_size), ctx)
    bar.close()
    return ScoreResult(rows, len(todo), len(mine) - len(todo), time.perf_counter() - start)


def run_score(
    checkpoint: str, input_path: str, output: str, batch_size: int, passthrough: list[str]
) -> ScoreResult:
    """The ``crossrank score`` job (one rank of possibly many)."""
    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    result = score(loaded, input_path, output, ctx, batch_size=batch_size, passthrough=passthrough)
    if ctx.is_main:
        print(
            f"scored {result.rows:,} rows on rank 0 ({result.units_scored} unit(s), {result.units_skipped} already "
            f"done) in {result.wall_s:.1f}s, {result.rows_per_s:,.0f} rows/s; output in {output}"
        )
    return result


def run_evaluate(checkpoint: str, data: str, ranking: str | None, batch_size: int) -> dict[str, float]:
    """The ``crossrank evaluate`` job: the metrics table of a checkpoint on labeled data, without training."""
    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    spec, model = loaded.spec, loaded.sharded.model
    reader = ParquetBatchReader(spec, data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    metrics = evaluate(model, reader, spec, ctx, loaded.sharded.directions)
    if ranking:
        rk = ParquetBatchReader(spec, ranking, batch_size, rank=ctx.rank, world_size=ctx.world_size)
        metrics.update(evaluate_ranking(model, rk, spec, ctx, loaded.cfg.data.ranking_group_size))
    if ctx.is_main:
        print(f"checkpoint {loaded.checkpoint} on {data}:")
        print(format_metrics_table({"eval": metrics}))
        print(json.dumps(metrics))
    return metrics
