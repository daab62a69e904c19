"""The job itself: ``prepare_synthetic`` generates every block's rows into the split files and the summary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from crossrank.pipeline.core.atomic import write_json_atomic
from crossrank.pipeline.core.auc import StreamingAuc, order_keys
from crossrank.pipeline.core.outdir import check_target, earlier_output, replaced_folder
from crossrank.pipeline.prepare.synthetic.config import SyntheticConfig
from crossrank.pipeline.prepare.synthetic.rows import _draw_rows, _Rows, _rows_table, output_schema
from crossrank.pipeline.prepare.synthetic.summary import SplitSummary, SyntheticSummary
from crossrank.pipeline.prepare.synthetic.world import _block_rng, build_world, generate_block
from crossrank.pipeline.prepare.synthetic.writer import _SplitWriter

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Split boundaries in timestamp units: t < 0.8 train, 0.8 <= t < 0.9 valid, t >= 0.9 test.
SPLIT_BOUNDS: tuple[int, int] = (800_000_000, 900_000_000)


@dataclass
class _SplitStats:
    """What the summary needs of one split's rows: its users, the row and positive counts, and the oracle
    AUC's accumulator (bounded memory: exact up to ``EXACT_AUC_ROWS`` rows, then a fixed histogram)."""

    users: np.ndarray
    auc: StreamingAuc = field(default_factory=lambda: StreamingAuc(n_groups=1))
    rows: int = 0
    positives: int = 0

    def add(self, rows: _Rows) -> None:
        """Record rows written to the split."""
        self.users[rows.user] = True
        self.auc.add(order_keys(rows.prob), rows.label, np.zeros(rows.label.size, np.int8))
        self.rows += int(rows.label.size)
        self.positives += int(rows.label.sum())


@dataclass
class _Totals:
    """Running totals over all blocks.

    Args:
        hist_values: history values written per domain.
        truncated: (row, domain) histories truncated to ``max_len``.
        events: events generated.
        next_row_id: the row id of the next row drawn.
    """

    hist_values: np.ndarray
    truncated: int = 0
    events: int = 0
    next_row_id: int = 0


def _json_float(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (one class missing) is not valid JSON


def prepare_synthetic(out_dir: Path, config: SyntheticConfig, *, overwrite: bool = False) -> SyntheticSummary:
    """Generate the synthetic data set into ``out_dir``.

    Writes ``train/``, ``valid/``, ``test/`` (``part-NNNNN.parquet``), ``oracle.json`` and, last,
    ``summary.json``, the mark of a complete data set, into a hidden sibling folder that replaces
    ``out_dir`` when complete (``crossrank.pipeline.core.outdir``): a rerun leaves nothing stale, and a
    failed run leaves the earlier output as it was.

    Args:
        out_dir: output folder: new, empty or an earlier ``prepare synthetic`` output (replaced).
        config: generator arguments.
        overwrite: replace ``out_dir`` even when it holds something else.

    Returns:
        The summary also written to ``summary.json``.

    Raises:
        InputError: bad arguments, or an output folder holding something else (without ``overwrite``).
    """
    config.validate()
    out_dir = Path(out_dir)
    check_target(
        out_dir, is_own=is_synthetic_output, overwrite=overwrite, command="crossrank prepare synthetic"
    )
    with replaced_folder(out_dir) as stage:
        return _generate(stage, out_dir, config)


def is_synthetic_output(folder: Path) -> bool:
    """Whether ``folder`` is a complete ``prepare synthetic`` output: one day (with, maybe, ``prepare
    ranking``'s output) or several (``--days``)."""
    one_day = {*SPLITS, "summary.json", "oracle.json", "ranking", "ranking.json"}
    return earlier_output(folder, one_day.__contains__, ("splits", "params")) or earlier_output(
        folder, lambda name: name == "summary.json" or name.startswith("date="), ("days", "first_new_item")
    )


def _generate(stage: Path, out_dir: Path, config: SyntheticConfig) -> SyntheticSummary:
    """Write the data set into the empty folder ``stage``; the summary names ``out_dir``."""
    started = time.perf_counter()
    schema = output_schema(config.domains)
    writers = _open_splits(stage, schema, config)
    stats = {split: _SplitStats(users=np.zeros(config.users, dtype=bool)) for split in SPLITS}
    try:
        totals = _write_rows(config, schema, writers, stats)
        for writer in writers.values():
            writer.close()
    except BaseException as e:
        for writer in writers.values():
            writer.abort(e)
        raise

    splits = {split: _split_summary(stats[split], writers[split].parts) for split in SPLITS}
    params = asdict(config)
    params["domains"], params["domain_medians"] = list(config.domains), list(config.domain_medians)
    params["hist_median"], params["hist_cap"] = config.median_events, config.events_cap
    oracle = {
        "oracle_auc": {s: splits[s].oracle_auc for s in SPLITS},
        "positive_rate": {s: splits[s].positive_rate for s in SPLITS},
        "params": params,
    }
    write_json_atomic(oracle, stage / "oracle.json")
    summary = SyntheticSummary(
        out_dir=str(out_dir),
        splits=splits,
        mean_hist_len={n: float(totals.hist_values[d] / config.rows) for d, n in enumerate(config.domains)},
        truncated_frac=totals.truncated / (config.rows * len(config.domains)),
        events=totals.events,
        seconds=round(time.perf_counter() - started, 3),
        params=params,
    )
    write_json_atomic(summary.to_json(), stage / "summary.json")
    return summary


def _open_splits(out_dir: Path, schema: pa.Schema, config: SyntheticConfig) -> dict[str, _SplitWriter]:
    """A writer per split, into ``out_dir/<split>/`` (created)."""
    writers: dict[str, _SplitWriter] = {}
    for split in SPLITS:
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        writers[split] = _SplitWriter(folder, schema, config.row_group_size, config.values_per_part)
    return writers


def _write_rows(
    config: SyntheticConfig,
    schema: pa.Schema,
    writers: dict[str, _SplitWriter],
    stats: dict[str, _SplitStats],
) -> _Totals:
    """Generate all blocks and their rows into the split writers; returns the totals for the summary."""
    n_dom = len(config.domains)
    totals = _Totals(hist_values=np.zeros(n_dom, dtype=np.int64))
    world = build_world(config)
    domain_names = pa.array(list(config.domains), type=pa.string())
    chunk_rows = max(1024, config.chunk_values // (n_dom * config.max_len))
    for index in range(len(world.block_bounds) - 1):
        block = generate_block(config, world, index)
        totals.events += block.key.size
        rng = _block_rng(config, index, 1)
        remaining = int(world.block_rows[index])
        while remaining > 0:
            n = min(chunk_rows, remaining)
            remaining -= n
            rows = _draw_rows(config, world, block, rng, n)  # looked up here: tests patch job._draw_rows
            row_id = np.arange(totals.next_row_id, totals.next_row_id + n, dtype=np.int64)
            totals.next_row_id += n
            for split, part, part_id in _by_split(rows, row_id):
                table, values, truncated = _rows_table(config, schema, block, part, part_id, domain_names)
                writers[split].add(table, int(values.sum()))
                totals.hist_values += values
                totals.truncated += truncated
                stats[split].add(part)
        del block
    return totals


def _by_split(rows: _Rows, row_id: np.ndarray) -> Iterator[tuple[str, _Rows, np.ndarray]]:
    """The rows of each split (by time) with their row ids, in split order; splits without rows are skipped."""
    split_of = np.searchsorted(np.asarray(SPLIT_BOUNDS), rows.time, side="right")
    for k, split in enumerate(SPLITS):
        sel = np.flatnonzero(split_of == k)
        if sel.size:
            yield split, rows.take(sel), row_id[sel]


def _split_summary(stats: _SplitStats, parts: int) -> SplitSummary:
    """The summary of one split from its collected statistics."""
    n = stats.rows
    return SplitSummary(
        rows=n,
        users=int(stats.users.sum()),
        positive_rate=_json_float(stats.positives / n) if n else None,
        oracle_auc=_json_float(stats.auc.local_result()[0]) if n else None,
        parts=parts,
    )
