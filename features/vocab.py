"""Vocabulary files of the ``vocab`` id mapping, and the value counts ``features check --fit`` builds them from.

A vocabulary file is UTF-8 text with one value per line: line ``i`` (0-based) is table row ``i``. The table's
last row is the reserved OOV row (values not in the file go there under ``oov: clip``), so a vocabulary holds
at most ``num_embeddings - 1`` values. Values are compared exactly (no trimming, no case folding); integer
ids are looked up by their decimal text. The file is named relative to the spec's folder and must stay
inside it, so that a spec and its vocabularies travel together (e.g. into a checkpoint: see
:func:`crossrank.features.spec.copy_spec`).

Example (``genres.txt``, next to the spec)::

    Drama
    Comedy
    Action

    mapping: {type: vocab, file: genres.txt, oov: clip}   # Drama -> row 0, ..., unknown -> row n - 1
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# (message, fix) of one problem with a vocabulary file; the spec wraps them into its Problems.
VocabProblem = tuple[str, str]

FIT_HINT = "`crossrank features check SPEC --data TRAIN --fit` builds it from the training data"


@dataclass(frozen=True)
class Vocab:
    """A loaded vocabulary: ``values[i]`` is table row ``i``.

    Args:
        path: the file it was read from.
        values: the values (Arrow strings, unique), in row order.
    """

    path: str
    values: pa.Array

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, values: pa.Array | np.ndarray) -> np.ndarray:
        """The row of each value (int64), -1 for values not in the vocabulary.

        Raises:
            TypeError: values that are neither strings nor integers.
        """
        idx = pc.index_in(as_strings(values), value_set=self.values)
        return pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def as_strings(values: pa.Array | pa.ChunkedArray | np.ndarray) -> pa.Array:
    """Ids as an Arrow string array: strings as they are, integers as their decimal text (no nulls expected).

    Raises:
        TypeError: floats, booleans, binary or nested values.
    """
    if isinstance(values, np.ndarray):
        try:  # Python strings (object arrays, as Arrow hands them over) are typed, so an empty one is too
            values = pa.array(values, type=pa.string() if values.dtype.kind in "OU" else None)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise TypeError(f"values of numpy dtype {values.dtype} are not all strings ({e}).") from None
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_null(t) and values.null_count == 0:  # an empty array of unknown type
        return pa.array([], pa.string())
    if pa.types.is_dictionary(t):
        return as_strings(values.cast(t.value_type))
    if pa.types.is_integer(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return values.cast(pa.string())
    if pa.types.is_string(t):
        return values
    raise TypeError(f"values of type {t} cannot be looked up in a vocabulary (use strings or integers).")


def name_problem(file: object) -> VocabProblem | None:
    """Why ``file`` (a mapping's ``file:``) cannot name a vocabulary, or None when it can."""
    fix = "name a file in the spec's folder (or below it), e.g. `file: genres.txt`."
    if not isinstance(file, str) or not file.strip():
        return f"a vocab mapping needs `file:` (the vocabulary file), got {file!r}.", fix
    parts = PurePosixPath(file.replace("\\", "/"))
    if parts.is_absolute() or Path(file).is_absolute() or ".." in parts.parts:
        return (
            f"vocabulary file {file!r} must be a relative path inside the spec's folder "
            "(a checkpoint copies the spec with its vocabularies).",
            fix,
        )
    return None


def vocab_path(spec_path: str | Path, file: str) -> Path:
    """Where the vocabulary ``file`` of the spec at ``spec_path`` lies (relative to the spec's folder)."""
    return Path(spec_path).parent / file


def read_vocab(path: Path) -> tuple[Vocab | None, list[VocabProblem]]:
    """Read and check a vocabulary file: it exists, is UTF-8, has values, no blank lines and no repeats."""
    build = f"write one value per line (line i is row i), or {FIT_HINT}."
    if not path.is_file():
        return None, [(f"vocabulary file {path} does not exist.", build)]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as e:
        return None, [(f"vocabulary file {path} cannot be read as UTF-8 text ({e}).", build)]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line
    lines = [line.removesuffix("\r") for line in lines]
    if not lines:
        return None, [(f"vocabulary file {path} is empty.", build)]
    problems: list[VocabProblem] = []
    blank = [i + 1 for i, line in enumerate(lines) if line == ""]
    if blank:
        problems.append(
            (
                f"vocabulary file {path} has {len(blank)} blank line(s) (line {blank[0]} first).",
                "remove them: each line is one value and the empty string cannot be one.",
            )
        )
    first: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []
    for i, line in enumerate(lines, start=1):
        if line in first and line:
            repeats.append((line, first[line], i))
        first.setdefault(line, i)
    if repeats:
        value, a, b = repeats[0]
        problems.append(
            (
                f"vocabulary file {path} repeats {len(repeats)} value(s) (e.g. {value!r} on lines {a} and {b}).",
                "keep each value once: line i is row i, so a repeated value would own two rows.",
            )
        )
    if problems:
        return None, problems
    return Vocab(str(path), pa.array(lines, pa.string())), []


def size_problem(vocab: Vocab, table: str, num_embeddings: int) -> VocabProblem | None:
    """The vocabulary does not fit ``table`` (whose last row is the OOV row), or None."""
    if len(vocab) <= num_embeddings - 1:
        return None
    return (
        f"vocabulary file {vocab.path} holds {len(vocab):,} values but table '{table}' has "
        f"{num_embeddings:,} rows, the last of them the OOV row (at most {num_embeddings - 1:,} values).",
        f"raise num_embeddings of table '{table}' to at least {len(vocab) + 1:,}, or shorten the file.",
    )


class ValueCounts:
    """How often each value occurs, accumulated batch by batch in memory proportional to the distinct values."""

    _MERGE_AT = 1 << 20  # pending (value, count) rows folded together once there are this many

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._pending = 0

    def add(self, values: pa.Array) -> None:
        """Count one batch of values (strings or integers, no nulls)."""
        if len(values) == 0:
            return
        vc = pc.value_counts(as_strings(values))
        self._parts.append(pa.table({"value": vc.field("values"), "count": vc.field("counts")}))
        self._pending += len(vc)
        if self._pending >= self._MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if len(self._parts) > 1:
            merged = pa.concat_tables(self._parts).group_by("value").aggregate([("count", "sum")])
            self._parts = [merged.rename_columns(["value", "count"])]
        self._pending = len(self._parts[0]) if self._parts else 0

    def most_frequent(self) -> list[tuple[str, int]]:
        """(value, count) pairs, most frequent first; equal counts in value order (deterministic)."""
        self._merge()
        if not self._parts:
            return []
        table = self._parts[0]
        order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("value", "ascending")])
        table = table.take(order)
        return list(zip(table.column("value").to_pylist(), table.column("count").to_pylist(), strict=True))


def copy_with_vocabs(
    spec_path: str | Path, vocab_files: list[str], folder: Path, name: str = "spec.yaml"
) -> None:
    """Copy a spec to ``folder/name`` with its vocabulary files (at the same relative paths), so that the
    copy loads on its own (see :func:`crossrank.features.spec.copy_spec`)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, folder / name)
    for file in vocab_files:
        target = folder / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vocab_path(spec_path, file), target)
