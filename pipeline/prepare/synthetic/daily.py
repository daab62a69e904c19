"""``crossrank prepare synthetic --days N``: the synthetic data set cut into consecutive days, the input of a
scheduled (daily) training job.

One world is generated (``prepare_synthetic``) and its rows are partitioned by time: day ``d`` holds the rows
with ``t`` in ``[d / N, (d + 1) / N)``, written to ``OUT/date=YYYY-MM-DD/{train,valid,test}/`` and split by the
time within the day (train < 0.8 <= valid < 0.9 <= test, as in one-day data). Row ids, labels and the true
click probabilities are those of the generated rows, so each day keeps an oracle AUC.

New items: with ``new_item_frac`` f, the last ``f`` of every domain's item ids (ids >= ``first_new_item``)
launch on day 2. Day 1's rows whose candidate is a new item are dropped and new items are removed from day
1's histories (a day-1 history only holds day-1 events), so a model trained on day 1 has never seen them. From
day 2 they appear as candidates and in histories; histories of later days may show them at times before
their launch, since the generator does not know launches (only their visibility to day 1 matters here).
"""

from __future__ import annotations

import datetime
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrank.features.errors import InputError
from crossrank.pipeline.core.atomic import AtomicParquetWriter, write_json_atomic
from crossrank.pipeline.core.auc import roc_auc
from crossrank.pipeline.core.outdir import check_target, replaced_folder
from crossrank.pipeline.prepare.synthetic.config import SyntheticConfig
from crossrank.pipeline.prepare.synthetic.job import (
    SPLIT_BOUNDS,
    SPLITS,
    is_synthetic_output,
    prepare_synthetic,
)
from crossrank.pipeline.prepare.synthetic.world import TIME_SCALE


@dataclass
class DaySummary:
    """Rows, positive rate and oracle AUC per split of one day."""

    date: str
    rows: dict[str, int] = field(default_factory=dict)
    positive_rate: dict[str, float | None] = field(default_factory=dict)
    oracle_auc: dict[str, float | None] = field(default_factory=dict)
    dropped_new_item_rows: int = 0


@dataclass
class DailySummary:
    """What ``prepare_synthetic_days`` wrote (also ``OUT/summary.json``)."""

    out_dir: str
    days: list[DaySummary]
    first_new_item: int

    def format(self) -> str:
        lines = [
            f"synthetic daily data in {self.out_dir} (new items: ids >= {self.first_new_item} from day 2)"
        ]
        lines.append(f"{'date':<12} {'split':<6} {'rows':>9} {'pos rate':>9} {'oracle AUC':>11}")
        for day in self.days:
            for s in SPLITS:
                auc, pos = day.oracle_auc[s], day.positive_rate[s]
                lines.append(
                    f"{day.date:<12} {s:<6} {day.rows[s]:>9,} {'-' if pos is None else f'{pos:.3f}':>9} "
                    f"{'-' if auc is None else f'{auc:.4f}':>11}"
                )
        return "\n".join(lines)


def _check_args(days: int, start_date: str, new_item_frac: float) -> datetime.date:
    if days < 1:
        raise InputError(f"--days must be >= 1, got {days}.", fix="e.g. --days 3.")
    if not 0.0 <= new_item_frac < 1.0:
        raise InputError(f"--new-item-frac must be in [0, 1), got {new_item_frac}.", fix="e.g. 0.2.")
    try:
        return datetime.date.fromisoformat(start_date)
    except ValueError:
        raise InputError(f"--start-date {start_date!r} is not a date.", fix="use YYYY-MM-DD.") from None


def _visible_on_first_day(table: pa.Table, config: SyntheticConfig, first_new: int) -> tuple[pa.Table, int]:
    """Day 1's rows without new items: rows whose candidate is new are dropped, new ids leave histories."""
    keep = pc.less(table["item_id"], first_new)
    dropped = table.num_rows - int(pc.sum(keep).as_py() or 0)
    table = table.filter(keep)
    for name in config.domains:
        col = f"hist_{name}"
        lists = table[col].combine_chunks()
        values = lists.values
        old = pc.less(values, first_new)
        row_of = np.repeat(np.arange(len(lists)), np.diff(lists.offsets.to_numpy()))
        counts = np.bincount(row_of[old.to_numpy(zero_copy_only=False)], minlength=len(lists))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        kept = pa.ListArray.from_arrays(pa.array(offsets), values.filter(old))
        table = table.set_column(
            table.schema.get_field_index(col), col, kept.cast(table.schema.field(col).type)
        )
    return table, dropped


def _split_of_day(table: pa.Table, days: int) -> tuple[np.ndarray, np.ndarray]:
    """(day index, split index) of every row, from its timestamp."""
    t = table["timestamp"].to_numpy() / TIME_SCALE * days
    day = np.minimum(np.floor(t).astype(np.int64), days - 1)
    split = np.searchsorted(np.asarray(SPLIT_BOUNDS) / TIME_SCALE, t - day, side="right")
    return day, split


def _repartition(
    work: Path, out_dir: Path, dates: list[str], config: SyntheticConfig, first_new: int
) -> list[DaySummary]:
    """Stream the generated rows into one writer per (day, split); returns each day's statistics."""
    summaries = [DaySummary(d) for d in dates]
    labels: dict[tuple[int, int], list[np.ndarray]] = {}
    probs: dict[tuple[int, int], list[np.ndarray]] = {}
    writers: dict[tuple[int, int], AtomicParquetWriter] = {}
    schema = pq.read_schema(next((work / SPLITS[0]).glob("part-*.parquet")))
    try:
        for d, date in enumerate(dates):
            for s, split_name in enumerate(SPLITS):
                path = out_dir / f"date={date}" / split_name / "part-00000.parquet"
                writers[d, s] = AtomicParquetWriter(path, schema, config.row_group_size).__enter__()
        for file in sorted(f for s in SPLITS for f in (work / s).glob("part-*.parquet")):
            for batch in pq.ParquetFile(file).iter_batches(batch_size=config.row_group_size):
                table = pa.Table.from_batches([batch], schema=schema)
                day, split = _split_of_day(table, len(dates))
                for d, s in sorted(set(zip(day.tolist(), split.tolist(), strict=True))):
                    part = table.filter(pa.array((day == d) & (split == s)))  # row order kept
                    if d == 0 and first_new < config.items_per_domain:
                        part, dropped = _visible_on_first_day(part, config, first_new)
                        summaries[0].dropped_new_item_rows += dropped
                    writers[d, s].write(part)
                    labels.setdefault((d, s), []).append(part["label"].to_numpy())
                    probs.setdefault((d, s), []).append(part["true_prob"].to_numpy())
    except BaseException as e:
        for w in writers.values():
            w.__exit__(type(e), e, e.__traceback__)
        raise
    for w in writers.values():
        w.__exit__(None, None, None)
    _fill_stats(summaries, labels, probs)
    return summaries


def _fill_stats(
    summaries: list[DaySummary],
    labels: dict[tuple[int, int], list[np.ndarray]],
    probs: dict[tuple[int, int], list[np.ndarray]],
) -> None:
    for d, day in enumerate(summaries):
        for s, split in enumerate(SPLITS):
            y = np.concatenate(labels.get((d, s), [np.empty(0, np.int8)]))
            p = np.concatenate(probs.get((d, s), [np.empty(0, np.float32)]))
            day.rows[split] = int(y.size)
            day.positive_rate[split] = float(y.mean()) if y.size else None
            auc = roc_auc(p, y) if y.size else float("nan")
            day.oracle_auc[split] = None if auc != auc else float(auc)


def prepare_synthetic_days(
    out_dir: Path,
    config: SyntheticConfig,
    *,
    days: int,
    start_date: str,
    new_item_frac: float = 0.0,
    overwrite: bool = False,
) -> DailySummary:
    """Generate ``config``'s data and write it as ``days`` daily partitions starting at ``start_date``.

    The output is written into a hidden sibling folder that replaces ``out_dir`` when complete
    (``crossrank.pipeline.core.outdir``): a rerun leaves nothing stale (other dates included), and a failed
    run leaves the earlier output as it was.

    Args:
        out_dir: output folder: ``date=YYYY-MM-DD/{train,valid,test}/`` and ``oracle.json`` per day, and
            ``summary.json``; new, empty or an earlier ``prepare synthetic`` output.
        config: generator arguments (``rows`` is the total over all days).
        days: number of days.
        start_date: the first day, ``YYYY-MM-DD``.
        new_item_frac: share of every domain's item ids hidden from day 1 (they launch on day 2).
        overwrite: replace ``out_dir`` even when it holds something else.

    Example::

        prepare_synthetic_days(Path("data/daily"), SyntheticConfig(rows=150_000), days=3,
                               start_date="2026-11-20", new_item_frac=0.2)
    """
    first = _check_args(days, start_date, new_item_frac)
    config.validate()
    out_dir = Path(out_dir)
    check_target(
        out_dir, is_own=is_synthetic_output, overwrite=overwrite, command="crossrank prepare synthetic"
    )
    dates = [(first + datetime.timedelta(days=d)).isoformat() for d in range(days)]
    first_new = config.items_per_domain - round(new_item_frac * config.items_per_domain)
    with replaced_folder(out_dir) as stage:
        work = stage / ".generate"
        prepare_synthetic(work, config)
        summaries = _repartition(work, stage, dates, config, first_new)
        oracle = json.loads((work / "oracle.json").read_text())
        shutil.rmtree(work)
        for day in summaries:  # per day, in the one-day format that `crossrank report --oracle` reads
            day_oracle = {**oracle, "oracle_auc": day.oracle_auc, "positive_rate": day.positive_rate}
            write_json_atomic(day_oracle, stage / f"date={day.date}" / "oracle.json")
        write_json_atomic(
            {"days": [d.__dict__ for d in summaries], "first_new_item": first_new}, stage / "summary.json"
        )
    return DailySummary(str(out_dir), summaries, first_new)
