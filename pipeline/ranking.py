"""The sampled ranking protocol of the cross-domain literature: per user and domain, the held-out positive
against ``negatives`` items of that domain the user never interacted with; HR@10 and NDCG@10.

``prepare_ranking`` writes ``DATA_DIR/ranking/part-00000.parquet``: groups of ``negatives + 1`` rows that
share the positive row's context (user, histories, dense columns) and differ in the candidate item; the
positive is row 0 of its group and ``row_id = group * (negatives + 1) + position``.
``ranking_metrics`` turns scores of those rows back into HR@K / NDCG@K.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from features.check import list_parquet_files
from features.errors import InputError
from pipeline.parquet_out import AtomicParquetWriter, write_json_atomic

SPLITS = ("train", "valid", "test")


@dataclass
class RankingSummary:
    """What ``prepare_ranking`` wrote."""

    groups: dict[str, int]  # per domain
    negatives: int
    rows: int
    path: str

    def format(self) -> str:
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
    data_dir: Path, *, negatives: int = 99, users: int = 0, seed: int = 0, chunk_groups: int = 512
) -> RankingSummary:
    """Build ``data_dir/ranking`` from prepared data (``train/``, ``valid/``, ``test/``).

    Args:
        data_dir: prepared data (the data contract's columns).
        negatives: sampled negatives per positive (99 in the literature).
        users: evaluate this many randomly chosen users (0: all), to bound evaluation cost.
        seed: sampling seed.
        chunk_groups: groups written per chunk (bounds memory: each row repeats the positive's histories).
    """
    data_dir = Path(data_dir)
    if not (data_dir / "test").exists():
        raise InputError(
            "no test/ split in the data folder.", where=str(data_dir), fix="prepare the data first."
        )
    if negatives < 1:
        raise InputError(f"negatives must be >= 1, got {negatives}.", fix="e.g. --negatives 99.")
    rated, catalog = _rated_keys(data_dir)
    test = ds.dataset(data_dir / "test", format="parquet").to_table()
    pos = test.filter(pc.equal(test.column("label"), 1))
    # The held-out positive of each (user, domain): its latest positive test row.
    keys = pos.select(["user_id", "domain", "timestamp", "row_id"]).to_pandas()
    keys["i"] = np.arange(len(keys))
    keys = keys.sort_values(["user_id", "domain", "timestamp", "row_id"]).drop_duplicates(
        ["user_id", "domain"], keep="last"
    )
    rng = np.random.default_rng(seed)
    if users:
        chosen = rng.permutation(keys["user_id"].unique())[:users]
        keys = keys[keys["user_id"].isin(chosen)]
    keys = keys.sort_values(["domain", "user_id"])
    positives = pos.take(pa.array(keys["i"].to_numpy()))
    group_size = negatives + 1
    out = data_dir / "ranking" / "part-00000.parquet"
    schema = positives.schema
    counts: dict[str, int] = {}
    with AtomicParquetWriter(out, schema, row_group_size=chunk_groups * group_size) as writer:
        for start in range(0, positives.num_rows, chunk_groups):
            chunk = positives.slice(start, chunk_groups)
            g = chunk.num_rows
            domains = chunk.column("domain").to_numpy(zero_copy_only=False)
            items = np.empty((g, group_size), np.int64)
            items[:, 0] = chunk.column("item_id").to_numpy()
            for d in np.unique(domains):
                rows = np.flatnonzero(domains == d)
                user = chunk.column("user_id").to_numpy()[rows].astype(np.int64)
                unrated = len(catalog[d]) - (
                    np.searchsorted(rated[d], (user + 1) * 2**32) - np.searchsorted(rated[d], user * 2**32)
                )
                if (unrated < negatives).any():
                    raise InputError(
                        f"{int((unrated < negatives).sum())} user(s) rated all but fewer than {negatives} items of domain '{d}'.",
                        where=str(data_dir),
                        fix="use fewer --negatives.",
                    )
                items[rows, 1:] = _sample_negatives(user, catalog[d], rated[d], negatives, rng)
                counts[d] = counts.get(d, 0) + len(rows)
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
            rep = rep.set_column(
                schema.get_field_index("row_id"),
                "row_id",
                pa.array(group * group_size + position, pa.int64()),
            )
            writer.write(rep)
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


def ranking_metrics(
    logits: torch.Tensor,
    row_ids: torch.Tensor,
    domains: torch.Tensor,
    group_size: int,
    domain_names: list[str],
    k: int = 10,
) -> dict[str, float]:
    """HR@k and NDCG@k (overall and per domain) from the scores of complete ranking groups.

    The positive's rank counts the negatives scored at least as high (ties count against the model).

    Args:
        logits, row_ids, domains: [N] of real rows (padding removed), any order, every group complete.
        group_size: 1 + negatives.
    """
    order = torch.argsort(row_ids)
    scores = logits[order].reshape(-1, group_size)
    dom = domains[order].reshape(-1, group_size)[:, 0]
    rank = (scores[:, 1:] >= scores[:, :1]).sum(dim=1)  # 0 = the positive is on top
    hit = (rank < k).double()
    ndcg = torch.where(rank < k, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros_like(hit))
    out = {f"hr@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean())}
    for i, name in enumerate(domain_names):
        mask = dom == i
        if mask.any():
            out[f"hr@{k}/{name}"] = float(hit[mask].mean())
            out[f"ndcg@{k}/{name}"] = float(ndcg[mask].mean())
    return out
