"""The sampled ranking protocol of the cross-domain literature: per user and domain, the held-out positive
against ``negatives`` items of that domain the user never interacted with; HR@10 and NDCG@10.

``prepare_ranking`` writes ``DATA_DIR/ranking/part-00000.parquet``: groups of ``negatives + 1`` rows that
share the positive row's context (user, histories, dense columns) and differ in the candidate item and in
the columns that describe it (``item_columns``, e.g. MovieLens' genres and year: each negative gets its own
item's values, from any row of that item); the
positive is row 0 of its group and ``row_id = group * (negatives + 1) + position``.
``crossrank.pipeline.evaluation.ranking.ranking_metrics`` turns scores of those rows back into HR@K / NDCG@K.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from crossrank.features.errors import InputError
from crossrank.features.files import list_parquet_files
from crossrank.pipeline.core.atomic import AtomicParquetWriter, write_json_atomic
from crossrank.pipeline.core.outdir import check_target, read_json, replaced_folder

SPLITS = ("train", "valid", "test")


@dataclass
class RankingSummary:
    """What ``prepare_ranking`` wrote."""

    groups: dict[str, int]  # per domain
    negatives: int
    rows: int
    path: str

    def format(self) -> str:
        """One line: groups per domain, rows and the output file."""
        per = ", ".join(f"{d} {n:,}" for d, n in self.groups.items())
        return f"ranking protocol: {sum(self.groups.values()):,} groups ({per}) x (1 + {self.negatives}) = {self.rows:,} rows -> {self.path}"


def _rated_keys(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per domain: sorted unique user*2^32+item keys of every interaction, and the domain's item catalog."""
    files = [str(f) for s in SPLITS if (data_dir / s).exists() for f in list_parquet_files(data_dir / s)]
    table = ds.dataset(files, format="parquet").to_table(columns=["user_id", "item_id", "domain"])
    rated, catalog = {}, {}
    for d in pc.unique(table.column("domain")).to_pylist():
        sub = table.filter(pc.equal(table.column("domain"), d))
        users = sub.column("user_id").to_numpy().astype(np.int64)
        items = sub.column("item_id").to_numpy().astype(np.int64)
        rated[d] = np.unique(users * 2**32 + items)
        catalog[d] = np.unique(items)
    return rated, catalog


def _sample_negatives(
    users: np.ndarray, catalog: np.ndarray, rated: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """[G, k] distinct catalog items per user that the user never rated (vectorised rejection sampling)."""
    out = np.full((len(users), k), -1, np.int64)
    todo = np.arange(len(users))
    n_draw = 2 * k + 8
    while len(todo):
        draw = catalog[rng.integers(0, len(catalog), (len(todo), n_draw))]
        draw.sort(axis=1)
        dup = np.zeros_like(draw, dtype=bool)
        dup[:, 1:] = draw[:, 1:] == draw[:, :-1]
        seen = np.isin(users[todo, None] * 2**32 + draw, rated)
        ok = ~dup & ~seen
        enough = ok.sum(axis=1) >= k
        for_rows = todo[enough]
        # keep the first k valid draws of each row, in random order (the sort above ordered them)
        order = np.argsort(~ok[enough], axis=1, kind="stable")[:, :k]
        picked = np.take_along_axis(draw[enough], order, axis=1)
        out[for_rows] = rng.permuted(picked, axis=1)
        todo = todo[~enough]
        n_draw *= 2  # heavy users (few unrated items) need more draws
    return out


def prepare_ranking(
    data_dir: Path,
    *,
    negatives: int = 99,
    users: int = 0,
    seed: int = 0,
    chunk_groups: int = 512,
    overwrite: bool = False,
    item_columns: list[str] | None = None,
) -> RankingSummary:
    """Build ``data_dir/ranking`` (and ``data_dir/ranking.json``) from prepared data (``train/``,
    ``valid/``, ``test/``).

    ``ranking/`` is written into a hidden sibling folder that replaces it when complete, and
    ``ranking.json`` is removed before that swap and written after it: a failed run leaves the earlier
    output as it was, and ``ranking.json`` never describes another run's rows.

    Args:
        data_dir: prepared data (the data contract's columns).
        negatives: sampled negatives per positive (99 in the literature).
        users: evaluate this many randomly chosen users (0: all), to bound evaluation cost.
        seed: sampling seed.
        chunk_groups: groups written per chunk (bounds memory: each row repeats the positive's histories).
        overwrite: replace ``data_dir/ranking`` even when it holds something else.
        item_columns: columns that describe the candidate item (None: the ``item_columns`` of the data's
            ``summary.json``, if it names any).
    """
    data_dir = Path(data_dir)
    if not (data_dir / "test").exists():
        raise InputError(
            "no test/ split in the data folder.", where=str(data_dir), fix="prepare the data first."
        )
    if negatives < 1:
        raise InputError(f"negatives must be >= 1, got {negatives}.", fix="e.g. --negatives 99.")
    check_target(
        data_dir / "ranking",
        is_own=is_ranking_output,
        overwrite=overwrite,
        command="crossrank prepare ranking",
    )
    rated, catalog = _rated_keys(data_dir)
    attributes = _item_attributes(data_dir, item_columns)
    # One generator for the user sample, then every negative: the seed fixes the whole protocol.
    rng = np.random.default_rng(seed)
    positives = _held_out_positives(data_dir, users, rng)
    group_size = negatives + 1
    out = data_dir / "ranking" / "part-00000.parquet"
    counts: Counter[str] = Counter()
    with replaced_folder(out.parent) as stage:
        size = chunk_groups * group_size
        with AtomicParquetWriter(stage / out.name, positives.schema, row_group_size=size) as writer:
            for start in range(0, positives.num_rows, chunk_groups):
                chunk = positives.slice(start, chunk_groups)
                items, chunk_counts = _group_items(chunk, rated, catalog, negatives, rng, str(data_dir))
                counts.update(chunk_counts)
                writer.write(_with_item_attributes(_expand_groups(chunk, items, start), attributes))
        (data_dir / "ranking.json").unlink(missing_ok=True)  # last before the swap: never a stale description
    summary = RankingSummary(
        groups=dict(sorted(counts.items())),
        negatives=negatives,
        rows=positives.num_rows * group_size,
        path=str(out),
    )
    write_json_atomic(
        {"groups": summary.groups, "negatives": negatives, "group_size": group_size, "seed": seed},
        data_dir / "ranking.json",
    )
    return summary


def is_ranking_output(folder: Path) -> bool:
    """Whether ``folder`` (``DATA_DIR/ranking``) is a complete earlier ``prepare ranking`` output."""
    described = isinstance(read_json(folder.parent / "ranking.json"), dict)
    return described and {p.name for p in folder.iterdir()} <= {"part-00000.parquet"}


def _held_out_positives(data_dir: Path, users: int, rng: np.random.Generator) -> pa.Table:
    """The held-out positive of each (user, domain), ordered by (domain, user): its latest positive test row.

    Args:
        data_dir: prepared data.
        users: keep the positives of this many randomly chosen users (0: all).
        rng: the sampling generator (used only when ``users`` is set).
    """
    test = ds.dataset(data_dir / "test", format="parquet").to_table()
    pos = test.filter(pc.equal(test.column("label"), 1))
    keys = pos.select(["user_id", "domain", "timestamp", "row_id"]).to_pandas()
    keys["i"] = np.arange(len(keys))
    keys = keys.sort_values(["user_id", "domain", "timestamp", "row_id"]).drop_duplicates(
        ["user_id", "domain"], keep="last"
    )
    if users:
        chosen = rng.permutation(keys["user_id"].unique())[:users]
        keys = keys[keys["user_id"].isin(chosen)]
    keys = keys.sort_values(["domain", "user_id"])
    return pos.take(pa.array(keys["i"].to_numpy()))


def _group_items(
    chunk: pa.Table,
    rated: dict[str, np.ndarray],
    catalog: dict[str, np.ndarray],
    negatives: int,
    rng: np.random.Generator,
    where: str,
) -> tuple[np.ndarray, dict[str, int]]:
    """The candidate items of a chunk of groups: the positive's item, then its sampled negatives.

    Args:
        chunk: the groups' positive rows.
        rated: ``_rated_keys``' interaction keys per domain.
        catalog: ``_rated_keys``' items per domain.
        negatives: negatives per group.
        rng: the sampling generator.
        where: the data folder, for messages.

    Returns:
        ([G, negatives + 1] item ids, groups per domain in the chunk).

    Raises:
        InputError: a user rated all but fewer than ``negatives`` items of a domain.
    """
    domains = chunk.column("domain").to_numpy(zero_copy_only=False)
    items = np.empty((chunk.num_rows, negatives + 1), np.int64)
    items[:, 0] = chunk.column("item_id").to_numpy()
    counts: dict[str, int] = {}
    for d in np.unique(domains):
        rows = np.flatnonzero(domains == d)
        user = chunk.column("user_id").to_numpy()[rows].astype(np.int64)
        unrated = len(catalog[d]) - (
            np.searchsorted(rated[d], (user + 1) * 2**32) - np.searchsorted(rated[d], user * 2**32)
        )
        if (unrated < negatives).any():
            raise InputError(
                f"{int((unrated < negatives).sum())} user(s) rated all but fewer than {negatives} items of domain '{d}'.",
                where=where,
                fix="use fewer --negatives.",
            )
        items[rows, 1:] = _sample_negatives(user, catalog[d], rated[d], negatives, rng)
        counts[d] = len(rows)
    return items, counts


def _item_attributes(data_dir: Path, columns: list[str] | None) -> pa.Table:
    """One row per item id (sorted) with its ``columns`` (None: ``summary.json``'s ``item_columns``), from the
    first row of the item in the splits."""
    if columns is None:
        summary = read_json(data_dir / "summary.json")
        columns = list(summary.get("item_columns", [])) if isinstance(summary, dict) else []
    files = [str(f) for s in SPLITS if (data_dir / s).exists() for f in list_parquet_files(data_dir / s)]
    dataset = ds.dataset(files, format="parquet")
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise InputError(
            f"item column(s) {missing} are not in the data.",
            where=str(data_dir),
            fix="name columns of the prepared data, or re-run `crossrank prepare` for the current columns.",
        )
    table = dataset.to_table(columns=["item_id", *columns])
    ids = table.column("item_id").to_numpy()
    _, first = np.unique(ids, return_index=True)  # sorted ids, and a row of each
    return table.take(pa.array(first))


def _with_item_attributes(rows: pa.Table, attributes: pa.Table) -> pa.Table:
    """``rows`` with each attribute column taken from its candidate item's row of ``attributes``."""
    if attributes.num_columns == 1:
        return rows
    at = np.searchsorted(attributes.column("item_id").to_numpy(), rows.column("item_id").to_numpy())
    for name in attributes.column_names[1:]:
        i = rows.schema.get_field_index(name)
        rows = rows.set_column(i, name, attributes.column(name).take(pa.array(at)))
    return rows


def _expand_groups(chunk: pa.Table, items: np.ndarray, start: int) -> pa.Table:
    """Each positive row of ``chunk`` repeated once per candidate, with the candidate's item, label and row_id.

    Args:
        chunk: the groups' positive rows.
        items: ``_group_items``' candidates, [G, group size].
        start: the number of the chunk's first group.
    """
    schema = chunk.schema
    g, group_size = items.shape
    rep = chunk.take(pa.array(np.repeat(np.arange(g), group_size)))
    group = np.repeat(np.arange(start, start + g), group_size)
    position = np.tile(np.arange(group_size), g)
    rep = rep.set_column(
        schema.get_field_index("item_id"),
        "item_id",
        pa.array(items.reshape(-1), schema.field("item_id").type),
    )
    rep = rep.set_column(
        schema.get_field_index("label"),
        "label",
        pa.array((position == 0).astype(np.int8), schema.field("label").type),
    )
    return rep.set_column(
        schema.get_field_index("row_id"),
        "row_id",
        pa.array(group * group_size + position, pa.int64()),
    )
