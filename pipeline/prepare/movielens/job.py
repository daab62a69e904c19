"""The job itself: ``prepare_movielens`` reads, orders and splits the ratings and writes the output folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from crossrank.features.errors import InputError
from crossrank.pipeline.core.atomic import write_json_atomic
from crossrank.pipeline.core.outdir import check_target, earlier_output, replaced_folder
from crossrank.pipeline.prepare.movielens.domains import _movie_domains, _rating_domains, load_domain_map
from crossrank.pipeline.prepare.movielens.formats import SourceFormat, detect_format
from crossrank.pipeline.prepare.movielens.movies import _read_movies
from crossrank.pipeline.prepare.movielens.ratings import _read_ratings
from crossrank.pipeline.prepare.movielens.rows import (
    PART_NAME,
    SPLITS,
    Rows,
    sort_rows,
    split_and_histories,
    write_split,
)
from crossrank.pipeline.prepare.movielens.side import SideInfo
from crossrank.pipeline.prepare.movielens.summary import (
    SUMMARY_NAME,
    PrepareSummary,
    SplitStats,
    _split_stats,
)
from crossrank.pipeline.prepare.movielens.users import read_users

# The package's logger, as before the module was split, so that log configuration and output keep their name.
log = logging.getLogger("crossrank.pipeline.prepare.movielens")


def prepare_movielens(
    src_dir: Path,
    out_dir: Path,
    *,
    domains: Path | None = None,
    max_len: int = 200,
    n_test: int = 10,
    n_valid: int = 10,
    row_group_size: int = 32768,
    overwrite: bool = False,
) -> PrepareSummary:
    """Turn a GroupLens MovieLens folder into ``OUT_DIR/{train,valid,test}/part-00000.parquet`` and summary.

    See the package docstring for the data contract. The output is written into a hidden sibling folder and
    swapped into place when complete (``crossrank.pipeline.core.outdir``): a failed run leaves the earlier
    output as it was.

    Args:
        src_dir: the unpacked MovieLens folder (ml-100k, ml-1m/ml-10m or ml-latest/ml-20m/ml-25m layout).
        out_dir: the output folder: new, empty or an earlier ``prepare movielens`` output (replaced).
        domains: a YAML domain map (see ``load_domain_map``), or None for ``DEFAULT_DOMAINS``.
        max_len: keep the most recent ``max_len`` events of each history (>= 1).
        n_test: per user, the last ``n_test`` rows go to test (>= 1).
        n_valid: per user, the ``n_valid`` rows before them go to valid (>= 0).
        row_group_size: rows per Parquet row group.
        overwrite: replace ``out_dir`` even when it holds something else.

    Returns:
        The summary (also in ``OUT_DIR/summary.json``).

    Raises:
        InputError: bad options, a missing or unrecognised folder, a malformed file, a bad domain map, an
            output folder holding something else (without ``overwrite``).
    """
    t0 = time.perf_counter()
    _check_args(max_len, n_test, n_valid, row_group_size)
    domain_map = load_domain_map(domains)
    names = list(domain_map)
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_target(
        out_dir, is_own=is_movielens_output, overwrite=overwrite, command="crossrank prepare movielens"
    )
    fmt = detect_format(src_dir)
    movies = _read_movies(src_dir / fmt.movies, fmt)
    movie_dom, unused = _movie_domains(movies["genre"].to_numpy(), domain_map)
    rows = _read_rows(src_dir, fmt, movies, movie_dom, t0)
    rows, dropped_ratings, dropped_items = _drop_unmapped(rows, domains)
    side = SideInfo(read_users(src_dir, fmt), movies)
    with replaced_folder(out_dir) as stage:
        stats = _write_splits(stage, sort_rows(rows), side, names, max_len, n_test, n_valid, row_group_size)
        summary = PrepareSummary(
            source_format=fmt.name,
            src_dir=str(src_dir),
            out_dir=str(out_dir),
            domains=names,
            domain_map=domain_map,
            max_len=max_len,
            n_test=n_test,
            n_valid=n_valid,
            splits=stats,
            dropped_ratings=dropped_ratings,
            dropped_items=dropped_items,
            catalog_items_per_domain={d: int(np.count_nonzero(movie_dom == i)) for i, d in enumerate(names)},
            unused_genres=unused,
        )
        write_json_atomic(summary.to_json(), stage / SUMMARY_NAME)
    log.info("prepared %s in %.1fs", out_dir, time.perf_counter() - t0)
    return summary


def _check_args(max_len: int, n_test: int, n_valid: int, row_group_size: int) -> None:
    """Reject out-of-range options with an InputError naming the option."""
    checks = [
        ("max_len", max_len, 1, "histories keep the most recent max_len events; use e.g. --max-len 200"),
        ("n_test", n_test, 1, "each user needs at least one test row; use e.g. --n-test 10"),
        ("n_valid", n_valid, 0, "use 0 for no validation rows, e.g. --n-valid 10"),
        ("row_group_size", row_group_size, 1, "use e.g. --row-group-size 32768"),
    ]
    for name, value, low, fix in checks:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise InputError(
                f"{name} must be an integer >= {low}, got {value!r}", where=f"option {name}", fix=fix
            )


def _read_rows(
    src_dir: Path, fmt: SourceFormat, movies: pd.DataFrame, movie_dom: np.ndarray, t0: float
) -> Rows:
    """Every rating as a row with its movie's domain (-1: none), in file order.

    Args:
        src_dir: the input folder.
        fmt: its layout.
        movies: ``_read_movies`` of its movies file.
        movie_dom: ``_movie_domains`` of those movies.
        t0: when the job started, for the log.
    """
    ratings = _read_ratings(src_dir / fmt.ratings, fmt)
    log.info("read %s ratings (%s) in %.1fs", f"{ratings.num_rows:,}", fmt.name, time.perf_counter() - t0)
    item = ratings.column("item_id").to_numpy()
    return Rows(
        user=ratings.column("user_id").to_numpy(),
        item=item,
        ts=ratings.column("timestamp").to_numpy(),
        label=(ratings.column("rating").to_numpy() >= 4.0).astype(np.int8),
        dom=_rating_domains(item, movies["item_id"].to_numpy(), movie_dom, fmt, src_dir),
    )


def _drop_unmapped(rows: Rows, domains: Path | None) -> tuple[Rows, int, int]:
    """Drop the rows whose movie fell in no domain.

    Args:
        rows: all ratings.
        domains: the domain map file given (None: the default), for the message.

    Returns:
        (the kept rows, dropped ratings, distinct movies of those).

    Raises:
        InputError: no row is left.
    """
    keep = rows.dom >= 0
    dropped_ratings = int(np.count_nonzero(~keep))
    dropped_items = int(np.unique(rows.item[~keep]).size)
    if dropped_ratings:
        rows = rows.take(keep)
    if rows.user.size == 0:
        raise InputError(
            "no rating falls in any domain",
            where=str(domains or "the default domain map"),
            fix='name genres that occur in this data set, or add a "*" domain.',
        )
    return rows, dropped_ratings, dropped_items


def _write_splits(
    out_dir: Path,
    rows: Rows,
    side: SideInfo,
    names: list[str],
    max_len: int,
    n_test: int,
    n_valid: int,
    row_group_size: int,
) -> dict[str, SplitStats]:
    """Split the rows, find their histories and write the three split files.

    Args:
        out_dir: the (empty) folder to write into.
        rows: all rows, in ``sort_rows`` order.
        side: the users' and movies' attributes.
        names: the domain names, in column order.
        max_len: history truncation length.
        n_test: test rows per user.
        n_valid: valid rows per user.
        row_group_size: rows per Parquet row group.

    Returns:
        The counts of each split, and of ``all``.
    """
    split, hist = split_and_histories(rows, len(names), n_test, n_valid)
    stats: dict[str, SplitStats] = {}
    for s, split_name in enumerate(SPLITS):
        idx = np.flatnonzero(split == s)
        path = write_split(
            out_dir / split_name / PART_NAME, rows, idx, hist, side, names, max_len, row_group_size
        )
        stats[split_name] = _split_stats(
            rows.user[idx], rows.item[idx], rows.dom[idx], rows.label[idx], names
        )
        log.info("wrote %s (%s rows)", path, f"{idx.size:,}")
    stats["all"] = _split_stats(rows.user, rows.item, rows.dom, rows.label, names)
    return stats


def is_movielens_output(folder: Path) -> bool:
    """Whether ``folder`` is a complete ``prepare movielens`` output (with, maybe, ``prepare ranking``'s)."""
    names = {*SPLITS, SUMMARY_NAME, "ranking", "ranking.json"}
    return earlier_output(folder, names.__contains__, ("source_format", "splits"))
