"""Finding a split's Parquet files: a file, a folder (searched recursively), a glob pattern, or a list of
them, e.g. ``[events/date=2026-11-19, events/date=2026-11-20]`` or ``events/*/part-*.parquet``; each may be a
local path or a URI (``s3://bucket/events/date=2026-11-20``: :mod:`crossrank.features.storage`)."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from crossrank.features.errors import InputError
from crossrank.features.storage import as_path, is_uri

# What a data path field holds: one location or several.
DataPaths = str | Path | Sequence[str | Path]
_GLOB_CHARS = frozenset("*?[")


def as_path_list(paths: DataPaths) -> list[str]:
    """One location or several -> a list of strings."""
    return [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]


def _files_of(location: str) -> list[Path]:
    """The Parquet files of one file, folder or glob pattern (sorted), or an InputError naming it."""
    location = location.removeprefix("file://")  # a local path spelled as a URI
    if _GLOB_CHARS & set(location):
        if is_uri(location):
            matches = _remote_glob(location)
        else:
            matches = sorted(Path(m) for m in glob.glob(location, recursive=True))
        if not matches:
            raise InputError(
                "the pattern matches no file or folder.",
                where=location,
                fix="check the pattern and the date it was filled with (data.date).",
            )
        return [f for m in matches for f in _files_of(str(m))]
    p = as_path(location)
    if not p.exists():
        raise InputError(
            "no such file or folder.", where=str(p), fix="check the data path (prepare the data first)."
        )
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*.parquet") if not f.name.startswith("."))
    if not files:
        raise InputError(
            "the folder holds no *.parquet file.", where=str(p), fix="point at prepared Parquet data."
        )
    return files


def _remote_glob(location: str) -> list[Path]:
    """The files and folders a remote glob pattern (``s3://bucket/events/*/part-*.parquet``) matches."""
    scheme, rest = location.split("://", 1)
    bucket, _, key = rest.partition("/")
    return list(as_path(f"{scheme}://{bucket}").glob(key)) if key else []


def open_parquet(file: Path) -> pq.ParquetFile:
    """A ParquetFile of a local or remote (:class:`~crossrank.features.storage.ObjectPath`) file."""
    return pq.ParquetFile(file.open("rb") if is_uri(file) else file)


def list_parquet_files(paths: DataPaths) -> list[Path]:
    """Every Parquet file of ``paths``, in the order given (each location sorted), each file once."""
    locations = as_path_list(paths)
    if not locations:
        raise InputError("no data path given.", fix="set the split's path (a file, folder or glob).")
    seen: dict[Path, None] = {}
    for location in locations:
        for f in _files_of(location):
            seen.setdefault(f, None)
    return list(seen)


def iter_row_groups(
    paths: DataPaths, columns: list[str], *, needed_for: str, spec_path: str
) -> Iterator[tuple[pa.Table, str]]:
    """Each row group of every file of ``paths`` (those columns only), one at a time, with where it comes
    from (``FILE (row group N)``); a file without one of the columns is an InputError naming it.

    Args:
        paths: the data.
        columns: the columns to read.
        needed_for: what the columns are for, in the error (e.g. "of the hash-mapped features").
        spec_path: the feature spec, named in the error.
    """
    for file in list_parquet_files(paths):
        meta = open_parquet(file)
        missing = [c for c in columns if c not in meta.schema_arrow.names]
        if missing:
            raise InputError(
                f"column(s) {missing} {needed_for} are missing.",
                where=str(file),
                spec=spec_path,
                fix="check the data with `crossrank features check SPEC --data PATH`, or point at the right split.",
            )
        for rg in range(meta.num_row_groups):
            yield meta.read_row_group(rg, columns=columns), f"{file} (row group {rg})"
