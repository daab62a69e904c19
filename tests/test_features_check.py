"""Tests of ``crossrank.features.check`` (data against a spec), ``crossrank.features.idmap`` and ``crossrank features check``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crossrank.features.check import DataReport, check_data, schema_problems
from crossrank.features.errors import InputError
from crossrank.features.files import list_parquet_files
from crossrank.features.idmap import map_ids
from crossrank.features.spec import FeatureSpec, IdMapping, TableSpec, builtin_spec_path, load_spec
from crossrank.pipeline.cli import main

SYNTHETIC = builtin_spec_path("synthetic")
ITEMS = 1025  # num_embeddings of item_A / item_B in the synthetic spec


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_spec(SYNTHETIC)


def spec_variant(tmp_path: Path, edit: Any, name: str = "variant.yaml") -> FeatureSpec:
    """The synthetic spec after ``edit(raw)``, written to tmp_path and loaded."""
    raw = yaml.safe_load(SYNTHETIC.read_text())
    edit(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_spec(path)


def oov_error(raw: dict[str, Any]) -> None:
    """Every identity mapping -> `oov: error` (candidate and histories share tables, so all at once)."""
    for f in raw["features"]:
        if isinstance(f.get("mapping"), dict) and f["mapping"].get("type") == "identity":
            f["mapping"]["oov"] = "error"


def rows(n: int = 6, **columns: Any) -> pa.Table:
    """``n`` clean rows of the synthetic data contract; keyword arguments replace (array) or drop (None)."""
    hist_a = [[i % 7, (i + 3) % ITEMS] for i in range(n)]
    hist_b = [[] if i % 3 == 0 else [ITEMS - 2] for i in range(n)]
    data: dict[str, pa.Array] = {
        "row_id": pa.array(range(n), pa.int64()),
        "user_id": pa.array([1000 + 17 * i for i in range(n)], pa.int64()),
        "item_id": pa.array([i * 100 % (ITEMS - 1) for i in range(n)], pa.int64()),
        "domain": pa.array(["A" if i % 2 == 0 else "B" for i in range(n)], pa.string()),
        "label": pa.array([i % 2 for i in range(n)], pa.int8()),
        "timestamp": pa.array([1_700_000_000 + i for i in range(n)], pa.int64()),
        "hist_A": pa.array(hist_a, pa.list_(pa.int64())),
        "hist_count_A": pa.array([len(h) for h in hist_a], pa.float32()),
        "hist_B": pa.array(hist_b, pa.list_(pa.int64())),
        "hist_count_B": pa.array([len(h) for h in hist_b], pa.float32()),
    }
    for name, value in columns.items():
        if value is None:
            del data[name]
        else:
            data[name] = value
    return pa.table(data)


def write(path: Path, table: pa.Table, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def messages(report: DataReport) -> str:
    return "\n".join(map(str, report.problems))


# ---- check_data: files, columns, types -----------------------------------------------------------------


def test_clean_folder_has_no_problems(tmp_path: Path, spec: FeatureSpec) -> None:
    write(tmp_path / "data" / "part-0.parquet", rows(6))
    write(tmp_path / "data" / "sub" / "part-1.parquet", rows(4), row_group_size=2)
    (tmp_path / "data" / ".part-2.parquet").write_bytes(b"hidden, not Parquet")  # dot files are skipped
    (tmp_path / "data" / "notes.txt").write_text("not a parquet file")
    report = check_data(spec, tmp_path / "data")
    assert report.problems == [], messages(report)
    assert report.notes == []
    assert (report.files, report.rows) == (2, 10)
    assert list_parquet_files(tmp_path / "data") == [
        tmp_path / "data" / "part-0.parquet",
        tmp_path / "data" / "sub" / "part-1.parquet",
    ]


def test_clean_single_file_and_optional_columns(tmp_path: Path, spec: FeatureSpec) -> None:
    # A hash-mapped user id may be a string; the domain may be dictionary-encoded; the label may be a bool.
    table = rows(
        5,
        user_id=pa.array([f"u{i}" for i in range(5)]),
        domain=pa.array(["A", "B", "A", "A", "B"]).dictionary_encode(),
        label=pa.array([True, False, True, False, False]),
        timestamp=None,  # not named by the spec
    )
    path = write(tmp_path / "one.parquet", table)
    report = check_data(spec, path)
    assert report.problems == [], messages(report)
    assert (report.files, report.rows) == (1, 5)


@pytest.mark.parametrize(
    ("column", "feature"),
    [("item_id", "item"), ("hist_B", "hist_B"), ("hist_count_A", "hist_count_A"), ("row_id", "row_id")],
)
def test_missing_column(tmp_path: Path, spec: FeatureSpec, column: str, feature: str) -> None:
    path = write(tmp_path / "d.parquet", rows(**{column: None}))
    report = check_data(spec, tmp_path)
    (p,) = report.problems
    assert (p.source, p.feature) == (str(path), feature)
    assert f"column '{column}' is missing" in p.message
    assert "user_id" in p.message  # lists the columns that are there
    assert feature in p.fix


def test_missing_label_only_matters_with_label(tmp_path: Path, spec: FeatureSpec) -> None:
    path = write(tmp_path / "d.parquet", rows(label=None))
    (p,) = check_data(spec, path).problems
    assert (p.source, p.feature) == (str(path), "label")
    assert "column 'label' is missing" in p.message
    assert check_data(spec, path, with_label=False).problems == []


def test_missing_domain_column(tmp_path: Path, spec: FeatureSpec) -> None:
    path = write(tmp_path / "d.parquet", rows(domain=None))
    (p,) = check_data(spec, path).problems
    assert (p.source, p.feature) == (str(path), "item")
    assert "domain column 'domain' is missing" in p.message


@pytest.mark.parametrize(
    ("column", "value", "feature", "got", "expected"),
    [
        ("hist_A", pa.array(["1,2"] * 6), "hist_A", "string", "list<int64>"),
        ("hist_B", pa.array([[0.5]] * 6, pa.list_(pa.float64())), "hist_B", "double>", "list<int64>"),
        ("item_id", pa.array([1.0] * 6), "item", "double", "an integer type"),
        ("item_id", pa.array(["7"] * 6), "item", "string", "an integer type"),  # identity needs ints
        ("user_id", pa.array([1.5] * 6), "user_id", "double", "an integer or string type"),
        ("hist_count_A", pa.array(["3"] * 6), "hist_count_A", "string", "a float or integer type"),
        ("label", pa.array(["yes"] * 6), "label", "string", "int, bool or float"),
        ("row_id", pa.array([0.5] * 6), "row_id", "double", "int64 or string"),
        ("domain", pa.array([0] * 6, pa.int64()), "item", "int64", "expected string"),
    ],
    ids=[
        "hist-string",
        "hist-floats",
        "item-float",
        "item-string",
        "user-float",
        "dense-string",
        "label",
        "row-id",
        "domain",
    ],
)
def test_wrong_dtype(
    tmp_path: Path, spec: FeatureSpec, column: str, value: pa.Array, feature: str, got: str, expected: str
) -> None:
    path = write(tmp_path / "d.parquet", rows(**{column: value}))
    report = check_data(spec, path)
    (p,) = report.problems
    assert (p.source, p.feature) == (str(path), feature)
    assert f"column '{column}' has type " in p.message
    assert got in p.message.split(", expected")[0]
    assert expected in p.message
    assert p.fix
    assert report.notes == []  # no range scan of a file with schema problems


def test_every_schema_problem_at_once(tmp_path: Path, spec: FeatureSpec) -> None:
    table = rows(item_id=pa.array([1.0] * 6), hist_A=None, hist_count_B=pa.array(["x"] * 6))
    problems = schema_problems(spec, table.schema, "src")
    assert sorted(p.feature for p in problems) == ["hist_A", "hist_count_B", "item"]
    assert all(p.source == "src" for p in problems)


# ---- check_data: id ranges ---------------------------------------------------------------------------------


def out_of_range_rows() -> pa.Table:
    """Two row groups of 3 rows; row group 1 holds hist_A ids 1024 (the OOV row under clip), 5000 and -1."""
    hist = [[1, 2], [3], [], [0, 1024], [5000, 1023], [-1]]
    return rows(6, hist_A=pa.array(hist, pa.list_(pa.int64())))


def test_ids_beyond_table_under_oov_error(tmp_path: Path) -> None:
    spec = spec_variant(tmp_path, oov_error)
    path = write(tmp_path / "data" / "d.parquet", out_of_range_rows(), row_group_size=3)
    report = check_data(spec, tmp_path / "data")
    (p,) = report.problems  # the pre-flight's (from the statistics), as a job stops with it
    assert p.source == f"{path} (row group 1)"
    assert "column 'hist_A'" in p.message
    assert p.feature == "hist_A"
    assert "min -1, max 5000" in p.message  # 1024 is a valid row under `oov: error`
    assert f"[0, {ITEMS})" in p.message
    assert "oov: error" in p.message
    assert "num_embeddings" in p.fix
    assert report.notes == []
    assert (report.files, report.rows) == (1, 6)


def test_candidate_beyond_table_under_oov_error(tmp_path: Path) -> None:
    spec = spec_variant(tmp_path, oov_error)
    item = pa.array([0, 1, 2, 3, ITEMS, 5], pa.int64())
    path = write(tmp_path / "d.parquet", rows(6, item_id=item), row_group_size=2)
    (p,) = check_data(spec, path).problems
    assert p.feature == "item"
    assert p.source == f"{path} (row group 2)"
    assert f"max {ITEMS}" in p.message and "item@A, item@B" in p.message


def test_candidate_range_is_per_domain_table(tmp_path: Path) -> None:
    """A candidate indexes its own domain's table: an id valid in B's bigger table is fine in a B row."""

    def edit(raw: dict[str, Any]) -> None:
        oov_error(raw)
        next(t for t in raw["tables"] if t["name"] == "item_B")["num_embeddings"] = 5000

    spec = spec_variant(tmp_path, edit)
    domains = pa.array(["A", "B", "A", "B", "A", "B"])
    ok = write(tmp_path / "ok.parquet", rows(6, domain=domains, item_id=pa.array([0, 3000, 1, 4999, 2, 3])))
    assert check_data(spec, ok).problems == []
    bad = write(
        tmp_path / "bad.parquet", rows(6, domain=domains, item_id=pa.array([0, 3000, 3000, 4999, 1, 2]))
    )
    (p,) = check_data(spec, bad).problems  # 3000 in an A row: only the values tell (the statistics cannot)
    assert p.feature == "item@A"
    assert "1 id(s)" in p.message and f"[0, {ITEMS})" in p.message and "3000" in p.message


def test_ids_beyond_table_under_clip_are_a_note(tmp_path: Path, spec: FeatureSpec) -> None:
    path = write(tmp_path / "d.parquet", out_of_range_rows(), row_group_size=3)
    report = check_data(spec, path)
    (note,) = report.notes
    assert str(path) in note
    assert "column 'hist_A'" in note and "row group 1" in note
    assert "feature 'hist_A'" in note
    assert "3 id(s)" in note  # under clip 1024 is the reserved OOV row too
    assert "oov: clip" in note
    # 3 of 8 ids is above max_oov_fraction (1%): the epoch-end check of a training job would stop, so
    # features check says so too, over the whole data.
    (problem,) = report.problems
    assert (
        problem.feature == "hist_A" and "3 of 8 ids" in problem.message and "max_oov_fraction" in problem.fix
    )


def test_clip_below_max_oov_fraction_is_only_a_note(tmp_path: Path) -> None:
    def tolerate(raw: dict[str, Any]) -> None:
        next(f for f in raw["features"] if f["name"] == "hist_A")["mapping"]["max_oov_fraction"] = 0.5

    path = write(tmp_path / "d.parquet", out_of_range_rows(), row_group_size=3)
    report = check_data(spec_variant(tmp_path, tolerate), path)
    assert report.problems == [], messages(report)
    assert len(report.notes) == 1


def test_hash_mapped_ids_are_not_range_checked(tmp_path: Path, spec: FeatureSpec) -> None:
    path = write(tmp_path / "d.parquet", rows(user_id=pa.array([-5, 10**12, 0, 1, 2, 3], pa.int64())))
    report = check_data(spec, path)
    assert (report.problems, report.notes) == ([], [])


# ---- check_data: unreadable input --------------------------------------------------------------------------


def test_empty_parquet_file(tmp_path: Path, spec: FeatureSpec) -> None:
    empty = write(tmp_path / "data" / "empty.parquet", rows(0))
    write(tmp_path / "data" / "full.parquet", rows(3))
    report = check_data(spec, tmp_path / "data")
    (p,) = report.problems
    assert (p.source, p.feature) == (str(empty), "<data>")
    assert "no rows" in p.message
    assert p.fix
    assert (report.files, report.rows) == (2, 3)


def test_nonexistent_path(tmp_path: Path, spec: FeatureSpec) -> None:
    missing = tmp_path / "no" / "such" / "data"
    report = check_data(spec, missing)
    (p,) = report.problems
    assert (p.source, p.feature) == (str(missing), "<data>")
    assert "no such file or folder" in p.message
    assert p.fix
    assert (report.files, report.rows) == (0, 0)
    with pytest.raises(InputError) as info:
        list_parquet_files(missing)
    assert info.value.where == str(missing)


def test_folder_without_parquet(tmp_path: Path, spec: FeatureSpec) -> None:
    (tmp_path / "readme.txt").write_text("x")
    (p,) = check_data(spec, tmp_path).problems
    assert p.source == str(tmp_path)
    assert "no *.parquet file" in p.message


def test_corrupt_file(tmp_path: Path, spec: FeatureSpec) -> None:
    bad = tmp_path / "x.parquet"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    write(tmp_path / "y.parquet", rows(4))
    report = check_data(spec, tmp_path)
    (p,) = report.problems
    assert (p.source, p.feature) == (str(bad), "<data>")
    assert "not a readable Parquet file" in p.message
    assert p.fix
    assert (report.files, report.rows) == (1, 4)  # the good file is still checked


# ---- map_ids -----------------------------------------------------------------------------------------------

# Golden values and the cross-process check of the hash live in tests/test_hashing.py.
INT_IDS = [0, 1, 7, 123_456_789, -5, 2**40, 42, 42]
STR_IDS = ["alice", "bob", "", "ünïcode", "alice", "42"]


def hash_rows(values: Any) -> tuple[np.ndarray, int]:
    return map_ids(values, TableSpec("t", 1000, 8), IdMapping("hash"), where="w", feature="f", spec_path="s")


def test_hash_is_deterministic_and_in_range() -> None:
    ints, n_oov = hash_rows(np.array(INT_IDS, np.int64))
    assert n_oov == 0
    assert ints.dtype == np.int64
    assert ((ints >= 0) & (ints < 1000)).all()
    assert ints[-1] == ints[-2]  # equal ids, equal rows
    np.testing.assert_array_equal(hash_rows(np.array(INT_IDS, np.int64))[0], ints)
    np.testing.assert_array_equal(hash_rows(pa.array(INT_IDS, pa.int64()))[0], ints)
    strs, n_oov = hash_rows(pa.array(STR_IDS))
    assert n_oov == 0
    assert strs.dtype == np.int64
    assert ((strs >= 0) & (strs < 1000)).all()
    assert strs[0] == strs[4]
    np.testing.assert_array_equal(hash_rows(np.array(STR_IDS, dtype=object))[0], strs)
    # It hashes rather than keeps ids: 0..499 land spread over the table, not on themselves.
    spread, _ = hash_rows(np.arange(500))
    assert len(set(spread.tolist())) > 300
    assert (spread != np.arange(500)).sum() > 450


def test_identity_clip_sends_out_of_range_to_last_row() -> None:
    ids = np.array([0, 5, 8, 9, 10, 1000, -1, 3], np.int64)
    rows_, n_oov = map_ids(
        ids, TableSpec("t", 10, 8), IdMapping("identity", "clip"), where="w", feature="f", spec_path="s"
    )
    assert rows_.tolist() == [0, 5, 8, 9, 9, 9, 9, 3]  # 9 is the reserved OOV row: ids 9, 10, 1000, -1
    assert n_oov == 4
    assert rows_.dtype == np.int64
    clean, n_oov = map_ids(
        pa.array([0, 8, 2], pa.int32()),
        TableSpec("t", 10, 8),
        IdMapping("identity", "clip"),
        where="w",
        feature="f",
        spec_path="s",
    )
    assert (clean.tolist(), n_oov) == ([0, 8, 2], 0)
    assert clean.dtype == np.int64


def test_identity_error_raises_naming_where_feature_spec() -> None:
    ok, n_oov = map_ids(
        np.array([0, 9]),
        TableSpec("items", 10, 8),
        IdMapping("identity", "error"),
        where="w",
        feature="f",
        spec_path="s",
    )
    assert (ok.tolist(), n_oov) == ([0, 9], 0)  # without clip every row is valid
    with pytest.raises(InputError) as info:
        map_ids(
            np.array([0, 9, 12, -3]),
            TableSpec("items", 10, 8),
            IdMapping("identity", "error"),
            where="data/part-0.parquet (row group 2)",
            feature="hist_A",
            spec_path="specs/s.yaml",
        )
    e = info.value
    assert e.where == "data/part-0.parquet (row group 2)"
    assert e.spec == "specs/s.yaml"
    assert "feature 'hist_A'" in e.what
    assert "2 id(s)" in e.what and "first: 12" in e.what
    assert "'items'" in e.what and "[0, 10)" in e.what
    assert "num_embeddings" in e.fix
    assert "data/part-0.parquet (row group 2)" in str(e) and "specs/s.yaml" in str(e)


@pytest.mark.parametrize("oov", ["clip", "error"])
def test_identity_on_string_ids_raises(oov: str) -> None:
    with pytest.raises(InputError) as info:
        map_ids(
            pa.array(["a", "b"]),
            TableSpec("t", 10, 8),
            IdMapping("identity", oov),  # type: ignore[arg-type]
            where="f.parquet",
            feature="user_id",
            spec_path="s.yaml",
        )
    e = info.value
    assert "feature 'user_id'" in e.what and "identity" in e.what
    assert (e.where, e.spec) == ("f.parquet", "s.yaml")
    assert "hash" in e.fix


# ---- the CLI -----------------------------------------------------------------------------------------------


def cli(*argv: str) -> int:
    return main(["features", "check", *argv])


def test_cli_clean_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "data" / "d.parquet", rows(6))
    assert cli(str(SYNTHETIC), "--data", str(tmp_path / "data")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "spec OK (3 tables, 6 features" in out
    assert "['hist_A', 'item@A', 'hist_B', 'item@B']" in out
    assert f"{tmp_path / 'data'}: OK (1 file(s), 6 rows)" in out


def test_cli_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good" / "d.parquet", rows(6))
    bad = write(tmp_path / "bad" / "d.parquet", rows(6, item_id=None, hist_A=pa.array(["x"] * 6)))
    assert cli(str(SYNTHETIC), "--data", str(good), "--data", str(bad.parent)) == 2
    out, err = capsys.readouterr()
    assert f"{good}: OK" in out
    assert f"{bad.parent}: 2 problem(s):" in err
    assert f"{bad}: [item] column 'item_id' is missing" in err
    assert f"{bad}: [hist_A] column 'hist_A' has type string, expected list<int64>" in err


def test_cli_clip_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "d.parquet", out_of_range_rows(), row_group_size=3)
    assert cli(str(SYNTHETIC), "--data", str(path)) == 2  # 3 of 8 ids: above max_oov_fraction
    out, err = capsys.readouterr()
    assert "note:" in out and "3 id(s) will go to the OOV row" in out
    assert "max_oov_fraction" in err


def test_cli_spec_with_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = copy.deepcopy(yaml.safe_load(SYNTHETIC.read_text()))
    raw["tables"][0]["pooling"] = "max"
    raw["features"][-1]["transform"] = "cube"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli(str(path), "--data", str(tmp_path / "unused")) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "2 problem(s) found" in err
    assert f"{path}: [user] unknown pooling 'max'" in err
    assert f"{path}: [hist_count_B] unknown transform 'cube'" in err


def test_cli_missing_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.yaml"
    assert cli(str(missing)) == 2
    _, err = capsys.readouterr()
    assert "crossrank: error:" in err and str(missing) in err and "not found" in err
