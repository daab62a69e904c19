"""``crossrank prepare movielens``: GroupLens MovieLens rating logs -> train/valid/test Parquet.

Reads the three GroupLens file layouts as downloaded (the format is detected from the files present):

* ``ml-100k``:   ``u.data`` (user\\titem\\trating\\ttimestamp) and ``u.item`` (``|``-separated, latin-1,
  the last 19 fields are genre flags in ``u.genre`` order);
* ``ml-1m``:     ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``) and ``movies.dat``
  (``MovieID::Title::Genres``, genres ``|``-separated, latin-1); ml-10m uses the same layout;
* ``ml-latest``: ``ratings.csv`` (``userId,movieId,rating,timestamp``, with header) and ``movies.csv``
  (``movieId,title,genres``); also ml-20m / ml-25m / ml-32m.

Data contract of the output (one row per rating; see ``output_schema``):

* a movie belongs to the domain of its FIRST listed genre; a genre named by no domain, and a movie without a
  genre ("unknown", "(no genres listed)"), go to the ``"*"`` domain, or are dropped (and counted) without one;
* rows are ordered by (user, timestamp, item id); ``row_id`` numbers them 0..N-1 across all three splits;
* ``hist_<D>`` holds the movies the user rated in domain D STRICTLY before the row's timestamp (a rating on
  the same second is not history: MovieLens timestamps tie a lot, and ties would leak the future), most
  recent last, truncated to the last ``max_len``; ``hist_count_<D>`` is the untruncated count;
* per user, the last ``n_test`` rows are test, the ``n_valid`` before them valid, the rest train.

Everything is vectorised (numpy / pyarrow): ml-25m has 25M ratings.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import yaml

from features.errors import InputError
from pipeline.parquet_out import AtomicParquetWriter, write_json_atomic

log = logging.getLogger(__name__)

STAR = "*"
DEFAULT_DOMAINS: dict[str, list[str] | str] = {
    "A": ["Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "War", "Western", "Horror"],
    "B": STAR,
}
SPLITS: tuple[str, ...] = ("train", "valid", "test")
PART_NAME = "part-00000.parquet"
SUMMARY_NAME = "summary.json"

# u.item's 19 genre flags, in u.genre order (the order is fixed by the ml-100k release).
GENRES_100K: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Genre labels that mean "no genre": such movies go to the "*" domain.
NO_GENRE: frozenset[str] = frozenset({"", "unknown", "(no genres listed)"})

_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_INT = r"^[+-]?[0-9]+$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
# Histories are materialised a chunk of rows at a time: at most this many list values (int64) per chunk bounds
# memory (~256 MB with the gather index) whatever the data set size and max_len.
_CHUNK_VALUES = 1 << 24
_CHUNK_ROWS = 1 << 20


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
_CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
_CSV_MOVIES_HEADER = ["movieId", "title", "genres"]
_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_RATING_TYPES = {
    "user_id": pa.int64(),
    "item_id": pa.int64(),
    "rating": pa.float64(),
    "timestamp": pa.int64(),
}


# ----------------------------------------------------------------------------------------------------------
# Domain map
# ----------------------------------------------------------------------------------------------------------


def load_domain_map(path: Path | None) -> dict[str, list[str] | str]:
    """Read a domain map: a YAML mapping of domain name -> list of genres, or ``"*"`` for every other genre.

    The order of the keys is the domain order (of the ``hist_<D>`` columns). At most one domain may be
    ``"*"``; without one, ratings of movies whose first genre no domain names are dropped.

    Args:
        path: the YAML file, or None for ``DEFAULT_DOMAINS``.

    Returns:
        The validated map (a fresh dict).

    Raises:
        InputError: the file is missing, unreadable, not a mapping, has two ``"*"`` domains, names a genre
            twice, or has a bad domain name or genre entry.

    Example (YAML; quote the star, a bare ``*`` is YAML alias syntax)::

        action: [Action, Adventure, Sci-Fi, Thriller]
        drama: [Drama, Romance]
        other: "*"
    """
    if path is None:
        return {k: (v if isinstance(v, str) else list(v)) for k, v in DEFAULT_DOMAINS.items()}
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "domain map file not found" if not path.exists() else "domain map is not a file",
            where=str(path),
            fix='pass the path of a YAML file mapping each domain name to a list of genres or to "*", '
            'or leave the option out for the default map (A = action-like genres, B = "*").',
        )
    text = path.read_text(encoding="utf-8")
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(
            f"the domain map is not valid YAML ({problem})",
            where=where,
            fix='write one `domain: [Genre, ...]` or `domain: "*"` line per domain; quote the star '
            "(a bare * is YAML alias syntax).",
        ) from None
    return _validate_domain_map(obj, str(path))


def _validate_domain_map(obj: object, where: str) -> dict[str, list[str] | str]:
    """Check the parsed YAML of a domain map; see ``load_domain_map``.

    Args:
        obj: the parsed YAML document.
        where: the file name, for messages.
    """
    fix = 'write a YAML mapping such as `A: [Action, Adventure]` and `B: "*"`, one line per domain.'
    if not isinstance(obj, dict) or not obj:
        kind = "empty" if not obj else f"a YAML {type(obj).__name__}"
        raise InputError(
            f"the domain map must be a non-empty mapping of domain -> genres, got {kind}",
            where=where,
            fix=fix,
        )
    out: dict[str, list[str] | str] = {}
    star: str | None = None
    owner: dict[str, str] = {}  # genre -> domain that names it
    for name, genres in obj.items():
        if not isinstance(name, str) or not _DOMAIN_NAME.match(name):
            raise InputError(
                f"domain name {name!r} is not a word of letters, digits and '_'",
                where=where,
                fix="rename the domain: it becomes part of the column names hist_<D> and hist_count_<D>.",
            )
        if genres == STAR:
            if star is not None:
                raise InputError(
                    f'two domains are "*" ({star!r} and {name!r}); only one may take every other genre',
                    where=where,
                    fix=f"list the genres of {name!r} explicitly, or drop one of the two.",
                )
            star = name
            out[name] = STAR
            continue
        if not isinstance(genres, list) or not genres or not all(isinstance(g, str) and g for g in genres):
            raise InputError(
                f'domain {name!r} must map to a non-empty list of genre names or to "*", got {genres!r}',
                where=where,
                fix=fix,
            )
        for g in genres:
            if g == STAR:
                raise InputError(
                    f'domain {name!r} lists "*" inside a list',
                    where=where,
                    fix=f'write `{name}: "*"` (the star alone, quoted) instead of a list.',
                )
            if g in NO_GENRE:
                raise InputError(
                    f"domain {name!r} names {g!r}, which MovieLens uses for movies without a genre",
                    where=where,
                    fix='remove it: movies without a genre always go to the "*" domain (or are dropped).',
                )
            if g in owner:
                where_else = "twice in that domain" if owner[g] == name else f"also in domain {owner[g]!r}"
                raise InputError(
                    f"genre {g!r} is named by domain {name!r} and {where_else}",
                    where=where,
                    fix="name each genre in exactly one domain.",
                )
            owner[g] = name
        out[name] = list(genres)
    return out


# ----------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SplitStats:
    """Counts for one split (or ``all``).

    Args:
        rows: number of rows.
        users: distinct users.
        positive_rate: mean label, None for an empty split.
        rows_per_domain: rows per candidate domain, in domain order.
        items_per_domain: distinct candidate movies per domain, in domain order.
    """

    rows: int
    users: int
    positive_rate: float | None
    rows_per_domain: dict[str, int]
    items_per_domain: dict[str, int]


@dataclass
class PrepareSummary:
    """What ``prepare_movielens`` wrote; also saved as ``OUT_DIR/summary.json``.

    Args:
        source_format: ``ml-100k``, ``ml-1m`` or ``ml-latest``.
        src_dir: the input folder.
        out_dir: the output folder.
        domains: domain names in column order.
        domain_map: domain -> genres or ``"*"``.
        max_len: history truncation length.
        n_test: test rows per user.
        n_valid: valid rows per user.
        splits: ``train``, ``valid``, ``test`` and ``all`` -> counts.
        dropped_ratings: ratings dropped because their movie fell in no domain (no ``"*"`` domain).
        dropped_items: distinct movies of those ratings.
        catalog_items_per_domain: movies of the movies file per domain (rated or not; movies in no domain
            are left out), in domain order.
        unused_genres: genres the domain map names that no movie has as first genre (likely a typo or a
            genre spelt differently in this release, e.g. "Children's" vs "Children").
    """

    source_format: str
    src_dir: str
    out_dir: str
    domains: list[str]
    domain_map: dict[str, list[str] | str]
    max_len: int
    n_test: int
    n_valid: int
    splits: dict[str, SplitStats] = field(default_factory=dict)
    dropped_ratings: int = 0
    dropped_items: int = 0
    catalog_items_per_domain: dict[str, int] = field(default_factory=dict)
    unused_genres: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the content of ``summary.json``)."""
        return asdict(self)

    def format(self) -> str:
        """A readable multi-line table for the terminal."""
        head = ["split", "rows", "users", "pos rate"]
        head += [f"rows {d}" for d in self.domains] + [f"items {d}" for d in self.domains]
        table = [head]
        for name, s in self.splits.items():
            rate = "-" if s.positive_rate is None else f"{s.positive_rate:.3f}"
            row = [name, f"{s.rows:,}", f"{s.users:,}", rate]
            row += [f"{s.rows_per_domain[d]:,}" for d in self.domains]
            row += [f"{s.items_per_domain[d]:,}" for d in self.domains]
            table.append(row)
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        lines = [
            f"MovieLens {self.source_format}: {self.src_dir} -> {self.out_dir}",
            f"domains {', '.join(f'{d}={_describe(g)}' for d, g in self.domain_map.items())}",
            f"per user: last {self.n_test} rows test, {self.n_valid} before valid; histories max_len "
            f"{self.max_len}",
            "",
        ]
        for r in table:
            lines.append(
                "  ".join(
                    [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
                )
            )
        catalog = ", ".join(f"{d} {c:,}" for d, c in self.catalog_items_per_domain.items())
        lines.append(f"movies in the catalog per domain (rated or not): {catalog}")
        if self.dropped_ratings:
            lines.append(
                f"dropped {self.dropped_ratings:,} ratings of {self.dropped_items:,} movies in no domain "
                '(add a "*" domain to keep them)'
            )
        if self.unused_genres:
            lines.append(f"warning: no movie has first genre {', '.join(map(repr, self.unused_genres))}")
        return "\n".join(lines)


def _describe(genres: list[str] | str) -> str:
    """Short text for one domain's genres."""
    return "every other genre" if genres == STAR else "|".join(genres)


# ----------------------------------------------------------------------------------------------------------
# Reading the GroupLens files
# ----------------------------------------------------------------------------------------------------------


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


def _rating_source(path: Path, fmt: SourceFormat) -> tuple[IO[bytes] | Path, str, int]:
    """The byte source, delimiter and number of header lines of a ratings file.

    ``::`` files are rewritten ``::`` -> tab in memory: pyarrow's CSV reader wants a one-byte delimiter, and
    pandas' regex separator is ~30x slower. Newlines are untouched, so line numbers stay right.
    """
    if fmt.ratings.endswith(".dat"):
        return io.BytesIO(path.read_bytes().replace(b"::", b"\t")), "\t", 0
    if fmt.ratings.endswith(".csv"):
        with open(path, "rb") as f:
            header = f.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        if header.split(",") != _CSV_RATINGS_HEADER:
            raise InputError(
                f"header is {header!r}, expected {','.join(_CSV_RATINGS_HEADER)!r}",
                where=f"{path}, line 1",
                fix="use the ratings.csv of a GroupLens ml-latest / ml-20m / ml-25m archive, unmodified.",
            )
        return path, ",", 1
    return path, "\t", 0


def _read_ratings(path: Path, fmt: SourceFormat) -> pa.Table:
    """Parse a ratings file into a table of user_id, item_id (int64), rating (float64), timestamp (int64).

    Args:
        path: the ratings file.
        fmt: its layout.

    Raises:
        InputError: a line with the wrong number of fields, a non-numeric field, or no ratings at all.
    """
    source, delimiter, header = _rating_source(path, fmt)
    try:
        table = pcsv.read_csv(
            source,
            read_options=pcsv.ReadOptions(column_names=list(_RATING_COLUMNS), skip_rows=header),
            parse_options=pcsv.ParseOptions(delimiter=delimiter, quote_char=False),
            # No null spellings: an empty field is an error, not a silent null.
            convert_options=pcsv.ConvertOptions(column_types=_RATING_TYPES, null_values=[]),
        )
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            table = pa.table({c: pa.array([], t) for c, t in _RATING_TYPES.items()})
        else:
            if isinstance(source, io.BytesIO):
                source.seek(0)
            raise _diagnose_ratings(path, source, delimiter, header, str(e)) from None
    if table.num_rows == 0:
        raise InputError(
            "the ratings file has no ratings", where=str(path), fix="pass a complete GroupLens ratings file."
        )
    return table


def _diagnose_ratings(
    path: Path, source: IO[bytes] | Path, delimiter: str, header: int, err: str
) -> InputError:
    """Locate the first malformed line of a ratings file that pyarrow refused (only runs on failure).

    Re-reads everything as strings, single-threaded so that pyarrow reports true line numbers, then finds the
    first non-numeric field with a vectorised regex.

    Args:
        path: the ratings file, for the message.
        source: its bytes (rewound).
        delimiter: field delimiter.
        header: header lines to skip.
        err: pyarrow's own message, used when the fault cannot be pinned to a line.
    """
    shape = {".dat": "UserID::MovieID::Rating::Timestamp", ".csv": "userId,movieId,rating,timestamp"}
    expected = shape.get(path.suffix, "user<TAB>item<TAB>rating<TAB>timestamp")
    fix = f"every line must be `{expected}` with numeric fields; repair or re-download the file."
    first_bad_row: list[tuple[int, int, str]] = []  # (line, fields, text) of the first wrong-width line

    def on_invalid(row: pcsv.InvalidRow) -> str:
        if not first_bad_row and row.number is not None:
            first_bad_row.append((row.number, row.actual_columns, row.text))
        return "skip"

    try:
        table = pcsv.read_csv(
            source,
            read_options=pcsv.ReadOptions(
                column_names=list(_RATING_COLUMNS), skip_rows=header, use_threads=False
            ),
            # Empty lines kept as all-empty rows: row k is then line k + 1 + header.
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter,
                quote_char=False,
                invalid_row_handler=on_invalid,
                ignore_empty_lines=False,
            ),
            convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in _RATING_COLUMNS}),
        )
    except pa.ArrowInvalid:
        return InputError(f"cannot parse the ratings file ({err})", where=str(path), fix=fix)
    blank = np.ones(table.num_rows, dtype=bool)
    ok = np.ones((table.num_rows, len(_RATING_COLUMNS)), dtype=bool)
    for j, name in enumerate(_RATING_COLUMNS):
        col = table.column(name)
        blank &= pc.equal(pc.utf8_length(col), 0).to_numpy(zero_copy_only=False)
        pattern = _FLOAT if name == "rating" else _INT
        ok[:, j] = pc.match_substring_regex(col, pattern).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~blank & ~ok.all(axis=1))
    candidates: list[tuple[int, str]] = []
    if first_bad_row:
        line, n, text = first_bad_row[0]
        if path.suffix == ".dat":
            text = text.replace("\t", "::")  # undo the in-memory `::` -> tab rewrite
        candidates.append((line, f"line has {n} field(s), expected 4: {text[:80]!r}"))
    if bad.size:
        k = int(bad[0])
        j = int(np.flatnonzero(~ok[k])[0])
        value = table.column(j)[k].as_py()
        # Rows before the first wrong-width line are not shifted by skipped lines, so k maps to a line number.
        candidates.append(
            (k + 1 + header, f"field {j + 1} ({_RATING_COLUMNS[j]}) is {value!r}, not a number")
        )
    if not candidates:
        return InputError(f"cannot parse the ratings file ({err})", where=str(path), fix=fix)
    line, what = min(candidates)
    return InputError(what, where=f"{path}, line {line}", fix=fix)


def _read_lines(path: Path, encoding: str) -> pd.Series:
    """The non-blank lines of a small text file, indexed by 1-based line number."""
    lines = pd.Series(path.read_text(encoding=encoding, errors="replace").splitlines(), dtype=object)
    lines.index = pd.RangeIndex(1, len(lines) + 1)
    return lines[lines.str.strip() != ""]


def _movies_error(path: Path, line: int, what: str, expected: str) -> InputError:
    """An InputError for one bad line of a movies file."""
    return InputError(
        what,
        where=f"{path}, line {line}",
        fix=f"every line must be `{expected}`; repair or re-download the file.",
    )


def _read_movies(path: Path, fmt: SourceFormat) -> pd.DataFrame:
    """Parse a movies file into ``item_id`` (int64) and ``genre`` (the first listed genre, "" for none).

    Args:
        path: the movies file.
        fmt: its layout.

    Raises:
        InputError: a malformed line, a non-numeric id, or the same movie id twice.
    """
    if fmt.name == "ml-100k":
        expected = "id|title|date|video date|url|19 genre flags (0/1)"
        lines = _read_lines(path, "latin-1")
        parts = lines.str.split("|")
        short = parts.str.len() < 1 + len(GENRES_100K)
        if short.any():
            line = int(short.idxmax())
            raise _movies_error(path, line, f"line has {len(parts[line])} fields, expected 24", expected)
        ids = parts.str[0]
        flags = pd.DataFrame(parts.str[-len(GENRES_100K) :].tolist(), index=lines.index)
        not_flag = ~flags.isin(["0", "1"])
        if not_flag.to_numpy().any():
            line = int(not_flag.any(axis=1).idxmax())
            raise _movies_error(path, line, "a genre flag is not 0 or 1", expected)
        flag_mat = flags.to_numpy() == "1"
        first = flag_mat.argmax(axis=1)
        genre = np.where(flag_mat.any(axis=1), np.asarray(GENRES_100K, dtype=object)[first], "")
    elif fmt.name == "ml-1m":
        expected = "MovieID::Title::Genres"
        lines = _read_lines(path, "latin-1")
        malformed = lines.str.count("::") < 2
        if malformed.any():
            raise _movies_error(
                path, int(malformed.idxmax()), "line does not have 3 `::`-separated fields", expected
            )
        ids = lines.str.split("::", n=1).str[0]
        # Genres are the LAST field (split from the right: a title may contain "::").
        genre = lines.str.rsplit("::", n=1).str[1].str.split("|").str[0].str.strip().to_numpy()
    else:
        expected = "movieId,title,genres"
        try:
            df = pd.read_csv(
                path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace"
            )
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
        ids = df["movieId"]
        genre = df["genres"].str.split("|").str[0].str.strip().to_numpy()
    numeric = ids.str.strip().str.fullmatch(r"[0-9]+")
    if not numeric.all():
        line = int((~numeric).idxmax())
        raise _movies_error(path, line, f"movie id {ids[line]!r} is not a number", expected)
    item_id = ids.str.strip().astype(np.int64).to_numpy()
    genre = np.array(genre, dtype=object)  # a copy: pandas may hand out a read-only view
    genre[pd.isna(genre)] = ""
    dup = pd.Series(item_id).duplicated()
    if dup.any():
        k = int(dup.idxmax())
        raise _movies_error(path, int(ids.index[k]), f"movie id {item_id[k]} appears twice", expected)
    return pd.DataFrame({"item_id": item_id, "genre": genre})


def _movie_domains(genre: np.ndarray, domain_map: dict[str, list[str] | str]) -> tuple[np.ndarray, list[str]]:
    """Domain index of each movie from its first genre; -1 = no domain (dropped).

    Args:
        genre: first genre per movie ("" / "unknown" / "(no genres listed)" = none).
        domain_map: the validated domain map.

    Returns:
        (domain index per movie as int16, genres the map names that no movie has as first genre)
    """
    star = next((i for i, g in enumerate(domain_map.values()) if g == STAR), -1)
    lookup = {g: i for i, gs in enumerate(domain_map.values()) if gs != STAR for g in gs}
    codes = pd.Series(genre, dtype=object).map(lookup).fillna(star).astype(np.int16).to_numpy()
    present = set(pd.unique(genre))
    unused = [g for g in lookup if g not in present]
    return codes, unused


# ----------------------------------------------------------------------------------------------------------
# Building the rows
# ----------------------------------------------------------------------------------------------------------


def output_schema(domains: list[str]) -> pa.Schema:
    """The Arrow schema of every split file, for domain names in order.

    Args:
        domains: the domain names, in column order.
    """
    fields = [
        pa.field("row_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("timestamp", pa.int64()),
    ]
    for d in domains:
        fields += [pa.field(f"hist_{d}", pa.list_(pa.int64())), pa.field(f"hist_count_{d}", pa.float32())]
    return pa.schema(fields)


def _first_index(new_block: np.ndarray) -> np.ndarray:
    """For each position, the index of the first position of its block (blocks start where new_block)."""
    return np.maximum.accumulate(np.where(new_block, np.arange(new_block.size), 0))


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


def _split_stats(
    users: np.ndarray, items: np.ndarray, dom: np.ndarray, labels: np.ndarray, domains: list[str]
) -> SplitStats:
    """Counts of one split's rows (arrays in (user, ts, item) order)."""
    rows = int(users.size)
    return SplitStats(
        rows=rows,
        users=int(np.count_nonzero(np.diff(users)) + 1) if rows else 0,
        positive_rate=round(float(labels.mean()), 6) if rows else None,
        rows_per_domain={d: int(np.count_nonzero(dom == i)) for i, d in enumerate(domains)},
        items_per_domain={d: int(np.unique(items[dom == i]).size) for i, d in enumerate(domains)},
    )


def prepare_movielens(
    src_dir: Path,
    out_dir: Path,
    *,
    domains: Path | None = None,
    max_len: int = 200,
    n_test: int = 10,
    n_valid: int = 10,
    row_group_size: int = 32768,
) -> PrepareSummary:
    """Turn a GroupLens MovieLens folder into ``OUT_DIR/{train,valid,test}/part-00000.parquet`` and summary.

    See the module docstring for the data contract. Every file is written atomically; ``summary.json`` is
    written last, so its presence means the three splits are complete.

    Args:
        src_dir: the unpacked MovieLens folder (ml-100k, ml-1m/ml-10m or ml-latest/ml-20m/ml-25m layout).
        out_dir: the output folder (created; existing split files are replaced).
        domains: a YAML domain map (see ``load_domain_map``), or None for ``DEFAULT_DOMAINS``.
        max_len: keep the most recent ``max_len`` events of each history (>= 1).
        n_test: per user, the last ``n_test`` rows go to test (>= 1).
        n_valid: per user, the ``n_valid`` rows before them go to valid (>= 0).
        row_group_size: rows per Parquet row group.

    Returns:
        The summary (also in ``OUT_DIR/summary.json``).

    Raises:
        InputError: bad options, a missing or unrecognised folder, a malformed file, a bad domain map.
    """
    t0 = time.perf_counter()
    _check_args(max_len, n_test, n_valid, row_group_size)
    domain_map = load_domain_map(domains)
    names = list(domain_map)
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    fmt = detect_format(src_dir)
    movies = _read_movies(src_dir / fmt.movies, fmt)
    movie_dom, unused = _movie_domains(movies["genre"].to_numpy(), domain_map)
    ratings = _read_ratings(src_dir / fmt.ratings, fmt)
    log.info("read %s ratings (%s) in %.1fs", f"{ratings.num_rows:,}", fmt.name, time.perf_counter() - t0)

    user = ratings.column("user_id").to_numpy()
    item = ratings.column("item_id").to_numpy()
    ts = ratings.column("timestamp").to_numpy()
    label = (ratings.column("rating").to_numpy() >= 4.0).astype(np.int8)
    del ratings

    # Each rating's movie -> domain, by binary search in the sorted movie ids.
    movie_order = np.argsort(movies["item_id"].to_numpy(), kind="stable")
    movie_ids = movies["item_id"].to_numpy()[movie_order]
    pos = np.minimum(np.searchsorted(movie_ids, item), movie_ids.size - 1)
    known = movie_ids[pos] == item
    if not known.all():
        missing = np.unique(item[~known])
        raise InputError(
            f"{np.count_nonzero(~known):,} ratings are of {missing.size:,} movie id(s) that "
            f"{fmt.movies} does not list (e.g. {missing[:5].tolist()})",
            where=str(src_dir / fmt.ratings),
            fix=f"use {fmt.ratings} and {fmt.movies} from the same GroupLens archive.",
        )
    dom = movie_dom[movie_order][pos]
    keep = dom >= 0
    dropped_ratings = int(np.count_nonzero(~keep))
    dropped_items = int(np.unique(item[~keep]).size)
    if dropped_ratings:
        user, item, ts, label, dom = user[keep], item[keep], ts[keep], label[keep], dom[keep]
    if user.size == 0:
        raise InputError(
            "no rating falls in any domain",
            where=str(domains or "the default domain map"),
            fix='name genres that occur in this data set, or add a "*" domain.',
        )

    # The one global order: (user, timestamp, item id). Everything below is positions in it.
    order = np.lexsort((item, ts, user))
    user, item, ts, label, dom = user[order], item[order], ts[order], label[order], dom[order]
    del order
    n = user.size
    new_user = np.empty(n, dtype=bool)
    new_user[0] = True
    np.not_equal(user[1:], user[:-1], out=new_user[1:])
    new_second = new_user.copy()
    new_second[1:] |= ts[1:] != ts[:-1]
    user_first = _first_index(new_user)  # first row of the row's user
    second_first = _first_index(new_second)  # first row of the row's (user, timestamp)
    del new_second

    # Split: position counted from the user's last row.
    user_starts = np.flatnonzero(new_user)
    user_ends = np.append(user_starts[1:], n)
    from_end = np.repeat(user_ends, user_ends - user_starts) - 1 - np.arange(n)
    split = np.where(from_end < n_test, 2, np.where(from_end < n_test + n_valid, 1, 0)).astype(np.int8)
    del from_end, user_starts, user_ends, new_user

    # Histories. For domain d, before[i] = number of d-events among rows < i. A row's strictly earlier
    # d-events of the same user are the d-events between its user's first row and its (user, second)'s first
    # row: rows on the same second as this one start at the latter, so ties never enter the history.
    hist_items: list[np.ndarray] = []
    hist_start: list[np.ndarray] = []
    hist_end: list[np.ndarray] = []
    for d in range(len(names)):
        is_d = dom == d
        before = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(is_d, out=before[1:])
        hist_items.append(item[is_d])
        hist_start.append(before[user_first])
        hist_end.append(before[second_first])
    del user_first, second_first

    schema = output_schema(names)
    name_array = pa.array(names, type=pa.string())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"cannot create the output folder ({e.strerror})",
            where=str(out_dir),
            fix="pass a folder path that is not a file and that you can write to.",
        ) from None
    # summary.json marks a complete output: drop an old one before replacing any split file.
    (out_dir / SUMMARY_NAME).unlink(missing_ok=True)
    stats: dict[str, SplitStats] = {}
    for s, split_name in enumerate(SPLITS):
        rows = np.flatnonzero(split == s)
        cost = sum(np.minimum(e[rows] - b[rows], max_len) for b, e in zip(hist_start, hist_end, strict=True))
        with AtomicParquetWriter(out_dir / split_name / PART_NAME, schema, row_group_size) as writer:
            for begin, end in _chunks(np.asarray(cost)):
                idx = rows[begin:end]
                columns: list[pa.Array] = [
                    pa.array(idx, type=pa.int64()),
                    pa.array(user[idx]),
                    pa.array(item[idx]),
                    pc.take(name_array, pa.array(dom[idx].astype(np.int32))),
                    pa.array(label[idx]),
                    pa.array(ts[idx]),
                ]
                for b_all, e_all, values in zip(hist_start, hist_end, hist_items, strict=True):
                    b, e = b_all[idx], e_all[idx]
                    columns.append(_history_list(values, np.maximum(b, e - max_len), e))
                    columns.append(pa.array((e - b).astype(np.float32)))
                writer.write(pa.Table.from_arrays(columns, schema=schema))
        stats[split_name] = _split_stats(user[rows], item[rows], dom[rows], label[rows], names)
        log.info("wrote %s (%s rows)", writer.path, f"{rows.size:,}")
    stats["all"] = _split_stats(user, item, dom, label, names)

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
    write_json_atomic(summary.to_json(), out_dir / SUMMARY_NAME)
    log.info("prepared %s in %.1fs", out_dir, time.perf_counter() - t0)
    return summary
