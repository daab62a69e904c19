"""The Parquet reader: KJT layout, truncation, id mapping, rank shares, padding, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crossrank.features.errors import InputError
from crossrank.features.spec import SpecError, load_spec
from crossrank.pipeline.reading.reader import ParquetBatchReader, assign_units, discover_units, keep_last

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"


def rows_table(n: int = 4, **overrides: object) -> pa.Table:
    """A small table matching the synthetic spec; ``overrides`` replace columns (None drops one)."""
    cols: dict[str, object] = {
        "row_id": pa.array(np.arange(100, 100 + n), pa.int64()),
        "user_id": pa.array(np.arange(n) % 3, pa.int64()),
        "item_id": pa.array([5, 6, 7, 8][:n] + list(range(9, 5 + n)), pa.int64()),
        "domain": pa.array((["A", "B"] * n)[:n]),
        "label": pa.array([1, 0] * (n // 2) + [1] * (n % 2), pa.int8()),
        "timestamp": pa.array(np.arange(n), pa.int64()),
        "hist_A": pa.array([list(range(1, 1 + (i % 3))) for i in range(n)], pa.list_(pa.int64())),
        "hist_count_A": pa.array([float(i % 3) for i in range(n)], pa.float32()),
        "hist_B": pa.array([[10 + i] for i in range(n)], pa.list_(pa.int64())),
        "hist_count_B": pa.array([1.0] * n, pa.float32()),
    }
    for k, v in overrides.items():
        if v is None:
            cols.pop(k)
        else:
            cols[k] = v
    return pa.table(cols)


def write(path: Path, table: pa.Table, row_group_size: int = 1000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def spec_with(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(SPEC.read_text())
    mutate(raw)
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def one_batch(spec_path: Path, data: Path, batch_size: int = 4):  # type: ignore[no-untyped-def]
    reader = ParquetBatchReader(load_spec(spec_path), data, batch_size)
    return next(iter(reader.batches())), reader


def test_kjt_is_key_major_with_candidate_slots(tmp_path: Path) -> None:
    batch, _ = one_batch(SPEC, write(tmp_path / "d.parquet", rows_table()))
    kjt = batch.sequences
    assert kjt.keys() == ["hist_A", "item@A", "hist_B", "item@B"]
    # key-major: all rows of hist_A, then all rows of item@A, ...
    assert kjt.lengths().tolist() == [0, 1, 2, 0] + [1, 0, 1, 0] + [1, 1, 1, 1] + [0, 1, 0, 1]  # noqa: RUF005
    assert kjt.stride() == 4
    assert kjt["hist_A"].values().tolist() == [1, 1, 2]
    assert kjt["item@A"].values().tolist() == [5, 7]  # rows 0 and 2 are domain A
    assert kjt["item@B"].values().tolist() == [6, 8]
    assert batch.pooled.keys() == ["user_id"]
    assert batch.pooled.lengths().tolist() == [1, 1, 1, 1]
    assert batch.labels.tolist() == [1, 0, 1, 0]
    assert batch.domains.tolist() == [0, 1, 0, 1]
    assert batch.row_ids.tolist() == [100, 101, 102, 103]
    np.testing.assert_allclose(batch.dense[:, 0].numpy(), np.log1p([0, 1, 2, 0]), rtol=1e-6)


def test_truncation_keeps_most_recent(tmp_path: Path) -> None:
    hist = pa.array([list(range(1, 11)), [], [3], list(range(20, 26))], pa.list_(pa.int64()))
    spec = spec_with(tmp_path, lambda r: r["features"][2].update(max_len=3))
    batch, _ = one_batch(spec, write(tmp_path / "d.parquet", rows_table(hist_A=hist)))
    jt = batch.sequences["hist_A"]
    assert jt.lengths().tolist() == [3, 0, 1, 3]
    assert jt.values().tolist() == [8, 9, 10, 3, 23, 24, 25]


def test_keep_last_matches_python_reference() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 12, 50)
    values = rng.integers(0, 1000, lengths.sum())
    new_len, new_val = keep_last(lengths, values, 5)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    expected = [v for i in range(50) for v in values[offsets[i] : offsets[i + 1]][-5:]]
    assert new_len.tolist() == np.minimum(lengths, 5).tolist()
    assert new_val.tolist() == expected


def test_hash_mapping_is_stable_and_in_range(tmp_path: Path) -> None:
    users = pa.array([10**12, 7, 10**12, -3], pa.int64())
    data = write(tmp_path / "d.parquet", rows_table(user_id=users))
    a, _ = one_batch(SPEC, data)
    b, _ = one_batch(SPEC, data)
    ids = a.pooled["user_id"].values()
    assert ids.tolist() == b.pooled["user_id"].values().tolist()
    assert ids[0] == ids[2] and ids[0] != ids[1]
    assert int(ids.min()) >= 0 and int(ids.max()) < 4096


def test_string_ids_hash(tmp_path: Path) -> None:
    spec = spec_with(tmp_path, lambda r: None)
    data = write(tmp_path / "d.parquet", rows_table(user_id=pa.array(["u1", "u2", "u1", "u3"])))
    batch, _ = one_batch(spec, data)
    ids = batch.pooled["user_id"].values().tolist()
    assert ids[0] == ids[2] and len(set(ids)) == 3


def test_oov_clip_goes_to_reserved_row_and_is_counted(tmp_path: Path) -> None:
    hist = pa.array([[1, 5000], [], [-1], [1023]], pa.list_(pa.int64()))
    batch, reader = one_batch(SPEC, write(tmp_path / "d.parquet", rows_table(hist_A=hist)))
    # num_embeddings 1025: valid ids 0..1023, row 1024 is the OOV row
    assert batch.sequences["hist_A"].values().tolist() == [1, 1024, 1024, 1023]
    assert reader.stats.oov == {"hist_A": 2}


def test_oov_error_names_file_row_group_feature_and_spec(tmp_path: Path) -> None:
    def to_error(raw: dict) -> None:  # candidate and both histories share the item tables' mapping
        for f in raw["features"][1:4]:
            f["mapping"]["oov"] = "error"

    spec = spec_with(tmp_path, to_error)
    data = write(tmp_path / "d.parquet", rows_table(item_id=pa.array([5, 6, 99999, 8], pa.int64())))
    with pytest.raises(InputError) as e:
        one_batch(spec, data)
    msg = str(e.value)
    assert "d.parquet" in msg and "row group 0" in msg and "item@A" in msg and "99999" in msg
    assert str(spec) in msg and "Fix:" in msg


def test_unknown_domain_is_an_error(tmp_path: Path) -> None:
    data = write(tmp_path / "d.parquet", rows_table(domain=pa.array(["A", "B", "C", "A"])))
    with pytest.raises(InputError, match=r"\['C'\].*not declared"):
        one_batch(SPEC, data)


def test_dense_nan_is_filled_and_counted(tmp_path: Path) -> None:
    dense = pa.array([1.0, None, float("nan"), 3.0], pa.float32())
    spec = spec_with(tmp_path, lambda r: r["features"][4].update(fill=7.0))
    batch, reader = one_batch(spec, write(tmp_path / "d.parquet", rows_table(hist_count_A=dense)))
    np.testing.assert_allclose(batch.dense[:, 0].numpy(), np.log1p([1.0, 7.0, 7.0, 3.0]), rtol=1e-6)
    assert reader.stats.dense_filled == {"hist_count_A": 2}


def test_null_label_and_non_binary_label_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="label column 'label' has 1 null"):
        one_batch(SPEC, write(tmp_path / "a.parquet", rows_table(label=pa.array([1, None, 0, 1], pa.int8()))))
    with pytest.raises(InputError, match="other than 0/1"):
        one_batch(SPEC, write(tmp_path / "b.parquet", rows_table(label=pa.array([1, 5, 0, 1], pa.int8()))))


def test_padding_rows_have_zero_weight_and_batches_pad_to_agreed_count(tmp_path: Path) -> None:
    reader = ParquetBatchReader(load_spec(SPEC), write(tmp_path / "d.parquet", rows_table(n=6)), 4)
    assert reader.num_batches == 2
    batches = list(reader.batches(num_batches=4))
    assert len(batches) == 4
    assert [b.weights.sum().item() for b in batches] == [4, 2, 0, 0]
    assert all(b.batch_size == 4 and b.sequences.stride() == 4 for b in batches)
    assert batches[1].row_ids.tolist() == [104, 105, -1, -1]
    assert batches[3].sequences.values().numel() == 0


def test_rank_shares_cover_every_row_once(small_synthetic: Path) -> None:
    spec = load_spec(SPEC)
    train = small_synthetic / "train"
    total = sum(u.num_rows for u in discover_units(spec, train))
    for world in (1, 2, 3):
        seen = []
        for rank in range(world):
            reader = ParquetBatchReader(spec, train, 256, rank=rank, world_size=world, shuffle=True, seed=1)
            for b in reader.batches():
                seen.append(b.row_ids[b.weights > 0].numpy())
        ids = np.concatenate(seen)
        assert len(ids) == total and len(np.unique(ids)) == total


def test_shuffle_differs_per_epoch_and_repeats_per_seed(small_synthetic: Path) -> None:
    spec = load_spec(SPEC)

    def order(epoch: int, seed: int) -> list[int]:
        reader = ParquetBatchReader(spec, small_synthetic / "train", 512, shuffle=True, seed=seed)
        return next(iter(reader.batches(epoch=epoch))).row_ids.tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(1, 1)
    assert order(0, 1) != order(0, 2)


def test_shuffle_buffer_mixes_the_whole_share_when_it_fits(small_synthetic: Path) -> None:
    """A buffer that holds the share: the first batch draws rows from (nearly) every unit; a 0 MB buffer
    mixes within one unit at a time; a negative size is a clear error."""
    spec = load_spec(SPEC)
    train = small_synthetic / "train"
    units = discover_units(spec, train)
    unit_of = {}  # row id -> unit index
    for i, unit in enumerate(units):
        rows = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=[spec.row_id])
        unit_of.update({int(r): i for r in rows.column(0).to_pylist()})

    def units_in_first_batch(buffer_mb: float) -> int:
        reader = ParquetBatchReader(spec, train, 256, shuffle=True, seed=0, shuffle_buffer_mb=buffer_mb)
        return len({unit_of[int(r)] for r in next(iter(reader.batches())).row_ids})

    assert len(units) >= 4
    assert units_in_first_batch(1024) >= len(units) - 1
    assert units_in_first_batch(0) == 1
    with pytest.raises(InputError, match="shuffle_buffer_mb must be >= 0"):
        ParquetBatchReader(spec, train, 256, shuffle=True, shuffle_buffer_mb=-1)


def test_assign_units_balances_rows() -> None:
    from crossrank.pipeline.reading.reader import Unit

    units = [Unit(Path("f"), i, n) for i, n in enumerate([100, 90, 50, 40, 10])]
    shares = assign_units(units, 2)
    assert sorted(sum(u.num_rows for u in s) for s in shares) == [140, 150]
    assert sorted(u.row_group for s in shares for u in s) == [0, 1, 2, 3, 4]


# ---- bad input: one paragraph naming file, column/feature and fix ------------------------------------------


def test_missing_column_names_file_column_and_feature(tmp_path: Path) -> None:
    data = write(tmp_path / "d.parquet", rows_table(hist_B=None))
    with pytest.raises(SpecError) as e:
        ParquetBatchReader(load_spec(SPEC), data, 4)
    msg = str(e.value)
    assert "d.parquet" in msg and "'hist_B' is missing" in msg and "[hist_B]" in msg and "Fix:" in msg


def test_wrong_dtype_names_column_and_expected_type(tmp_path: Path) -> None:
    data = write(tmp_path / "d.parquet", rows_table(hist_A=pa.array(["1 2", "", "3", "4"])))
    with pytest.raises(SpecError) as e:
        ParquetBatchReader(load_spec(SPEC), data, 4)
    assert "column 'hist_A' has type string, expected list<int64>" in str(e.value)


def test_empty_parquet_file(tmp_path: Path) -> None:
    data = write(tmp_path / "d.parquet", rows_table().slice(0, 0))
    with pytest.raises(InputError, match=r"d\.parquet: the Parquet file has no rows"):
        ParquetBatchReader(load_spec(SPEC), data, 4)


def test_nonexistent_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope: no such file or folder.*Fix:"):
        ParquetBatchReader(load_spec(SPEC), tmp_path / "nope", 4)


def test_corrupt_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"definitely not parquet" * 10)
    with pytest.raises(InputError, match=r"x\.parquet: not a readable Parquet file"):
        ParquetBatchReader(load_spec(SPEC), tmp_path, 4)
