"""Spec mappings (issue 11, items 5 and 8): ``oov: clip`` held to ``mapping.max_oov_fraction`` (while reading
and at each epoch's end, counts printed), ``standardize`` statistics (required, or computed by ``features check
--fit``), and the ``vocab`` mapping (its file's checks, lookups, and the file ``--fit`` builds)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from crossrank.features.errors import InputError
from crossrank.features.fit import fit_spec, set_dense_stats
from crossrank.features.idmap import MIN_IDS_FOR_OOV_CHECK, check_oov_fraction, map_ids
from crossrank.features.spec import IdMapping, SpecError, builtin_spec_path, copy_spec, load_spec
from crossrank.features.vocab import Vocab
from crossrank.pipeline.cli import main
from crossrank.pipeline.core.distributed import DistContext, init_distributed
from crossrank.pipeline.reading.oov import epoch_oov_check
from crossrank.pipeline.reading.reader import ParquetBatchReader
from tests.conftest import launch

SYNTHETIC = builtin_spec_path("synthetic")
RAW = yaml.safe_load(SYNTHETIC.read_text())
ONE_PROCESS = DistContext(0, 1, 0, torch.device("cpu"), "gloo")


# ---- helpers -----------------------------------------------------------------------------------------------


def raw_spec() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def feature(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["features"] if f["name"] == name)


def write_spec(folder: Path, raw: dict[str, Any], name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(raw, sort_keys=False))
    return folder / name


def rows(n: int, **columns: Any) -> pa.Table:
    """``n`` rows of the synthetic spec's columns (one history event per domain); ``columns`` replace some."""
    cols: dict[str, Any] = {
        "row_id": pa.array(np.arange(n), pa.int64()),
        "user_id": pa.array(np.arange(n) % 50, pa.int64()),
        "item_id": pa.array(np.arange(n) % 1000, pa.int64()),
        "domain": pa.array(np.where(np.arange(n) % 2 == 0, "A", "B")),
        "label": pa.array(np.arange(n) % 2, pa.int8()),
        "hist_A": pa.array([[i % 1000] for i in range(n)], pa.list_(pa.int64())),
        "hist_count_A": pa.array(np.arange(n) % 7, pa.float32()),
        "hist_B": pa.array([[i % 997] for i in range(n)], pa.list_(pa.int64())),
        "hist_count_B": pa.array(np.ones(n), pa.float32()),
    }
    cols.update(columns)
    return pa.table(cols)


def write_data(path: Path, table: pa.Table, row_group_size: int = 5000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def read_all(spec_path: Path, data: Path) -> ParquetBatchReader:
    reader = ParquetBatchReader(load_spec(spec_path), data, batch_size=4096)
    for _ in reader.row_slices():
        pass
    return reader


def problems_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return "\n".join(map(str, info.value.problems))


# ---- oov: clip and max_oov_fraction ------------------------------------------------------------------------


def hist_a_with_oov(n: int, share: float) -> pa.Array:
    """hist_A of ``n`` rows, one event each; the first ``share`` of every 100 rows hold an id beyond item_A."""
    bad = (np.arange(n) % 100) < round(share * 100)
    return pa.array([[5000] if b else [i % 1000] for i, b in enumerate(bad)], pa.list_(pa.int64()))


def test_oov_fraction_above_the_limit_stops_reading_with_the_counts_and_fix(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.parquet", rows(20000, hist_A=hist_a_with_oov(20000, 0.05)))
    with pytest.raises(InputError) as info:
        read_all(SYNTHETIC, data)
    msg = str(info.value)
    # Judged once 10,000 ids were read (after the second row group of 5,000), not on the first bad row.
    assert MIN_IDS_FOR_OOV_CHECK == 10_000 and "(row group 1)" in msg
    assert "feature 'hist_A': 500 of 10,000 ids read so far (5.00%)" in msg
    assert "table 'item_A' (1,025 rows" in msg and "max_oov_fraction = 0.01 (1.00%)" in msg
    assert "Fix: raise num_embeddings of table 'item_A' (now 1,025)" in msg and "max_oov_fraction" in msg
    assert str(SYNTHETIC) in msg


def test_oov_fraction_below_the_limit_reads_and_counts(tmp_path: Path) -> None:
    # One out-of-table id in the very first row: a tiny share, never an error.
    hist = pa.array([[5000]] + [[i % 1000] for i in range(1, 12000)], pa.list_(pa.int64()))
    reader = read_all(SYNTHETIC, write_data(tmp_path / "d.parquet", rows(12000, hist_A=hist)))
    assert reader.stats.oov == {"hist_A": 1}
    assert reader.stats.ids["hist_A"] == 12000 and reader.stats.ids["item@A"] == 6000


def test_max_oov_fraction_raises_the_limit(tmp_path: Path) -> None:
    raw = raw_spec()
    feature(raw, "hist_A")["mapping"]["max_oov_fraction"] = 0.1
    for name in ("item", "hist_B"):  # features sharing a table may keep their own limit
        feature(raw, name)["mapping"]["max_oov_fraction"] = 0.02
    spec = write_spec(tmp_path, raw)
    data = write_data(tmp_path / "d.parquet", rows(20000, hist_A=hist_a_with_oov(20000, 0.05)))
    assert read_all(spec, data).stats.oov == {"hist_A": 1000}


def test_epoch_end_prints_counts_and_fails_above_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    spec = load_spec(SYNTHETIC)
    ids = {"hist_A": 400, "item@A": 200, "hist_B": 400, "item@B": 200}
    epoch_oov_check(spec, {"hist_A": 3}, ids, ONE_PROCESS, epoch=0, data="data.train")
    out = capsys.readouterr().out
    head = "epoch 0 OOV ids (oov: clip; 1 process, read so far): "
    assert head + "hist_A 3/400 = 0.75% (max 1.00%); item@A 0/200 = 0.00% (max 1.00%); hist_B 0/400" in out
    # Few ids, but the epoch is over: every count is judged.
    with pytest.raises(InputError) as info:
        epoch_oov_check(spec, {"item@B": 150}, ids, ONE_PROCESS, epoch=1, data="data.train")
    msg = str(info.value)
    assert "data.train (read so far up to the end of epoch 1, counted over 1 process)" in msg
    assert "feature 'item@B': 150 of 200 ids read so far (75.00%)" in msg and "table 'item_B'" in msg
    assert "feature 'item')" in msg  # the spec feature behind the candidate key


def _rank_of_two() -> str:
    """One rank of a 2-process epoch-end check: rank 1 read every OOV id (30 of the job's 2,000 hist_A ids),
    rank 0 none. Returns the rank's error message, or "ok"."""
    ctx = init_distributed()
    ids = {"hist_A": 1000, "item@A": 500, "hist_B": 1000, "item@B": 500}
    oov = {"hist_A": 30} if ctx.rank == 1 else {}
    try:
        epoch_oov_check(load_spec(SYNTHETIC), oov, ids, ctx, epoch=0, data="data.train", write=lambda _: None)
        return "ok"
    except InputError as e:
        return str(e)


def test_epoch_end_counts_are_summed_over_ranks(tmp_path: Path) -> None:
    # 1.5% of the job's ids: both ranks stop with the same error, though rank 0 saw none.
    got = launch(2, tmp_path, _rank_of_two)
    assert set(got) == {0, 1} and got[0] == got[1]
    assert "30 of 2,000 ids read so far (1.50%)" in got[0] and "counted over all 2 processes" in got[0]


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"type": "hash", "max_oov_fraction": 0.1}, "applies to `oov: clip` only"),
        ({"type": "identity", "oov": "error", "max_oov_fraction": 0.1}, "applies to `oov: clip` only"),
        ({"type": "identity", "oov": "clip", "max_oov_fraction": 1.5}, "number in [0, 1], got 1.5"),
        ({"type": "identity", "oov": "clip", "max_oov_fraction": "5%"}, "number in [0, 1], got '5%'"),
    ],
)
def test_bad_max_oov_fraction_is_a_spec_error(tmp_path: Path, mapping: dict[str, Any], fragment: str) -> None:
    raw = raw_spec()
    feature(raw, "user_id")["mapping"] = mapping
    text = problems_of(write_spec(tmp_path, raw))
    assert "[user_id]" in text and fragment in text and "Fix:" in text


def test_check_oov_fraction_waits_for_enough_ids() -> None:
    spec = load_spec(SYNTHETIC)
    check_oov_fraction(spec, {"hist_A": 500}, {"hist_A": 9999}, where="w")  # 5%, but too few ids yet
    with pytest.raises(InputError):
        check_oov_fraction(spec, {"hist_A": 500}, {"hist_A": 10000}, where="w")
    check_oov_fraction(spec, {"hist_A": 100}, {"hist_A": 10000}, where="w")  # exactly 1%: allowed


# ---- standardize -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [{}, {"mean": 1.0}, {"std": 2.0}])
def test_standardize_without_stats_is_a_spec_error(tmp_path: Path, given: dict[str, float]) -> None:
    raw = raw_spec()
    feature(raw, "hist_count_A").update(transform="standardize", **given)
    text = problems_of(write_spec(tmp_path, raw))
    assert "[hist_count_A] standardize needs `mean` and `std`" in text and "missing" in text
    assert "--fit" in text


def test_stats_on_another_transform_are_a_spec_error(tmp_path: Path) -> None:
    raw = raw_spec()
    feature(raw, "hist_count_A").update(mean=1.0, std=2.0)  # transform: log1p ignores them
    text = problems_of(write_spec(tmp_path, raw))
    assert "[hist_count_A] `mean` and `std` only apply to `transform: standardize`" in text


STANDARDIZED_SPEC = """\
# A spec with comments that --fit keeps.
name: fitted
label: label
row_id: row_id
domains:
  - {name: A, table: item_A}
  - {name: B, table: item_B}
tables:
  - {name: user, num_embeddings: 4096, embedding_dim: 32}
  - {name: item_A, num_embeddings: 1025, embedding_dim: 32}   # last row: OOV
  - {name: item_B, num_embeddings: 1025, embedding_dim: 32}
features:
  - {name: user_id, kind: id, column: user_id, table: user, mapping: {type: hash}}
  - {name: item, kind: candidate, column: item_id, domain_column: domain, mapping: {type: identity, oov: clip}}
  - {name: hist_A, kind: sequence, column: hist_A, domain: A, max_len: 10, mapping: {type: identity, oov: clip}}
  - {name: hist_B, kind: sequence, column: hist_B, domain: B, max_len: 10, mapping: {type: identity, oov: clip}}
  - {name: hist_count_A, kind: dense, column: hist_count_A, fill: -1.0, transform: standardize}  # fitted
  - name: hist_count_B      # block style, with stale statistics
    kind: dense
    column: hist_count_B
    transform: standardize
    mean: 99.0
    std: 3.0
"""


def standardize_data(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Training data over 4 row groups with nulls and NaN, and the values the reader standardizes."""
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 3.0, 8000).astype(np.float32)
    b = rng.normal(-4.0, 0.5, 8000).astype(np.float32)
    a_col = pa.array(a, mask=np.arange(8000) % 13 == 0)
    b[::17] = np.nan
    data = write_data(tmp_path / "train" / "d.parquet", rows(8000, hist_count_A=a_col, hist_count_B=b), 2000)
    a_seen = np.where(np.arange(8000) % 13 == 0, np.float32(-1.0), a)
    b_seen = np.where(np.isnan(b), np.float32(0.0), b)
    return data.parent, a_seen, b_seen


def test_fit_computes_mean_and_std_into_the_spec_keeping_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(STANDARDIZED_SPEC)
    assert main(["features", "check", str(spec)]) == 2  # without statistics the spec is an error
    assert "standardize needs `mean` and `std`; mean and std missing" in capsys.readouterr().err
    data, a, b = standardize_data(tmp_path)
    assert main(["features", "check", str(spec), "--data", str(data), "--fit"]) == 0
    out = capsys.readouterr().out
    assert f"{spec}: spec OK" in out and "fitted on 8,000 rows" in out
    fitted = {f.name: f for f in load_spec(spec).features}
    for name, values in (("hist_count_A", a), ("hist_count_B", b)):
        assert fitted[name].mean == pytest.approx(float(np.mean(values, dtype=np.float64)), rel=1e-9)
        assert fitted[name].std == pytest.approx(float(np.std(values, dtype=np.float64)), rel=1e-9)
    text = spec.read_text()
    assert "# A spec with comments that --fit keeps." in text and "# last row: OOV" in text
    assert "transform: standardize, mean: " in text and "}  # fitted" in text
    assert "mean: 99.0" not in text and "    mean: " in text  # block style: replaced in place


def test_fit_output_leaves_the_spec_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(STANDARDIZED_SPEC)
    data, _, _ = standardize_data(tmp_path)
    new = tmp_path / "out" / "fitted.yaml"
    assert main(["features", "check", str(spec), "--data", str(data), "--fit", "--fit-output", str(new)]) == 0
    assert spec.read_text() == STANDARDIZED_SPEC
    assert load_spec(new).dense_features[0].std > 0


def test_fit_on_a_constant_column_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(STANDARDIZED_SPEC)
    data = write_data(tmp_path / "train" / "d.parquet", rows(100))  # hist_count_B is all 1.0
    assert main(["features", "check", str(spec), "--data", str(data), "--fit"]) == 2
    err = capsys.readouterr().err
    assert "feature 'hist_count_B': column 'hist_count_B' is constant" in err and "transform: none" in err
    assert spec.read_text() == STANDARDIZED_SPEC


def test_fit_needs_one_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(STANDARDIZED_SPEC)
    assert main(["features", "check", str(spec), "--fit"]) == 2
    assert "--fit needs exactly one --data set" in capsys.readouterr().err


def test_stats_edit_in_block_style_and_features_it_does_not_find() -> None:
    text = "features:\n  - name: x\n    transform: standardize\n"
    out = set_dense_stats(text, {"x": (1.5, 0.25)}, "s.yaml")
    assert yaml.safe_load(out)["features"][0] == {
        "name": "x",
        "transform": "standardize",
        "mean": 1.5,
        "std": 0.25,
    }
    weird = "features:\n  - name:\n      nested: x\n"  # a name that is not a scalar: not touched
    assert set_dense_stats(weird, {"x": (1.0, 1.0)}, "s.yaml") == weird


# ---- vocab -------------------------------------------------------------------------------------------------


def vocab_spec(
    folder: Path,
    lines: str | None,
    *,
    rows_: int = 8,
    oov: str = "clip",
    file: str = "genres.txt",
    max_oov: float | None = None,
) -> Path:
    """The synthetic spec plus an id_list feature ``genres`` mapped by vocabulary into its own table."""
    raw = raw_spec()
    raw["tables"].append({"name": "genre", "num_embeddings": rows_, "embedding_dim": 32})
    mapping: dict[str, Any] = {"type": "vocab", "file": file, "oov": oov}
    if max_oov is not None:
        mapping["max_oov_fraction"] = max_oov
    raw["features"].append(
        {"name": "genres", "kind": "id_list", "column": "genres", "table": "genre", "mapping": mapping}
    )
    if lines is not None:
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(lines)
    return write_spec(folder, raw)


def test_vocab_maps_lines_to_rows_and_unknown_to_the_oov_row(tmp_path: Path) -> None:
    spec = load_spec(vocab_spec(tmp_path, "Drama\nComedy\nAction\n"))
    f = next(f for f in spec.features if f.name == "genres")
    assert f.mapping == IdMapping("vocab", "clip", file="genres.txt")
    got, n_oov = map_ids(
        pa.array(["Action", "Drama", "Western", "Comedy", "drama"]),
        spec.table("genre"),
        f.mapping,
        where="w",
        feature="genres",
        spec_path=spec.path,
    )
    assert got.tolist() == [2, 0, 7, 1, 7] and n_oov == 2  # row 7: the last of 8, the OOV row
    objects = np.array(["Comedy", "Noir"], dtype=object)  # as the reader hands string ids over
    got, _ = map_ids(objects, spec.table("genre"), f.mapping, where="w", feature="genres", spec_path="s")
    assert got.tolist() == [1, 7]
    by_text = Vocab("v", pa.array(["10", "3"])).lookup(np.array([3, 10, 4]))  # integers: their decimal text
    assert by_text.tolist() == [1, 0, -1]
    empty, n_oov = map_ids(
        np.array([], dtype=object), spec.table("genre"), f.mapping, where="w", feature="g", spec_path="s"
    )
    assert empty.tolist() == [] and n_oov == 0  # e.g. a candidate domain without rows in a row group


def test_vocab_in_the_reader(tmp_path: Path) -> None:
    spec = vocab_spec(tmp_path, "Drama\nComedy\n")
    genres = pa.array([["Comedy", "Drama"], [], ["Horror"], ["Drama"]], pa.list_(pa.string()))
    reader = ParquetBatchReader(
        load_spec(spec), write_data(tmp_path / "d.parquet", rows(4, genres=genres)), 4
    )
    batch = next(iter(reader.batches()))
    assert batch.pooled["genres"].lengths().tolist() == [2, 0, 1, 1]
    assert batch.pooled["genres"].values().tolist() == [1, 0, 7, 0]
    assert reader.stats.oov["genres"] == 1 and reader.stats.ids["genres"] == 4


def test_vocab_oov_error_names_the_value_and_file(tmp_path: Path) -> None:
    spec = load_spec(vocab_spec(tmp_path, "Drama\n", oov="error"))
    with pytest.raises(InputError) as info:
        map_ids(
            pa.array(["Drama", "Noir"]),
            spec.table("genre"),
            spec.features[-1].mapping,
            where="w",
            feature="genres",
            spec_path="s",
        )
    for fragment in ("1 value(s) not in vocabulary", "genres.txt", "first unknown: 'Noir'", "oov: clip"):
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("lines", "file", "fragments"),
    [
        (None, "genres.txt", ("genres.txt does not exist", "--fit")),
        ("", "genres.txt", ("genres.txt is empty", "--fit")),
        ("Drama\n\nComedy\n", "genres.txt", ("1 blank line(s) (line 2 first)",)),
        ("Drama\nComedy\nDrama\n", "genres.txt", ("repeats 1 value(s) (e.g. 'Drama' on lines 1 and 3)",)),
        (
            "".join(f"g{i}\n" for i in range(8)),
            "genres.txt",
            ("holds 8 values but table 'genre' has 8 rows", "at least 9"),
        ),
        ("Drama\n", "../genres.txt", ("must be a relative path inside the spec's folder",)),
    ],
)
def test_bad_vocab_file_is_a_spec_error(
    tmp_path: Path, lines: str | None, file: str, fragments: tuple[str, ...]
) -> None:
    folder = tmp_path / "spec"
    folder.mkdir()
    text = problems_of(vocab_spec(folder, lines, file=file))
    assert "[genres]" in text and "Fix:" in text
    for fragment in fragments:
        assert fragment in text


def test_vocab_mapping_keys(tmp_path: Path) -> None:
    raw = raw_spec()
    feature(raw, "user_id")["mapping"] = {"type": "vocab"}
    assert "a vocab mapping needs `file:`" in problems_of(write_spec(tmp_path, raw))
    feature(raw, "user_id")["mapping"] = {"type": "hash", "file": "x.txt"}
    assert "`file:` applies to `type: vocab` only" in problems_of(write_spec(tmp_path, raw))


def test_a_spec_copy_carries_its_vocabulary(tmp_path: Path) -> None:
    spec = load_spec(vocab_spec(tmp_path / "src", "Drama\nComedy\n", file="vocab/genres.txt"))
    assert spec.vocab_files == ["vocab/genres.txt"]
    copied = load_spec(copy_spec(spec.path, tmp_path / "ckpt"))
    vocab = copied.features[-1].mapping.vocab
    assert vocab is not None and vocab.values.to_pylist() == ["Drama", "Comedy"]


def genre_rows(n: int) -> pa.Array:
    """Genre lists whose frequencies are known: Drama > Comedy = Action > Horror > ... (and one empty value)."""
    pool = ["Drama"] * 5 + ["Comedy"] * 3 + ["Action"] * 3 + ["Horror"] * 2 + ["Noir", "Western", ""]
    return pa.array(
        [[pool[(i * 7 + k) % len(pool)] for k in range(i % 3)] for i in range(n)], pa.list_(pa.string())
    )


def test_fit_builds_the_vocabulary_most_frequent_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Room for 4 values (the last row is the OOV row); the 2 rarest values and "" (no line can hold it) go
    # to the OOV row, which this spec allows up to 30% of the occurrences.
    spec = vocab_spec(tmp_path, None, rows_=5, max_oov=0.3)
    genres = genre_rows(3000)
    data = write_data(tmp_path / "train" / "d.parquet", rows(3000, genres=genres), 1000)
    assert main(["features", "check", str(spec), "--data", str(data), "--fit"]) == 0
    out = capsys.readouterr().out
    flat = pc.list_flatten(genres).to_pylist()
    ranked = sorted((v for v in set(flat) if v), key=lambda v: (-flat.count(v), v))
    assert (tmp_path / "genres.txt").read_text() == "".join(f"{v}\n" for v in ranked[:4])
    oov_share = 1 - sum(flat.count(v) for v in ranked[:4]) / len(flat)
    assert f"kept the 4 most frequent of 6 values; {oov_share:.2%} of the occurrences go to the OOV" in out
    assert "1 value(s) that a line cannot hold" in out
    vocab = load_spec(spec).features[-1].mapping.vocab
    assert vocab is not None and len(vocab) == 4


def test_fit_refuses_a_truncated_vocabulary_under_oov_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = vocab_spec(tmp_path, None, rows_=5, oov="error")
    data = write_data(tmp_path / "train" / "d.parquet", rows(300, genres=genre_rows(300)))
    assert main(["features", "check", str(spec), "--data", str(data), "--fit"]) == 2
    err = capsys.readouterr().err
    assert "6 distinct values but its tables hold at most 4" in err
    assert "raise num_embeddings to at least 7" in err and not (tmp_path / "genres.txt").exists()


def test_fit_refuses_a_vocabulary_that_leaves_too_much_to_the_oov_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = vocab_spec(tmp_path, None, rows_=5)  # default max_oov_fraction 0.01
    genres = genre_rows(3000)
    data = write_data(tmp_path / "train" / "d.parquet", rows(3000, genres=genres), 1000)
    assert main(["features", "check", str(spec), "--data", str(data), "--fit"]) == 2
    err = capsys.readouterr().err
    flat = pc.list_flatten(genres).to_pylist()
    kept = sum(sorted((flat.count(v) for v in set(flat) if v), reverse=True)[:4])
    assert f"leave {1 - kept / len(flat):.2%} of the training data's {len(flat):,} occurrences" in err
    assert "more than max_oov_fraction 0.01" in err and "values a line cannot hold" in err
    assert not (tmp_path / "genres.txt").exists()


def test_fit_with_nothing_to_fit(tmp_path: Path) -> None:
    data = write_data(tmp_path / "d.parquet", rows(10))
    result = fit_spec(load_spec(SYNTHETIC), data)
    assert result.stats == {} and result.vocabs == {} and "nothing to fit" in result.notes[0]
