"""Offline batch scoring and evaluation from a checkpoint, on any number of ranks.

Scoring splits the input into (file, row group) units balanced over the ranks by rows. Each unit's scores
go to one Parquet file, ``OUT/part-NNNNN.parquet``, written atomically, and then to a manifest entry,
``OUT/_manifest/part-NNNNN.json``, that records the unit's file identity and the checkpoint's. A restart
skips the units whose entry matches, rescores changed units and removes the parts of units that are gone,
and a run with another checkpoint or input is refused unless ``overwrite`` (see
:mod:`crossrank.pipeline.scoring.output`), so the output holds every current input row exactly once, even
across crashes. No rank reads more than one row group at a time. Every rank runs the same number of forward
passes (padded with empty batches), so the sharded model's collectives never wait on a rank that has
finished. By default the rows of a batch that share their histories (a user's candidates) share one history
encoding (:mod:`crossrank.pipeline.reading.history_groups`), with the row-by-row path's scores.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from crossrank.features.errors import InputError
from crossrank.features.files import open_parquet
from crossrank.features.spec import FeatureSpec
from crossrank.features.storage import as_path
from crossrank.pipeline.core.atomic import write_json_atomic, write_parquet_atomic
from crossrank.pipeline.core.distributed import (
    DistContext,
    all_reduce_max,
    check_shared_storage,
    init_distributed,
)
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.history_groups import GroupedBatch, forward_batch, grouped_batch
from crossrank.pipeline.reading.reader import (
    BlockConverter,
    Unit,
    assign_units,
    discover_units,
    empty_batch,
    read_unit,
)
from crossrank.pipeline.scoring import output as output_folder
from crossrank.pipeline.scoring.model import LoadedModel, checkpoint_spec, load_for_inference
from crossrank.pipeline.training.checkpoint import check_checkpoint_files, resolve_checkpoint


@dataclass
class ScoreResult:
    """What one rank of a scoring job did."""

    rows: int
    units_scored: int
    units_skipped: int
    wall_s: float
    parts_removed: int = 0  # stale parts (changed or vanished units, another job's output) removed first

    @property
    def rows_per_s(self) -> float:
        return self.rows / max(self.wall_s, 1e-9)


def _scores(model: torch.nn.Module, batch: Batch | GroupedBatch, ctx: DistContext) -> torch.Tensor:
    _, logits, _ = forward_batch(model, batch.to(ctx.device))
    return torch.sigmoid(logits.float()).cpu()


@dataclass(frozen=True)
class _Job:
    """What one rank's scoring job reads with, how it batches and where it writes."""

    spec: FeatureSpec
    model: torch.nn.Module
    ctx: DistContext
    output: Path
    batch_size: int
    passthrough: list[str]
    record: dict[str, Any]  # the job record (input, checkpoint identity, passthrough)
    grouped: bool = True  # rows of a batch that share their histories share one encoding (history_groups)


@dataclass(frozen=True)
class _Plan:
    """This rank's share of the input."""

    names: dict[Unit, str]  # every unit of the input -> its part name
    identity: dict[Unit, dict[str, Any]]  # every unit -> its file identity (manifest entries record it)
    mine: list[Unit]  # the units assigned to this rank
    todo: list[Unit]  # those without a valid manifest entry yet
    total_steps: int  # forward passes every rank runs: the most any rank needs
    removed: int  # stale parts removed before scoring


def _check_passthrough(units: list[Unit], passthrough: list[str]) -> None:
    for col in passthrough:
        schema = open_parquet(units[0].file).schema_arrow
        if col not in schema.names:
            raise InputError(
                f"passthrough column '{col}' is not in the input.",
                where=str(units[0].file),
                fix="check --passthrough.",
            )


def _plan(job: _Job, input_path: str | Path, overwrite: bool) -> _Plan:
    """Split the input into units, tidy the output folder (rank 0, while the others wait), pick this rank's
    unfinished units, and agree on the step count."""
    units = discover_units(job.spec, input_path, with_label=False)
    _check_passthrough(units, job.passthrough)
    identities = output_folder.unit_identities(units)
    state = output_folder.check_output(
        job.output, job.record, overwrite
    )  # every rank, before anything changes
    all_reduce_max(0, job.ctx)  # a barrier: every rank has checked the folder
    removed = (
        output_folder.tidy_output(job.output, job.record, identities, state.clear) if job.ctx.is_main else 0
    )
    removed = all_reduce_max(removed, job.ctx)  # and a barrier: the folder is tidy
    done = output_folder.valid_entries(job.output, job.record, identities)
    names = dict(zip(units, output_folder.part_names(identities, done), strict=True))
    identity = dict(zip(units, identities, strict=True))
    mine = assign_units(units, job.ctx.world_size)[job.ctx.rank]
    todo = [u for u in mine if not output_folder.is_done(identity[u], done)]
    steps = sum(-(-u.num_rows // job.batch_size) for u in todo)
    return _Plan(names, identity, mine, todo, all_reduce_max(steps, job.ctx), removed)


class _UnitLoader:
    """Reads a unit's columns and cuts them into ready batches (run on a background thread)."""

    def __init__(self, job: _Job) -> None:
        spec = job.spec
        self.converter = BlockConverter(spec, with_label=False)
        self.keys = (spec.pooled_keys, spec.sequence_keys)
        self.columns = list(
            dict.fromkeys([*self.converter.columns, spec.candidate.domain_column, *job.passthrough])
        )
        self.batch_size = job.batch_size
        self.spec, self.grouped = spec, job.grouped

    def __call__(self, unit: Unit) -> tuple[pa.Table, list[tuple[Batch | GroupedBatch, int]]]:
        """A unit's table and its ready batches with their real row counts."""
        table = read_unit(unit, self.columns)
        block = self.converter.convert(table, str(unit))
        size = self.batch_size
        cuts = [block.slice(lo, lo + size) for lo in range(0, len(block), size)]
        if self.grouped:
            return table, [(grouped_batch(c, self.spec, size), len(c)) for c in cuts]
        return table, [(c.to_batch(*self.keys, size), len(c)) for c in cuts]


def _output_table(job: _Job, table: pa.Table, scores: torch.Tensor) -> pa.Table:
    spec = job.spec
    return pa.table(
        {
            spec.row_id: table.column(spec.row_id),
            "domain": table.column(spec.candidate.domain_column).cast(pa.string()),
            "score": pa.array(scores.numpy().astype(np.float32)),
            **{c: table.column(c) for c in job.passthrough},
        }
    )


def _commit(job: _Job, name: str, unit: Unit, identity: dict[str, Any], out: pa.Table) -> None:
    # Scores first, then the manifest entry: a crash in between only means the unit is scored again (the
    # part without an entry is removed when the job restarts). A failed write (a full disk: an InputError from
    # the atomic writers) leaves neither: the part is removed when its entry cannot be written.
    part = job.output / f"{name}.parquet"
    write_parquet_atomic(out, part, row_group_size=max(1, out.num_rows))
    try:
        write_json_atomic(
            output_folder.manifest_entry(unit, identity, job.record, out.num_rows),
            job.output / output_folder.MANIFEST / f"{name}.json",
        )
    except Exception:
        part.unlink(missing_ok=True)
        raise


def _score_units(job: _Job, plan: _Plan, bar: tqdm, start: float) -> tuple[int, int]:
    """Score and commit this rank's unfinished units in order; returns (rows scored, forward passes run)."""
    load, todo = _UnitLoader(job), plan.todo
    rows, done = 0, 0
    # Overlap I/O with the forward passes: the next unit is read, converted and batched, and the previous
    # one written, on background threads (pyarrow releases the GIL) while the model scores the current one.
    with ThreadPoolExecutor(max_workers=1) as reader_pool, ThreadPoolExecutor(max_workers=1) as writer_pool:
        pending = reader_pool.submit(load, todo[0]) if todo else None
        writes: list[Future[None]] = []
        for i, unit in enumerate(todo):
            table, batches = pending.result()  # type: ignore[union-attr]
            pending = reader_pool.submit(load, todo[i + 1]) if i + 1 < len(todo) else None
            parts = []
            for batch, n_real in batches:
                parts.append(_scores(job.model, batch, job.ctx)[:n_real])
                done += 1
            out = _output_table(job, table, torch.cat(parts))
            for w in writes:  # stop at the first failed write, as a crash would
                if w.done():
                    w.result()
            name, identity = plan.names[unit], plan.identity[unit]
            writes.append(writer_pool.submit(_commit, job, name, unit, identity, out))
            rows += out.num_rows
            bar.update(out.num_rows)
            bar.set_postfix(rows_per_s=f"{rows / (time.perf_counter() - start):,.0f}")
        for w in writes:
            w.result()  # surface write errors before reporting success
    return rows, done


@torch.no_grad()
def score(
    loaded: LoadedModel,
    input_path: str | Path,
    output: str | Path,
    ctx: DistContext,
    *,
    batch_size: int = 4096,
    passthrough: list[str] | None = None,
    overwrite: bool = False,
    grouped: bool = True,
) -> ScoreResult:
    """Score every row of ``input_path`` (a Parquet file or folder; labels not needed) into ``output``.

    Output columns: the spec's row id, ``domain`` (the candidate's domain), ``score`` (float32 click
    probability), then the ``passthrough`` columns, in input order within each unit. An output folder
    written with another checkpoint, input or passthrough list is an InputError unless ``overwrite``
    (then it is cleared first). With ``grouped`` (the default), the rows of a batch that share their
    histories share one history encoding (:mod:`crossrank.pipeline.reading.history_groups`; the scores
    equal the row-by-row path's to float rounding); ``grouped=False`` encodes every row's history itself.
    """
    spec, cols = loaded.spec, list(passthrough or [])
    record = output_folder.job_record(loaded.checkpoint, input_path, cols)
    job = _Job(spec, loaded.sharded.model, ctx, as_path(output), batch_size, cols, record, grouped)
    plan = _plan(job, input_path, overwrite)
    bar = tqdm(
        total=sum(u.num_rows for u in plan.todo),
        desc="score",
        unit="rows",
        disable=not ctx.is_main,
        mininterval=1.0,
    )
    start = time.perf_counter()
    rows, done = _score_units(job, plan, bar, start)
    for _ in range(plan.total_steps - done):  # keep step with ranks that still have units
        _scores(job.model, empty_batch(spec, batch_size), ctx)
    bar.close()
    wall_s = time.perf_counter() - start
    return ScoreResult(rows, len(plan.todo), len(plan.mine) - len(plan.todo), wall_s, plan.removed)


def _check_before_loading(
    checkpoint: Path, input_path: str, output: Path, cols: list[str], overwrite: bool
) -> None:
    """The cheap checks, before the model is built: the output folder (a file? writable? another job's?),
    the checkpoint's files and spec, and the input's files and schema."""
    output_folder.check_output(output, output_folder.job_record(checkpoint, input_path, cols), overwrite)
    check_checkpoint_files(checkpoint)
    units = discover_units(checkpoint_spec(checkpoint), input_path, with_label=False)
    _check_passthrough(units, cols)


def run_score(
    checkpoint: str,
    input_path: str,
    output: str,
    batch_size: int,
    passthrough: list[str],
    overwrite: bool = False,
    grouped: bool = True,
) -> ScoreResult:
    """The ``crossrank score`` job (one rank of possibly many)."""
    check_shared_storage(output, "--output")  # a job of several nodes writes one output folder
    ctx = init_distributed()
    path = resolve_checkpoint(checkpoint)
    _check_before_loading(path, input_path, as_path(output), passthrough, overwrite)
    loaded = load_for_inference(checkpoint, ctx)  # resolves it again, and says which one it uses
    result = score(
        loaded,
        input_path,
        output,
        ctx,
        batch_size=batch_size,
        passthrough=passthrough,
        overwrite=overwrite,
        grouped=grouped,
    )
    if ctx.is_main:
        removed = f", {result.parts_removed} stale part(s) removed" if result.parts_removed else ""
        print(
            f"scored {result.rows:,} rows on rank 0 ({result.units_scored} unit(s), {result.units_skipped} already "
            f"done{removed}) in {result.wall_s:.1f}s, {result.rows_per_s:,.0f} rows/s; output in {output}"
        )
    return result
