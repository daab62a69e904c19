"""Checking Parquet data against a feature spec: files, columns, types and id ranges, every problem at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crossrank.features.errors import InputError
from crossrank.features.files import list_parquet_files
from crossrank.features.spec import FeatureDef, FeatureSpec, Problem


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
    if f.kind in ("id_list", "sequence"):
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


def _range_problems(spec: FeatureSpec, file: Path, meta: pq.ParquetFile, report: DataReport) -> None:
    """Scan identity-mapped id columns (streaming row groups) for ids beyond their table."""
    idents = [f for f in spec.features if f.kind != "dense" and f.mapping.type == "identity"]
    for f in idents:
        clip = 1 if f.mapping.oov == "clip" else 0
        if f.kind == "candidate":
            # A candidate indexes the item table of its own row's domain (as the reader maps it).
            sizes = {d.name: spec.table(d.table).num_embeddings - clip for d in spec.domains}
            limits = pa.array(list(sizes.values()), pa.int64())
            shown = ", ".join(f"{name}: [0, {n})" for name, n in sizes.items())
            columns = [f.column, f.domain_column]
        else:
            limit = spec.table(f.table).num_embeddings - clip
            shown = f"[0, {limit})"
            columns = [f.column]
        bad = 0
        first_rg = -1
        for rg in range(meta.num_row_groups):
            part = meta.read_row_group(rg, columns=columns)
            col = part.column(0).combine_chunks()
            if f.kind == "candidate":
                dom = part.column(1).combine_chunks()
                if pa.types.is_dictionary(dom.type):
                    dom = dom.cast(pa.string())
                limit = pc.take(limits, pc.index_in(dom, value_set=pa.array(spec.domain_names)))
            flat = pc.list_flatten(col) if _is_list(col.type) else col
            if len(flat) == 0:
                continue
            n = pc.sum(pc.or_(pc.less(flat, 0), pc.greater_equal(flat, limit))).as_py() or 0
            if n and first_rg < 0:
                first_rg = rg
            bad += n
        if not bad:
            continue
        where = f"{file} (column '{f.column}', first in row group {first_rg})"
        if f.mapping.oov == "error":
            report.problems.append(
                Problem(
                    where,
                    f.name,
                    f"{bad} id(s) outside the table's range {shown} under `oov: error`.",
                    "raise the table's num_embeddings, or use `oov: clip` / `mapping: {type: hash}`.",
                )
            )
        else:
            report.notes.append(
                f"{where}: feature '{f.name}': {bad} id(s) will go to the OOV row (oov: clip)."
            )


def check_data(spec: FeatureSpec, data: DataPaths, *, with_label: bool = True) -> DataReport:
    """Check every Parquet file under ``data`` against ``spec``; collects every problem instead of stopping."""
    report = DataReport()
    try:
        files = list_parquet_files(data)
    except InputError as e:
        report.problems.append(Problem(str(data), "<data>", e.what, e.fix))
        return report
    for file in files:
        try:
            meta = pq.ParquetFile(file)
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
            _range_problems(spec, file, meta, report)
    return report
