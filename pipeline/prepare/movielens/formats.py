"""The three GroupLens file layouts, and which one a folder holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crossrank.features.errors import InputError


@dataclass(frozen=True)
class SourceFormat:
    """One GroupLens file layout.

    Args:
        name: short name reported in the summary.
        ratings: the ratings file name.
        movies: the movies file name.
    """

    name: str
    ratings: str
    movies: str


FORMATS: tuple[SourceFormat, ...] = (
    SourceFormat("ml-100k", "u.data", "u.item"),
    SourceFormat("ml-1m", "ratings.dat", "movies.dat"),
    SourceFormat("ml-latest", "ratings.csv", "movies.csv"),
)


def detect_format(src_dir: Path) -> SourceFormat:
    """Find which GroupLens layout ``src_dir`` holds, from the file names present.

    Args:
        src_dir: the unpacked MovieLens folder.

    Raises:
        InputError: the folder does not exist, or holds none (or only half) of a known layout.
    """
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise InputError(
            "no such folder" if not src_dir.exists() else "not a folder",
            where=str(src_dir),
            fix="pass the folder unpacked from a GroupLens MovieLens zip (e.g. ml-100k/, ml-1m/, ml-25m/).",
        )
    for fmt in FORMATS:
        has_r, has_m = (src_dir / fmt.ratings).is_file(), (src_dir / fmt.movies).is_file()
        if has_r and has_m:
            return fmt
        if has_r or has_m:
            present, missing = (fmt.ratings, fmt.movies) if has_r else (fmt.movies, fmt.ratings)
            raise InputError(
                f"found {present} ({fmt.name} layout) but not {missing}",
                where=str(src_dir),
                fix=f"unpack the whole {fmt.name} archive: both {fmt.ratings} and {fmt.movies} are needed.",
            )
    expected = "; ".join(f"{f.ratings} + {f.movies} ({f.name})" for f in FORMATS)
    # A common mistake is passing the folder above the unpacked one: name the candidates.
    nested = sorted(
        p.name for p in src_dir.iterdir() if p.is_dir() and any((p / f.ratings).is_file() for f in FORMATS)
    )
    hint = (
        f" It has sub-folders that look like MovieLens: {', '.join(nested)}; pass one of them."
        if nested
        else ""
    )
    raise InputError(
        f"no MovieLens files found; expected one of: {expected}",
        where=str(src_dir),
        fix=f"pass the folder unpacked from a GroupLens MovieLens zip.{hint}",
    )
