"""Checking Parquet data against a feature spec, every problem at once: files, columns and types, then the
pre-flight and every row group's values, by the same checks ``train`` and ``score`` apply
(:mod:`crossrank.features.validate`); and, for hash-mapped features, how the ids land on their table
(collisions, ids unseen in a reference split)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrank.features.errors import InputError
from crossrank.features.files import (
    DataPaths,
    as_path_list,
    iter_row_groups,
    list_parquet_files,
    open_parquet,
)
from crossrank.features.hashing import hash_ids
from crossrank.features.idmap import check_oov_fraction, map_ids
from crossrank.features.spec import HISTORY_KINDS, LIST_KINDS, FeatureDef, FeatureSpec, Problem, TableSpec
from crossrank.features.validate import capped, domain_index, metadata_problems, row_group_problems, where_of


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_id(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _expected(spec: FeatureSpec, f: FeatureDef | None, column: str) -> tuple[str, object]:
    """(description, predicate) of the Arrow type a column must have."""
    if f is None:  # label / row id
        if column == spec.label:
            return (
                "int, bool or float (0/1)",
                lambda t: _is_int(t) or pa.types.is_boolean(t) or pa.types.is_floating(t),
            )
        return "int64 or string", _is_id
    if f.kind in ("id", "candidate"):
        if f.mapping.type == "identity":
            return "an integer type", _is_int
        return "an integer or string type", _is_id
    if f.kind in LIST_KINDS:
        if f.mapping.type == "identity":
            return "list<int64>", lambda t: _is_list(t) and _is_int(t.value_type)
        return "list<int64> or list<string>", lambda t: _is_list(t) and _is_id(t.value_type)
    return "a float or integer type", lambda t: pa.types.is_floating(t) or _is_int(t)


def schema_problems(
    spec: FeatureSpec, schema: pa.Schema, source: str, *, with_label: bool = True
) -> list[Problem]:
    """Missing columns and wrong column types of one file's schema."""
    problems: list[Problem] = []
    checks: list[tuple[str, FeatureDef | None, str]] = [(spec.row_id, None, "row_id")]
    if with_label:
        checks.append((spec.label, None, "label"))
    for feature in spec.features:
        checks.append((feature.column, feature, feature.name))
    cand = spec.candidate
    for column, f, name in checks:
        if column not in schema.names:
            problems.append(
                Problem(
                    source,
                    name,
                    f"column '{column}' is missing (columns: {', '.join(schema.names)}).",
                    f"add the column to the data or point feature '{name}' at an existing column.",
                )
            )
            continue
        want, ok = _expected(spec, f, column)
        got = schema.field(column).type
        if not ok(got):  # type: ignore[operator]
            problems.append(
                Problem(
                    source, name, f"column '{column}' has type {got}, expected {want}.", "fix the data type."
                )
            )
    dcol = cand.domain_column
    if dcol not in schema.names:
        problems.append(
            Problem(source, cand.name, f"domain column '{dcol}' is missing.", "add it to the data.")
        )
    elif not (pa.types.is_string(schema.field(dcol).type) or pa.types.is_dictionary(schema.field(dcol).type)):
        problems.append(
            Problem(
                source,
                cand.name,
                f"domain column '{dcol}' has type {schema.field(dcol).type}, expected string (domain names).",
                f"write the domain name ({', '.join(spec.domain_names)}) of each row's candidate.",
            )
        )
    return problems


@dataclass
class DataReport:
    """What :func:`check_data` found: problems (errors) and notes (policies applied, counts)."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: int = 0
    files: int = 0
    oov: dict[str, int] = field(default_factory=dict)  # oov: clip key -> ids sent to the OOV row
    ids: dict[str, int] = field(default_factory=dict)  # oov: clip key -> ids mapped


def _row_groups(
    spec: FeatureSpec, file: Path, meta: pq.ParquetFile, report: DataReport, with_label: bool
) -> list[Problem]:
    """The pre-flight of ``file``, then the reader's check of every row group's values (one row group in
    memory at a time). A row group and feature the pre-flight named is not reported again (a job stops at the
    pre-flight's message, so that is the one to show). Notes the ids that ``oov: clip`` sends to the OOV row,
    counted as the reader counts them."""
    problems = metadata_problems(spec, meta.metadata, file, with_label=with_label)
    known = {(p.source, p.feature) for p in problems}
    columns = spec.required_columns(with_label=with_label)
    clipped: dict[str, tuple[int, int]] = {}  # key -> (ids sent to the OOV row, first row group)
    for rg in range(meta.num_row_groups):
        where = where_of(file, rg)
        try:
            table = meta.read_row_group(rg, columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            problems.append(
                Problem(where, "<data>", f"cannot read the row group ({e}).", "re-create the file.")
            )
            continue
        found = row_group_problems(spec, table, where, with_label=with_label)
        problems += [p for p in found if (p.source, p.feature.split("@")[0]) not in known]
        for key, (n, total) in _clipped(spec, table).items():
            report.ids[key] = report.ids.get(key, 0) + total
            report.oov[key] = report.oov.get(key, 0) + n
            if n:
                before, first = clipped.get(key, (0, rg))
                clipped[key] = (before + n, first)
    for key, (n, first) in clipped.items():
        column = (
            spec.candidate.column if "@" in key else next(f.column for f in spec.features if f.name == key)
        )
        report.notes.append(
            f"{file} (column '{column}', first in row group {first}): feature '{key}': {n} id(s) will go to "
            "the OOV row (oov: clip)."
        )
    return capped(problems, file)


def _kept_ids(f: FeatureDef, col: pa.Array) -> pa.Array | None:
    """The ids of one feature the reader maps (a sequence's last ``max_len`` per row); None with null ids."""
    if f.kind == "id":
        return col.drop_null()
    flat = pc.list_flatten(col)
    if flat.null_count or f.kind not in HISTORY_KINDS:
        return None if flat.null_count else flat
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int64)
    if lengths.max(initial=0) <= f.max_len:
        return flat
    first_kept = np.cumsum(lengths) - np.minimum(lengths, f.max_len)
    row = np.repeat(np.arange(len(lengths)), lengths)
    return flat.filter(pa.array(np.arange(len(flat)) >= first_kept[row]))


def _clipped(spec: FeatureSpec, table: pa.Table) -> dict[str, tuple[int, int]]:
    """Per KJT key under ``oov: clip``, (ids of one row group that go to the OOV row, ids mapped)."""
    out: dict[str, tuple[int, int]] = {}
    domains = pc.fill_null(domain_index(spec, table), -1).to_numpy()
    for key in spec.clipped_keys:
        mapping = spec.mapping_of_key(key)
        if mapping.type == "vocab" and mapping.vocab is None:  # `--fit` builds the vocabulary
            continue
        if "@" in key:
            col = table.column(spec.candidate.column).combine_chunks()
            mask = col.is_valid().to_numpy(zero_copy_only=False) & (
                domains == spec.domain_names.index(key.split("@")[1])
            )
            ids: pa.Array | None = col.filter(pa.array(mask))
        else:
            f = next(f for f in spec.features if f.name == key)
            ids = _kept_ids(f, table.column(f.column).combine_chunks())
        if ids is None or len(ids) == 0:
            continue
        try:
            _, n = map_ids(ids, spec.table_of_key(key), mapping, where="", feature=key, spec_path=spec.path)
        except InputError:  # not ids of the right type: a schema or row-group problem says so
            continue
        out[key] = (n, len(ids))
    return out


def check_data(spec: FeatureSpec, data: DataPaths, *, with_label: bool = True) -> DataReport:
    """Check every Parquet file under ``data`` against ``spec``; collects every problem instead of stopping."""
    report = DataReport()
    try:
        files = list_parquet_files(data)
    except InputError as e:
        report.problems.append(Problem(e.where or " ".join(as_path_list(data)), "<data>", e.what, e.fix))
        return report
    for file in files:
        try:
            meta = open_parquet(file)
        except (pa.ArrowInvalid, OSError) as e:
            report.problems.append(
                Problem(str(file), "<data>", f"not a readable Parquet file ({e}).", "re-create the file.")
            )
            continue
        report.files += 1
        report.rows += meta.metadata.num_rows
        if meta.metadata.num_rows == 0:
            report.problems.append(
                Problem(str(file), "<data>", "the file has no rows.", "remove it or re-run the preparation.")
            )
            continue
        found = schema_problems(spec, meta.schema_arrow, str(file), with_label=with_label)
        report.problems += found
        if not found:
            report.problems += _row_groups(spec, file, meta, report, with_label)
    _oov_fractions(spec, data, report)
    return report


def _oov_fractions(spec: FeatureSpec, data: DataPaths, report: DataReport) -> None:
    """The check a training job applies at each epoch end: no ``oov: clip`` key above its
    ``max_oov_fraction`` over the whole data."""
    for key in spec.clipped_keys:
        try:
            check_oov_fraction(spec, report.oov, {key: report.ids.get(key, 0)}, where="", min_ids=0)
        except InputError as e:
            report.problems.append(Problem(" ".join(as_path_list(data)), key, e.what, e.fix))


# ---- hash-mapped features: distinct ids, rows used, collisions, unseen ids ---------------------------------

# Pending per-row-group uniques are merged once they reach this many entries (or the merged set's size):
# memory stays O(distinct ids), whatever the number of rows.
_MERGE_AT = 1 << 20


class IdCounts:
    """The distinct ids of one feature (as their 64-bit hashes, see :mod:`crossrank.features.hashing`) and
    how often each occurs, accumulated row group by row group in memory proportional to the distinct ids.

    Integer ids are counted exactly (the hash is a bijection on 64-bit values); distinct strings whose
    64-bit hashes coincide (odds about d**2 / 2**65 for d strings) would count once.
    """

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)  # sorted, unique
        self.counts = np.zeros(0, np.int64)  # occurrences of each
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, hashes: np.ndarray) -> None:
        """Count one batch of id hashes."""
        if len(hashes) == 0:
            return
        u, c = np.unique(hashes, return_counts=True)
        self._pending.append((u, c.astype(np.int64)))
        self._pending_size += len(u)
        if self._pending_size >= max(_MERGE_AT, len(self.hashes)):
            self._merge()

    def _merge(self) -> None:
        """Fold the pending batches into the sorted (hashes, counts) arrays."""
        if not self._pending:
            return
        h = np.concatenate([self.hashes, *(u for u, _ in self._pending)])
        c = np.concatenate([self.counts, *(n for _, n in self._pending)])
        self._pending, self._pending_size = [], 0
        if len(h) == 0:
            return
        order = np.argsort(h, kind="stable")
        h, c = h[order], c[order]
        starts = np.flatnonzero(np.concatenate([[True], h[1:] != h[:-1]]))
        self.hashes, self.counts = h[starts], np.add.reduceat(c, starts)

    def merged(self) -> IdCounts:
        """Self, with every pending batch merged in."""
        self._merge()
        return self

    @staticmethod
    def union(parts: list[IdCounts]) -> IdCounts:
        """The ids of several features together (those sharing one table)."""
        out = IdCounts()
        for part in parts:
            out._pending.append((part.merged().hashes, part.counts))
        return out.merged()


@dataclass(frozen=True)
class HashKey:
    """One hash-mapped KJT key: a feature (or a candidate's domain) and the table its ids land on."""

    key: str
    feature: FeatureDef
    table: TableSpec
    domain: int = -1  # candidate keys: the index of the domain whose rows they are


def hashed_keys(spec: FeatureSpec) -> list[HashKey]:
    """The KJT keys of ``spec`` whose ids are mapped by ``hash``, in spec order."""
    keys: list[HashKey] = []
    for f in spec.features:
        if f.kind == "dense" or f.mapping.type != "hash":
            continue
        if f.kind == "candidate":
            for i, d in enumerate(spec.domain_names):
                key = spec.candidate_key(d)
                keys.append(HashKey(key, f, spec.table_of_key(key), i))
        else:
            keys.append(HashKey(f.name, f, spec.table_of_key(f.name)))
    return keys


def _row_group_ids(spec: FeatureSpec, part: pa.Table, hk: HashKey) -> pa.Array:
    """The non-null ids of one key in one row group (lists flattened; candidates of the key's domain)."""
    col = part.column(hk.feature.column).combine_chunks()
    if hk.domain >= 0:
        dom = part.column(hk.feature.domain_column).combine_chunks()
        if pa.types.is_dictionary(dom.type):
            dom = dom.cast(pa.string())
        index = pc.index_in(dom, value_set=pa.array(spec.domain_names))
        col = col.filter(pc.fill_null(pc.equal(index, hk.domain), False))
    flat = pc.list_flatten(col) if _is_list(col.type) else col
    return flat.drop_null()


def collect_ids(spec: FeatureSpec, data: DataPaths) -> dict[str, IdCounts]:
    """The :class:`IdCounts` of every hash-mapped key of ``spec`` over the files of ``data``, read one row
    group at a time. Raises InputError naming the file and column when one is missing or not an id column."""
    keys = hashed_keys(spec)
    found = {hk.key: IdCounts() for hk in keys}
    columns = sorted({c for hk in keys for c in (hk.feature.column, hk.feature.domain_column) if c})
    if not keys:
        return found
    parts = iter_row_groups(data, columns, needed_for="of the hash-mapped features", spec_path=spec.path)
    for part, where in parts:
        for hk in keys:
            try:
                found[hk.key].add(hash_ids(_row_group_ids(spec, part, hk)))
            except TypeError as e:
                raise InputError(
                    f"feature '{hk.feature.name}': column '{hk.feature.column}': {e}",
                    where=where,
                    spec=spec.path,
                    fix="write integer or string ids.",
                ) from None
    return {k: v.merged() for k, v in found.items()}


@dataclass(frozen=True)
class HashStats:
    """How one hash-mapped key's ids land on its table.

    Args:
        key / table / num_embeddings: the KJT key and its table.
        ids: distinct ids. rows: distinct table rows they land on.
        colliding: distinct ids sharing their row with at least one other distinct id.
        occurrences: id occurrences (rows of data for ``id``/candidate keys, list entries otherwise).
        unseen_ids / unseen_occurrences: of those, not in the reference data (None without one).
    """

    key: str
    table: str
    num_embeddings: int
    ids: int
    rows: int
    colliding: int
    occurrences: int
    unseen_ids: int | None = None
    unseen_occurrences: int | None = None

    @property
    def collision_rate(self) -> float:
        """Share of distinct ids that share a row with another distinct id."""
        return self.colliding / self.ids if self.ids else 0.0

    @property
    def expected_rate(self) -> float:
        """The collision rate of a uniformly random map of ``ids`` ids to ``num_embeddings`` rows."""
        return 1.0 - (1.0 - 1.0 / self.num_embeddings) ** max(self.ids - 1, 0)


def hash_stats(
    spec: FeatureSpec,
    data: dict[str, IdCounts],
    reference: dict[str, IdCounts] | None = None,
    *,
    shared_tables: bool = True,
) -> list[HashStats]:
    """Per hash-mapped key (from :func:`collect_ids`): distinct ids, rows used, collisions and, given the
    ``reference`` split's ids, the ids (and occurrences) unseen there. With ``shared_tables``, a table that
    several keys hash into also gets a line ``table:NAME`` for all their ids together (the collisions that
    matter for it)."""
    entries = [(hk.key, hk.table, [hk.key]) for hk in hashed_keys(spec)]
    if shared_tables:
        by_table: dict[str, list[str]] = {}
        for key, table, _ in entries:
            by_table.setdefault(table.name, []).append(key)
        entries += [(f"table:{t}", spec.table(t), ks) for t, ks in by_table.items() if len(ks) > 1]
    out = []
    for name, table, keys in entries:
        ids = IdCounts.union([data[k] for k in keys])
        ref = IdCounts.union([reference[k] for k in keys]) if reference is not None else None
        out.append(_stats_of(name, table, ids, ref))
    return out


def _stats_of(name: str, table: TableSpec, ids: IdCounts, ref: IdCounts | None) -> HashStats:
    """One :class:`HashStats` line."""
    rows = ids.hashes % np.uint64(table.num_embeddings)
    _, per_row = np.unique(rows, return_counts=True)
    unseen_ids = unseen_occ = None
    if ref is not None:
        pos = np.searchsorted(ref.hashes, ids.hashes)
        seen = pos < len(ref.hashes)
        seen[seen] = ref.hashes[pos[seen]] == ids.hashes[seen]
        unseen_ids, unseen_occ = int((~seen).sum()), int(ids.counts[~seen].sum())
    return HashStats(
        key=name,
        table=table.name,
        num_embeddings=table.num_embeddings,
        ids=len(ids.hashes),
        rows=len(per_row),
        colliding=int(per_row[per_row > 1].sum()),
        occurrences=int(ids.counts.sum()),
        unseen_ids=unseen_ids,
        unseen_occurrences=unseen_occ,
    )


def _pct(part: int | None, whole: int) -> str:
    """``part`` as a percentage of ``whole`` ("-" when unknown)."""
    return "-" if part is None else f"{100.0 * part / whole:.2f}%" if whole else "0.00%"


def format_hash_stats(stats: list[HashStats]) -> str:
    """The stats as an aligned text table (one line per key), with a legend."""
    with_ref = any(s.unseen_ids is not None for s in stats)
    head = ["feature", "table", "num_embeddings", "distinct ids", "rows used", "collision rate", "uniform"]
    head += ["unseen ids", "unseen occ."] if with_ref else []
    lines = [head]
    for s in stats:
        line = [s.key, s.table, f"{s.num_embeddings:,}", f"{s.ids:,}", f"{s.rows:,}"]
        line += [_pct(s.colliding, s.ids), f"{100.0 * s.expected_rate:.2f}%"]
        if with_ref:
            line += [_pct(s.unseen_ids, s.ids), _pct(s.unseen_occurrences, s.occurrences)]
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    text = [
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in lines
    ]
    text.append("collision rate: share of the distinct ids that share their row with another distinct id;")
    text.append("uniform: the same for a uniformly random map of as many ids to as many rows.")
    if with_ref:
        text.append(
            "unseen: ids absent from the reference, and their occurrences (rows of data; list entries"
        )
        text.append("for id_list/sequence features) as a share of all occurrences.")
    return "\n".join(text)
