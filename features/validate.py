"""One validation path for data against a feature spec, shared by ``train``/``evaluate``/``score`` (the
reader) and ``crossrank features check --data``.

- :func:`row_group_problems` is every value check the reader applies to a row group before converting it:
  row ids present and unique, labels 0/1 (no null, no NaN), domains declared, a candidate on every row, no
  null ids inside lists, ids their mapping accepts under ``oov: error``, ``log1p`` of non-negative values.
  The reader raises the first problem; ``features check`` collects them all, over every row group.
- :func:`metadata_problems` is the pre-flight: what the Parquet footer (per row group and column: null
  counts, min/max) decides without reading a data page, so most bad data stops a job in seconds, before
  any training. Every problem it reports is one the row-group check also finds in that row group (it only
  finds them sooner); where a file has no statistics it says nothing, and the row-group check still runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrank.features.errors import InputError
from crossrank.features.idmap import map_ids
from crossrank.features.spec import LIST_KINDS, FeatureDef, FeatureSpec, Problem

FIX_NULL_LABEL = "drop unlabeled rows from training/evaluation data."
FIX_LABEL = "binarise the label (0/1) when preparing the data."
FIX_NULL_ROW_ID = "give every row its own id when preparing the data."
FIX_REPEATED_ROW_ID = "row ids must be unique: scores and metrics are matched to rows by id."
FIX_DOMAIN = "declare the domain under `domains:` or fix the data."
FIX_CANDIDATE = "every row needs a candidate item."
FIX_NULL_IDS = "drop null ids from the lists when preparing the data."
FIX_LOG1P = "use `transform: standardize` or `none` for signed values."
# Statistics longer than this may have been truncated by the writer (not values of the data).
_EXACT_STAT_BYTES = 64
# Problems of one kind (feature and fix) listed per file; the rest are counted in one more line.
SHOWN_PER_FILE = 3


def where_of(file: object, row_group: int) -> str:
    """How every check names a row group (the reader's :class:`Unit` prints the same)."""
    return f"{file} (row group {row_group})"


def first_error(problems: list[Problem], spec: FeatureSpec) -> InputError | None:
    """The first problem as the InputError the reader raises: ``WHERE: [feature] message ... Fix: ...``, the
    same text ``features check`` prints for it."""
    if not problems:
        return None
    p = problems[0]
    return InputError(f"[{p.feature}] {p.message}", where=p.source, fix=p.fix, spec=spec.path)


def preflight_error(problems: list[Problem], spec: FeatureSpec) -> InputError | None:
    """The pre-flight's problems as one InputError: one problem as the reader would raise it, several listed
    one per line (as ``features check`` prints them)."""
    if len(problems) <= 1:
        return first_error(problems, spec)
    lines = "\n".join(f"  - {p}" for p in problems)
    return InputError(
        f"{len(problems)} problem(s) found in the Parquet statistics (no data read yet):\n{lines}",
        spec=spec.path,
    )


# ---- the row-group check -------------------------------------------------------------------------------


def row_group_problems(
    spec: FeatureSpec, table: pa.Table, where: str, *, with_label: bool = True
) -> list[Problem]:
    """Every problem of one row group's values (``table`` holds ``spec.required_columns``, schema checked)."""
    problems = _row_id_problems(spec, table, where)
    if with_label:
        problems += _label_problems(spec, table, where)
    domains, found = _domain_index(spec, table, where)
    problems += found
    problems += _candidate_problems(spec, table, where, domains)
    for f in spec.of_kind("id", *LIST_KINDS):
        problems += _id_problems(spec, f, table.column(f.column).combine_chunks(), where)
    problems += _event_problems(spec, table, where)
    problems += _dense_problems(spec, table, where)
    return problems


def _event_problems(spec: FeatureSpec, table: pa.Table, where: str) -> list[Problem]:
    """An event feature must hold one entry per event of its history, in every row."""
    problems = []
    for f in spec.of_kind("event"):
        history = next(h for h in spec.of_kind("sequence") if h.name == f.of)
        bad = np.flatnonzero(_list_lengths(table, f.column) != _list_lengths(table, history.column))
        if bad.size:
            msg = (
                f"column '{f.column}' has a different number of entries than history column "
                f"'{history.column}' in {bad.size} row(s) (first: row {int(bad[0])} of this row group)."
            )
            fix = f"write one '{f.column}' entry per event of '{history.column}', in the same order."
            problems.append(Problem(where, f.name, msg, fix))
    return problems


def _list_lengths(table: pa.Table, column: str) -> np.ndarray:
    """The length of each row's list in ``column`` (0 for a null list)."""
    return pc.fill_null(pc.list_value_length(table.column(column).combine_chunks()), 0).to_numpy()


def _row_id_problems(spec: FeatureSpec, table: pa.Table, where: str) -> list[Problem]:
    column = spec.row_id
    rid = table.column(column).combine_chunks()
    if rid.null_count:
        msg = f"row id column '{column}' has {rid.null_count} null value(s)."
        return [Problem(where, "row_id", msg, FIX_NULL_ROW_ID)]
    distinct = pc.count_distinct(rid).as_py()
    if distinct < len(rid):
        counts = pc.value_counts(rid)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        msg = (
            f"row id column '{column}' repeats {len(rid) - distinct} id(s) (e.g. {repeated[:3].to_pylist()})."
        )
        return [Problem(where, "row_id", msg, FIX_REPEATED_ROW_ID)]
    return []


def _label_problems(spec: FeatureSpec, table: pa.Table, where: str) -> list[Problem]:
    col = table.column(spec.label)
    problems = []
    if col.null_count:
        msg = f"label column '{spec.label}' has {col.null_count} null value(s)."
        problems.append(Problem(where, "label", msg, FIX_NULL_LABEL))
    y = col.drop_null().to_numpy().astype(np.float64)
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        values = [float(v) for v in np.unique(y[bad])]  # sorted, NaN last
        shown = values if len(values) <= 3 else [*values[:2], values[-1]]
        msg = f"label column '{spec.label}' holds {int(bad.sum())} value(s) other than 0/1 (e.g. {shown})."
        problems.append(Problem(where, "label", msg, FIX_LABEL))
    return problems


def domain_index(spec: FeatureSpec, table: pa.Table) -> pa.Array:
    """Each row's domain as its index in ``spec.domain_names`` (null where undeclared or null)."""
    col = table.column(spec.candidate.domain_column).combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    return pc.index_in(col, value_set=pa.array(spec.domain_names))


def _domain_index(spec: FeatureSpec, table: pa.Table, where: str) -> tuple[np.ndarray, list[Problem]]:
    """(domain index per row, -1 where undeclared; the problem of undeclared domains)."""
    cand = spec.candidate
    idx = domain_index(spec, table)
    domains = pc.fill_null(idx, -1).to_numpy().astype(np.int64)
    if not idx.null_count:
        return domains, []
    col = table.column(cand.domain_column).combine_chunks()
    unknown = pc.unique(col.filter(pc.is_null(idx)).cast(pa.string())).to_pylist()[:5]
    return domains, [_domain_problem(spec, where, unknown)]


def _domain_problem(spec: FeatureSpec, where: str, unknown: list[Any]) -> Problem:
    cand = spec.candidate
    msg = (
        f"column '{cand.domain_column}' holds domain(s) {unknown} not declared in the spec "
        f"(declared: {spec.domain_names})."
    )
    return Problem(where, cand.name, msg, FIX_DOMAIN)


def _candidate_problems(spec: FeatureSpec, table: pa.Table, where: str, domains: np.ndarray) -> list[Problem]:
    """A candidate on every row, and candidate ids their domain's table accepts."""
    cand = spec.candidate
    col = table.column(cand.column).combine_chunks()
    problems = []
    if col.null_count:
        msg = f"feature '{cand.name}': {col.null_count} row(s) have no candidate id in '{cand.column}'."
        problems.append(Problem(where, cand.name, msg, FIX_CANDIDATE))
    present = col.is_valid().to_numpy(zero_copy_only=False)
    for i, d in enumerate(spec.domain_names):
        ids = col.filter(pa.array(present & (domains == i)))
        problems += _mapping_problems(spec, spec.candidate_key(d), cand, ids, where)
    return problems


def _id_problems(spec: FeatureSpec, f: FeatureDef, col: pa.Array, where: str) -> list[Problem]:
    """No null ids inside lists (a null ``id`` is an empty row), and ids the mapping accepts."""
    flat = col.drop_null() if f.kind == "id" else pc.list_flatten(col)
    if flat.null_count:
        msg = f"feature '{f.name}': column '{f.column}' holds {flat.null_count} null id(s) inside its lists."
        return [Problem(where, f.name, msg, FIX_NULL_IDS)]
    return _mapping_problems(spec, f.name, f, flat, where)


def _mapping_problems(spec: FeatureSpec, key: str, f: FeatureDef, ids: pa.Array, where: str) -> list[Problem]:
    """The mapping's own error for ``ids`` under ``oov: error`` (every id, also those a sequence's
    ``max_len`` drops). ``hash`` accepts any id of the checked type, ``clip`` any value."""
    m = f.mapping
    if m.type == "hash" or m.oov != "error" or len(ids) == 0:
        return []
    if m.type == "vocab" and m.vocab is None:  # a spec loaded for `--fit`: the vocabulary is being built
        return []
    try:
        map_ids(ids, spec.table_of_key(key), m, where=where, feature=key, spec_path=spec.path)
    except InputError as e:
        return [Problem(where, key, e.what, e.fix)]
    return []


def _dense_problems(spec: FeatureSpec, table: pa.Table, where: str) -> list[Problem]:
    """``log1p`` of negative values (missing/NaN values count as their ``fill``, as the reader fills them)."""
    problems = []
    for f in spec.dense_features:
        if f.transform != "log1p":
            continue
        x = table.column(f.column).to_numpy().astype(np.float32)  # nulls -> NaN
        x[~np.isfinite(x)] = f.fill
        if (x < 0).any():
            msg = (
                f"feature '{f.name}': log1p of negative values in column '{f.column}' (min {float(x.min())})."
            )
            problems.append(Problem(where, f.name, msg, FIX_LOG1P))
    return problems


# ---- the pre-flight: Parquet metadata only -------------------------------------------------------------


def _leaf_columns(meta: pq.FileMetaData) -> dict[str, int]:
    """Top-level column -> its Parquet leaf column, for columns with exactly one leaf (flat and list<x>)."""
    leaves: dict[str, list[int]] = {}
    for j in range(meta.num_columns):
        leaves.setdefault(meta.schema.column(j).path.split(".")[0], []).append(j)
    return {name: js[0] for name, js in leaves.items() if len(js) == 1}


def _stats(meta: pq.FileMetaData, rg: int, leaf: int | None) -> tuple[int | None, Any, Any]:
    """(null count, min, max) of one column chunk, None where the file has no such statistic."""
    if leaf is None:
        return None, None, None
    chunk = meta.row_group(rg).column(leaf)
    s = chunk.statistics if chunk.is_stats_set else None
    if s is None:
        return None, None, None
    nulls = s.null_count if s.has_null_count else None
    return (nulls, s.min, s.max) if s.has_min_max else (nulls, None, None)


def metadata_problems(
    spec: FeatureSpec, meta: pq.FileMetaData, file: object, *, with_label: bool = True
) -> list[Problem]:
    """The pre-flight of one file (schema already checked) from its footer alone: per row group, null labels,
    null row ids, null candidates, labels outside [0, 1], undeclared or null domains, ids outside their
    table under ``identity`` + ``oov: error`` (negative ids included), log1p of negative values."""
    leaves = _leaf_columns(meta)
    problems: list[Problem] = []
    for rg in range(meta.num_row_groups):
        where = where_of(file, rg)

        def stats(column: str, rg: int = rg) -> tuple[int | None, Any, Any]:
            return _stats(meta, rg, leaves.get(column))

        problems += _null_problems(spec, stats, where, with_label)
        if with_label:
            problems += _label_range_problems(spec, stats(spec.label), where)
        problems += _domain_stat_problems(spec, stats(spec.candidate.domain_column), where)
        problems += _id_range_problems(spec, stats, where)
        problems += _dense_stat_problems(spec, stats, where)
    return problems


def _null_problems(spec: FeatureSpec, stats: Any, where: str, with_label: bool) -> Iterator[Problem]:
    """Null row ids, labels and candidates: the null counts are exact, so are the messages."""
    nulls, _, _ = stats(spec.row_id)
    if nulls:
        yield Problem(
            where, "row_id", f"row id column '{spec.row_id}' has {nulls} null value(s).", FIX_NULL_ROW_ID
        )
    nulls = stats(spec.label)[0] if with_label else None
    if nulls:
        yield Problem(
            where, "label", f"label column '{spec.label}' has {nulls} null value(s).", FIX_NULL_LABEL
        )
    cand = spec.candidate
    nulls = stats(cand.column)[0]
    if nulls:
        msg = f"feature '{cand.name}': {nulls} row(s) have no candidate id in '{cand.column}'."
        yield Problem(where, cand.name, msg, FIX_CANDIDATE)


def _label_range_problems(spec: FeatureSpec, stat: tuple[int | None, Any, Any], where: str) -> list[Problem]:
    _, lo, hi = stat
    if lo is None or isinstance(lo, bool) or not (float(lo) < 0 or float(hi) > 1):
        return []
    msg = f"label column '{spec.label}' holds values other than 0/1 (min {lo}, max {hi} in the file's statistics)."
    return [Problem(where, "label", msg, FIX_LABEL)]


def _exact(value: Any) -> bool:
    return isinstance(value, str) and len(value.encode()) < _EXACT_STAT_BYTES


def _domain_stat_problems(spec: FeatureSpec, stat: tuple[int | None, Any, Any], where: str) -> list[Problem]:
    """A null domain, or a min/max domain name (values of the data) that the spec does not declare."""
    nulls, lo, hi = stat
    unknown: list[Any] = [None] if nulls else []
    unknown += [v for v in dict.fromkeys([lo, hi]) if _exact(v) and v not in spec.domain_names]
    return [_domain_problem(spec, where, unknown)] if unknown else []


def _id_range_problems(spec: FeatureSpec, stats: Any, where: str) -> list[Problem]:
    """Ids outside the table under ``identity`` + ``oov: error``, from min/max; a candidate's limit is its
    largest domain table (the statistics do not say which domain an id belongs to)."""
    problems = []
    for f in spec.features:
        if f.kind == "dense" or f.mapping.type != "identity" or f.mapping.oov != "error":
            continue
        _, lo, hi = stats(f.column)
        if not isinstance(lo, int) or not isinstance(hi, int):
            continue
        keys = [spec.candidate_key(d) for d in spec.domain_names] if f.kind == "candidate" else [f.name]
        table = max((spec.table_of_key(k) for k in keys), key=lambda t: t.num_embeddings)
        n = table.num_embeddings
        if lo < 0 or hi >= n:
            name, of = f"'{f.name}'", f"table '{table.name}'"
            if f.kind == "candidate":
                name, of = f"{name} ({', '.join(keys)})", f"every domain's table (largest: '{table.name}')"
            msg = (
                f"feature {name}: ids outside [0, {n}) of {of} under `oov: error` in column '{f.column}' "
                f"(min {lo}, max {hi} in the file's statistics)."
            )
            fix = f"raise num_embeddings of table '{table.name}', use `oov: clip`, or use `mapping: {{type: hash}}`."
            problems.append(Problem(where, f.name, msg, fix))
    return problems


def _dense_stat_problems(spec: FeatureSpec, stats: Any, where: str) -> list[Problem]:
    problems = []
    for f in spec.dense_features:
        _, lo, _ = stats(f.column)
        low = np.float32(0 if lo is None else lo)  # as the reader sees it: float32 (-1e-50 is -0.0 there)
        if f.transform == "log1p" and np.isfinite(low) and low < 0:
            msg = f"feature '{f.name}': log1p of negative values in column '{f.column}' (min {float(low)})."
            problems.append(Problem(where, f.name, msg, FIX_LOG1P))
    return problems


def capped(problems: list[Problem], file: object, shown: int = SHOWN_PER_FILE) -> list[Problem]:
    """``problems`` of one file with at most ``shown`` row groups per kind (feature and fix) listed, the others
    counted in one more problem: a column bad everywhere gives a few lines, not one per row group."""
    seen: dict[tuple[str, str], int] = {}
    out = []
    for p in problems:
        n = seen[(p.feature, p.fix)] = seen.get((p.feature, p.fix), 0) + 1
        if n <= shown:
            out.append(p)
    for (feature, fix), n in seen.items():
        if n > shown:
            msg = f"and {n - shown} more row group(s) of this file with the same kind of problem."
            out.append(Problem(str(file), feature, msg, fix))
    return out
