"""Building the rows: the global order, the split of each row, its histories, and the split files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crossrank.pipeline.core.atomic import AtomicParquetWriter
from crossrank.pipeline.prepare.contract import contract_schema
from crossrank.pipeline.prepare.movielens.side import SIDE_FIELDS, SideInfo

SPLITS: tuple[str, ...] = ("train", "valid", "test")
PART_NAME = "part-00000.parquet"
# Histories are materialised a chunk of rows at a time: at most this many list values (int64) per chunk bounds
# memory (~256 MB with the gather index) whatever the data set size and max_len.
_CHUNK_VALUES = 1 << 24
_CHUNK_ROWS = 1 << 20


@dataclass
class Rows:
    """The kept ratings as parallel arrays, one entry per output row.

    Args:
        user: user id.
        item: movie id.
        ts: timestamp (seconds).
        label: 1 for a rating >= 4, else 0 (int8).
        dom: domain index of the movie (int16).
    """

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    dom: np.ndarray

    def take(self, idx: np.ndarray) -> Rows:
        """The rows at ``idx`` (positions or a boolean mask)."""
        return Rows(self.user[idx], self.item[idx], self.ts[idx], self.label[idx], self.dom[idx])


@dataclass
class Histories:
    """Where each row's histories lie; one entry per domain, in domain order.

    Args:
        items: the domain's movie ids in row order (the history values).
        start: per row, the index in ``items`` of its user's first event in the domain.
        end: per row, one past its user's last event in the domain strictly before the row's second.
        liked: the labels of those events (1: rated >= 4), aligned with ``items`` (int64).
    """

    items: list[np.ndarray]
    start: list[np.ndarray]
    end: list[np.ndarray]
    liked: list[np.ndarray]


def output_schema(domains: list[str]) -> pa.Schema:
    """The Arrow schema of every split file, for domain names in order: the data contract, then
    ``hist_liked_<d>`` (list<int64>) per domain: for each event of ``hist_<d>``, 1 if the user rated it
    >= 4, else 0 (a history lists what the user rated, this says how; the spec's ``event`` features);
    then the side columns of ``side.SIDE_FIELDS`` (user gender, age, occupation; movie genres, year)."""
    liked = [pa.field(f"hist_liked_{d}", pa.list_(pa.int64())) for d in domains]
    return contract_schema(domains, [*liked, *SIDE_FIELDS])


def sort_rows(rows: Rows) -> Rows:
    """The one global order: (user, timestamp, item id). Everything after is positions in it."""
    order = np.lexsort((rows.item, rows.ts, rows.user))
    return rows.take(order)


def split_and_histories(
    rows: Rows, n_domains: int, n_test: int, n_valid: int
) -> tuple[np.ndarray, Histories]:
    """The split code of each sorted row (0 train, 1 valid, 2 test) and where its histories lie.

    Args:
        rows: the rows in ``sort_rows`` order.
        n_domains: number of domains.
        n_test: test rows per user.
        n_valid: valid rows per user.
    """
    new_user = np.empty(rows.user.size, dtype=bool)
    new_user[0] = True
    np.not_equal(rows.user[1:], rows.user[:-1], out=new_user[1:])
    return _assign_splits(new_user, n_test, n_valid), _history_bounds(rows, new_user, n_domains)


def _first_index(new_block: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position of its block (blocks start where new_block)."""
    return np.maximum.accumulate(np.where(new_block, np.arange(new_block.size), 0))


def _assign_splits(new_user: np.ndarray, n_test: int, n_valid: int) -> np.ndarray:
    """Split code per row from its position counted from its user's last row."""
    n = new_user.size
    user_starts = np.flatnonzero(new_user)
    user_ends = np.append(user_starts[1:], n)
    from_end = np.repeat(user_ends, user_ends - user_starts) - 1 - np.arange(n)
    return np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0)).astype(np.int8)


def _history_bounds(rows: Rows, new_user: np.ndarray, n_domains: int) -> Histories:
    """Per domain d: the d-events, and each row's [start, end) in them.

    With before[i] = number of d-events among rows < i, a row's strictly earlier d-events of the same user
    are the d-events between its user's first row and its (user, second)'s first row: rows on the same second
    as this one start at the latter, so ties never enter the history.
    """
    new_second = new_user.copy()
    new_second[1:] |= rows.ts[1:] != rows.ts[:-1]
    user_first = _first_index(new_user)  # first row of the row's user
    second_first = _first_index(new_second)  # first row of the row's (user, timestamp)
    del new_second
    hist = Histories(items=[], start=[], end=[], liked=[])
    for d in range(n_domains):
        is_d = rows.dom == d
        before = np.zeros(rows.user.size + 1, dtype=np.int64)
        np.cumsum(is_d, out=before[1:])
        hist.items.append(rows.item[is_d])
        hist.liked.append(rows.label[is_d].astype(np.int64))
        hist.start.append(before[user_first])
        hist.end.append(before[second_first])
    return hist


def _history_list(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """A list<int64> array whose i-th list is ``values[starts[i]:ends[i]]``, built without a Python loop.

    Args:
        values: the flat values.
        starts: first index per list.
        ends: one past the last index per list.
    """
    lengths = ends - starts
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if total >= 2**31:
        raise ValueError("history chunk exceeds list<int64>'s 2^31 values; lower _CHUNK_VALUES")
    # For the k-th value of list i (at flat position offsets[i] + k) the source index is starts[i] + k.
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values[gather], type=pa.int64())
    )


def _chunks(cost: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive [begin, end) row ranges holding at most ``_CHUNK_VALUES`` cost (>= 1 row) each.

    Args:
        cost: list values per row.
    """
    cum = np.cumsum(cost)
    begin = 0
    while begin < cost.size:
        before = int(cum[begin - 1]) if begin else 0
        end = int(np.searchsorted(cum, before + _CHUNK_VALUES, side="right"))
        end = min(max(end, begin + 1), begin + _CHUNK_ROWS, cost.size)
        yield begin, end
        begin = end


def write_split(
    path: Path,
    rows: Rows,
    idx: np.ndarray,
    hist: Histories,
    side: SideInfo,
    names: list[str],
    max_len: int,
    row_group_size: int,
) -> Path:
    """Write the rows at ``idx`` (ascending) to one split file, atomically, a chunk of rows at a time.

    Args:
        path: the split file.
        rows: all rows, in ``sort_rows`` order.
        idx: positions of this split's rows (also their ``row_id``).
        hist: ``split_and_histories``' histories of all rows.
        side: the users' and movies' attributes.
        names: the domain names, in column order.
        max_len: history truncation length.
        row_group_size: rows per Parquet row group.

    Returns:
        The path written.
    """
    schema = output_schema(names)
    name_array = pa.array(names, type=pa.string())
    cost = sum(np.minimum(hi[idx] - lo[idx], max_len) for lo, hi in zip(hist.start, hist.end, strict=True))
    with AtomicParquetWriter(path, schema, row_group_size) as writer:
        for begin, end in _chunks(np.asarray(cost)):
            writer.write(_chunk_table(rows, idx[begin:end], hist, side, schema, name_array, max_len))
    return writer.path


def _chunk_table(
    rows: Rows,
    idx: np.ndarray,
    hist: Histories,
    side: SideInfo,
    schema: pa.Schema,
    name_array: pa.Array,
    max_len: int,
) -> pa.Table:
    """The output rows at ``idx``, histories included (see ``write_split``)."""
    columns: list[pa.Array] = [
        pa.array(idx, type=pa.int64()),
        pa.array(rows.user[idx]),
        pa.array(rows.item[idx]),
        pc.take(name_array, pa.array(rows.dom[idx].astype(np.int32))),
        pa.array(rows.label[idx]),
        pa.array(rows.ts[idx]),
    ]
    liked = []
    for lo_all, hi_all, values, labels in zip(hist.start, hist.end, hist.items, hist.liked, strict=True):
        lo, hi = lo_all[idx], hi_all[idx]
        columns.append(_history_list(values, np.maximum(lo, hi - max_len), hi))
        columns.append(pa.array((hi - lo).astype(np.float32)))
        liked.append(_history_list(labels, np.maximum(lo, hi - max_len), hi))
    side_columns = side.arrays(rows.user[idx], rows.item[idx])
    return pa.Table.from_arrays(columns + liked + side_columns, schema=schema)
