"""Finding a split's Parquet files: a file, a folder (searched recursively), a glob pattern, or a list of
them, e.g. ``[events/date=2026-11-19, events/date=2026-11-20]`` or ``events/*/part-*.parquet``."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from crossrank.features.errors import InputError

# What a data path field holds: one location or several.
DataPaths = str | Path | Sequence[str | Path]
_GLOB_CHARS = frozenset("*?[")


def as_path_list(paths: DataPaths) -> list[str]:
    """One location or several -> a list of strings."""
    return [str(paths)] if isinstance(paths, str | Path) else [str(p) for p in paths]


def _files_of(location: str) -> list[Path]:
    """The Parquet files of one file, folder or glob pattern (sorted), or an InputError naming it."""
    if _GLOB_CHARS & set(location):
        matches = sorted(Path(m) for m in glob.glob(location, recursive=True))
        if not matches:
            raise InputError(
                "the pattern matches no file or folder.",
                where=location,
                fix="check the pattern and the date it was filled with (data.date).",
            )
        return [f for m in matches for f in _files_of(str(m))]
    p = Path(location)
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
