"""Reading a GroupLens movies file (any layout): each movie's id, first listed genre, all its genres and its
release year (from the title's trailing ``(YYYY)``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from crossrank.features.errors import InputError
from crossrank.pipeline.prepare.movielens.domains import NO_GENRE
from crossrank.pipeline.prepare.movielens.formats import SourceFormat

# u.item's 19 genre flags, in u.genre order (the order is fixed by the ml-100k release).
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_CSV_MOVIES_HEADER = ["movieId", "title", "genres"]
_YEAR = r"\((\d{4})\)\s*$"  # "Toy Story (1995)"; some titles have none


def _read_lines(path: Path, encoding: str) -> pd.Series:
    """The non-blank lines of a small text file, indexed by 1-based line number."""
    lines = pd.Series(path.read_text(encoding=encoding, errors="replace").splitlines(), dtype=object)
    lines.index = pd.RangeIndex(1, len(lines) + 1)
    return lines[lines.str.strip() != ""]


def _first_line(mask: pd.Series) -> int:
    """The index label (a line number) of the first True of a boolean Series that has one."""
    return int(mask.index.to_numpy()[np.argmax(mask.to_numpy())])


def _movies_error(path: Path, line: int, what: str, expected: str) -> InputError:
    """An InputError for one bad line of a movies file."""
    return InputError(
        what,
        where=f"{path}, line {line}",
        fix=f"every line must be `{expected}`; repair or re-download the file.",
    )


def _read_movies(path: Path, fmt: SourceFormat) -> pd.DataFrame:
    """Parse a movies file into ``item_id`` (int64), ``genre`` (the first listed genre, "" for none),
    ``genres`` (every listed genre, a list of names) and ``year`` (float: NaN where the title has none).

    Args:
        path: the movies file.
        fmt: its layout.

    Raises:
        InputError: a malformed line, a non-numeric id, or the same movie id twice.
    """
    if fmt.name == "ml-100k":
        expected = "id|title|date|video date|url|19 genre flags (0/1)"
        ids, genres, titles = _parse_100k(path, expected)
    elif fmt.name == "ml-1m":
        expected = "MovieID::Title::Genres"
        ids, genres, titles = _parse_1m(path, expected)
    else:
        expected = "movieId,title,genres"
        ids, genres, titles = _parse_csv(path, expected)
    numeric = ids.str.strip().str.fullmatch(r"[0-9]+")
    if not numeric.all():
        line = _first_line(~numeric)
        raise _movies_error(path, line, f"movie id {ids[line]!r} is not a number", expected)
    item_id = ids.str.strip().astype(np.int64).to_numpy()
    genres = [[g for g in gs if g not in NO_GENRE] for gs in genres]
    genre = np.array([gs[0] if gs else "" for gs in genres], dtype=object)
    year = pd.to_numeric(pd.Series(titles, dtype=object).str.extract(_YEAR)[0], errors="coerce").to_numpy()
    dup = pd.Series(item_id).duplicated().to_numpy()
    if dup.any():
        k = int(np.argmax(dup))
        raise _movies_error(path, int(ids.index[k]), f"movie id {item_id[k]} appears twice", expected)
    return pd.DataFrame({"item_id": item_id, "genre": genre, "genres": genres, "year": year})


def _parse_100k(path: Path, expected: str) -> tuple[pd.Series, list[list[str]], list[str]]:
    """The raw id strings (indexed by line number), genre lists and titles of a ``u.item`` file."""
    lines = _read_lines(path, "latin-1")
    parts = lines.str.split("|")
    n_fields = parts.map(len)
    short = n_fields < 1 + len(GENRES_100K)
    if short.any():
        line = _first_line(short)
        raise _movies_error(path, line, f"line has {n_fields[line]} fields, expected 24", expected)
    flags = pd.DataFrame(parts.str[-len(GENRES_100K) :].tolist(), index=lines.index)
    not_flag = ~flags.isin(["0", "1"])
    if not_flag.to_numpy().any():
        line = _first_line(not_flag.any(axis=1))
        raise _movies_error(path, line, "a genre flag is not 0 or 1", expected)
    flag_mat = flags.to_numpy() == "1"
    genres = [[GENRES_100K[j] for j in np.flatnonzero(row)] for row in flag_mat]
    return parts.str[0], genres, parts.str[1].fillna("").tolist()


def _parse_1m(path: Path, expected: str) -> tuple[pd.Series, list[list[str]], list[str]]:
    """The raw id strings (indexed by line number), genre lists and titles of a ``movies.dat`` file."""
    lines = _read_lines(path, "latin-1")
    malformed = lines.str.count("::") < 2
    if malformed.any():
        raise _movies_error(
            path, _first_line(malformed), "line does not have 3 `::`-separated fields", expected
        )
    ids = lines.str.split("::", n=1).str[0]
    # Genres are the LAST field (split from the right: a title may contain "::").
    head, tail = lines.str.rsplit("::", n=1).str[0], lines.str.rsplit("::", n=1).str[1]
    return ids, _genre_lists(tail), head.str.split("::", n=1).str[1].tolist()


def _parse_csv(path: Path, expected: str) -> tuple[pd.Series, list[list[str]], list[str]]:
    """The raw id strings (indexed by line number) and first genres of a ``movies.csv`` file."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace")
    except (pd.errors.ParserError, ValueError) as e:
        raise InputError(
            f"cannot parse the movies file ({e})",
            where=str(path),
            fix=f"every line must be `{expected}` (CSV); repair or re-download the file.",
        ) from None
    if list(df.columns) != _CSV_MOVIES_HEADER:
        raise _movies_error(
            path, 1, f"header is {','.join(map(str, df.columns))!r}, expected {expected!r}", expected
        )
    df.index = pd.RangeIndex(2, len(df) + 2)  # line numbers (after the header; titles are single-line)
    return df["movieId"], _genre_lists(df["genres"]), df["title"].tolist()


def _genre_lists(field: pd.Series) -> list[list[str]]:
    """``"Action|Comedy"`` fields -> ``[["Action", "Comedy"], ...]`` (names stripped)."""
    return [[g.strip() for g in str(v).split("|")] if isinstance(v, str) else [] for v in field]
