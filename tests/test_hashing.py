"""The ``hash`` id mapping is crossrank's own: golden values (in this process and a fresh one), published
FNV-1a / splitmix64 answers, a plain-Python reference on random ids, and the collision statistics that
``crossrank features check`` prints for hash-mapped features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from crossrank.features import check as check_mod
from crossrank.features import hashing
from crossrank.features.check import IdCounts, collect_ids, format_hash_stats, hash_stats
from crossrank.features.errors import InputError
from crossrank.features.hashing import (
    FNV_OFFSET,
    FNV_PRIME,
    MASK64,
    SEED,
    finalise,
    hash_ids,
    hash_reference,
    hash_rows,
)
from crossrank.features.idmap import map_ids
from crossrank.features.spec import IdMapping, SpecError, TableSpec, builtin_spec_path, load_spec
from crossrank.pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = builtin_spec_path("synthetic")
TABLE = 1000  # num_embeddings of the golden rows

# Golden values: id -> (h, h mod 1000). They are the data contract: if one changes, every hashed id of every
# trained model lands on another row. Never update them to make a test pass.
INT_GOLDEN: dict[int, tuple[int, int]] = {
    0: (10361799201384614346, 346),
    1: (16382748159252053925, 925),
    7: (12431408447087321260, 260),
    42: (4468088137740759902, 902),
    -1: (10180351814871335549, 549),
    -5: (14110253995708347248, 248),
    2**31 - 1: (7552190438264607069, 69),
    -(2**31): (5243410905143577086, 86),
    2**40: (13569847110678743633, 633),
    2**63 - 1: (10447900381779436091, 91),
    -(2**63): (1716891083982809418, 418),
    123456789: (18430581826989539497, 497),
}
STR_GOLDEN: dict[str, tuple[int, int]] = {
    "": (5461926412425471661, 661),
    "a": (16852796561158352750, 750),
    "alice": (10317629037589924782, 782),
    "bob": (17714485084321371531, 531),
    "42": (11637683229266063817, 817),
    "ünïcode": (11505233104760374585, 585),
    "東京": (13725572403869917948, 948),
    "😀": (15151114894741003518, 518),
    "user-000123": (17655600365020066184, 184),
}


def rows_of(values: Any) -> list[int]:
    rows, n_oov = map_ids(
        values, TableSpec("t", TABLE, 8), IdMapping("hash"), where="w", feature="f", spec_path="s"
    )
    assert n_oov == 0 and rows.dtype == np.int64
    return rows.tolist()


# ---- the algorithm -----------------------------------------------------------------------------------------


def test_published_fnv1a_and_splitmix64_answers() -> None:
    def fnv1a(data: bytes) -> int:
        x = FNV_OFFSET
        for byte in data:
            x = ((x ^ byte) * FNV_PRIME) & MASK64
        return x

    # FNV-1a 64 test vectors (Fowler/Noll/Vo) and splitmix64's first output for seed 0 (Vigna).
    assert fnv1a(b"") == 0xCBF29CE484222325
    assert fnv1a(b"a") == 0xAF63DC4C8601EC8C
    assert fnv1a(b"foobar") == 0x85944171F73967E8
    assert int(finalise(np.array([SEED], np.uint64))[0]) == 0xE220A8397B1DCDAF
    assert hash_reference(SEED) == 0xE220A8397B1DCDAF
    assert hash_reference("foobar") == int(finalise(np.array([0x85944171F73967E8], np.uint64))[0])


def test_golden_values_in_this_process() -> None:
    ints, strs = list(INT_GOLDEN), list(STR_GOLDEN)
    assert hash_ids(np.array(ints, np.int64)).tolist() == [h for h, _ in INT_GOLDEN.values()]
    assert rows_of(np.array(ints, np.int64)) == [r for _, r in INT_GOLDEN.values()]
    assert hash_ids(pa.array(strs)).tolist() == [h for h, _ in STR_GOLDEN.values()]
    assert rows_of(pa.array(strs)) == [r for _, r in STR_GOLDEN.values()]
    assert [hash_reference(i) for i in ints] == [h for h, _ in INT_GOLDEN.values()]
    assert [hash_reference(s) for s in strs] == [h for h, _ in STR_GOLDEN.values()]


GOLDEN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pyarrow as pa
    from crossrank.features.hashing import hash_ids
    from crossrank.features.idmap import map_ids
    from crossrank.features.spec import IdMapping, TableSpec
    assert "torchrec" not in sys.modules and "pandas" not in sys.modules, "the hash needs neither"
    ints, strs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    t, m = TableSpec("t", 1000, 8), IdMapping("hash")
    out = {}
    for name, values in [("ints", np.array(ints, np.int64)), ("strs", pa.array(strs)),
                         ("objs", np.array(strs, dtype=object))]:
        rows, _ = map_ids(values, t, m, where="w", feature="f", spec_path="s")
        out[name] = [[int(h) for h in hash_ids(values)], rows.tolist()]
    print(json.dumps(out))
    """
)


def test_golden_values_in_a_fresh_process() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's own str hash would change with this
    out = subprocess.run(
        [sys.executable, "-c", GOLDEN_SCRIPT, json.dumps(list(INT_GOLDEN)), json.dumps(list(STR_GOLDEN))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ints"] == [[h for h, _ in INT_GOLDEN.values()], [r for _, r in INT_GOLDEN.values()]]
    want_strs = [[h for h, _ in STR_GOLDEN.values()], [r for _, r in STR_GOLDEN.values()]]
    assert got["strs"] == want_strs
    assert got["objs"] == want_strs


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32])
def test_every_int_width_hashes_like_int64(dtype: Any) -> None:
    ids = [i for i in INT_GOLDEN if np.iinfo(dtype).min <= i <= np.iinfo(dtype).max]
    want = [INT_GOLDEN[i][0] for i in ids]
    assert hash_ids(np.array(ids, dtype)).tolist() == want
    assert hash_ids(pa.array(ids, pa.from_numpy_dtype(dtype))).tolist() == want
    assert rows_of(pa.array(ids, pa.from_numpy_dtype(dtype))) == [INT_GOLDEN[i][1] for i in ids]


def test_uint64_keeps_its_bit_pattern() -> None:
    # 2**64 - 1 is -1 in two's complement; values above 2**63 hash as their int64 bit pattern.
    big = np.array([2**64 - 1, 2**63 + 5, 7], np.uint64)
    want = [INT_GOLDEN[-1][0], hash_reference(2**63 + 5), INT_GOLDEN[7][0]]
    assert hash_ids(big).tolist() == want
    assert hash_ids(pa.array(big)).tolist() == want
    assert hash_reference(2**63 + 5) == hash_reference(2**63 + 5 - 2**64)


def test_string_layouts_hash_alike() -> None:
    strs = list(STR_GOLDEN)
    want = [h for h, _ in STR_GOLDEN.values()]
    assert hash_ids(pa.array(strs, pa.large_string())).tolist() == want
    assert hash_ids(pa.array(strs).dictionary_encode()).tolist() == want
    assert hash_ids(pa.chunked_array([strs[:3], strs[3:]])).tolist() == want
    assert hash_ids(np.array(strs, dtype=object)).tolist() == want
    assert hash_ids(np.array(strs)).tolist() == want  # numpy unicode dtype
    assert hash_ids(pa.array(strs)[2:6]).tolist() == want[2:6]  # a slice (non-zero offset)
    assert hash_ids(pa.array([s.encode() for s in strs], pa.binary())).tolist() == want
    assert hash_ids(pa.array([], pa.string())).tolist() == []


@pytest.mark.parametrize("block", [1 << 15, 7])  # rows per block of the string loop: one block, and many
def test_vectorised_matches_the_reference_on_random_ids(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "_BLOCK", block)
    rng = np.random.default_rng(9)
    ints = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64, endpoint=True), [-(2**63), 2**63 - 1, 0, -1]]
    )
    assert hash_ids(ints).tolist() == [hash_reference(int(i)) for i in ints]
    alphabet = list("abcXYZ019 -_/é中😀\u0301")
    strs = ["".join(rng.choice(alphabet, size=int(n))) for n in rng.integers(0, 40, 2000)]
    strs += ["x" * 300, ""]  # one long string: many byte positions with a single active row
    want = [hash_reference(s) for s in strs]
    assert hash_ids(pa.array(strs)).tolist() == want
    assert hash_ids(pa.array(strs, pa.large_string())[1:]).tolist() == want[1:]
    n = 97
    assert hash_rows(pa.array(strs), n).tolist() == [h % n for h in want]


def test_hash_spreads_ids_over_the_table() -> None:
    rows = np.array(rows_of(np.arange(5000)))
    assert (rows != np.arange(5000) % TABLE).sum() > 4900  # hashed, not kept
    # 5000 ids on 1000 rows: counts close to uniform (chi-square, 999 degrees of freedom: mean 999, sd 45).
    counts = np.bincount(rows, minlength=TABLE)
    assert float(((counts - 5.0) ** 2 / 5.0).sum()) < 1200


def test_non_id_values_are_an_input_error_naming_the_feature() -> None:
    with pytest.raises(InputError) as err:
        map_ids(
            np.array([1.5, 2.0]),
            TableSpec("t", 10, 8),
            IdMapping("hash"),
            where="f.parquet",
            feature="price",
            spec_path="s.yaml",
        )
    msg = str(err.value)
    assert "feature 'price'" in msg and "float64" in msg and "f.parquet" in msg and "Fix:" in msg


# ---- managed collision mappings are refused with the alternative --------------------------------------------


@pytest.mark.parametrize("mapping", [{"type": "zch"}, {"type": "mch"}, "MCH"])
def test_managed_collision_mapping_is_a_spec_error(tmp_path: Path, mapping: Any) -> None:
    raw = yaml.safe_load(SYNTHETIC.read_text())
    raw["features"][0]["mapping"] = mapping
    path = tmp_path / "zch.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    msg = str(err.value)
    assert "user_id" in msg and "managed collision" in msg and "not supported" in msg
    assert "row-wise" in msg and "CPU" in msg
    assert "`mapping: {type: hash}`" in msg and "crossrank features check" in msg and "collision rate" in msg


# ---- collision statistics ------------------------------------------------------------------------------------


def data_rows(users: list[Any], items: list[Any] | None = None, domains: list[str] | None = None) -> pa.Table:
    """Rows of the synthetic data contract with the given user ids (and candidate ids / domains)."""
    n = len(users)
    return pa.table(
        {
            "row_id": pa.array(range(n), pa.int64()),
            "user_id": pa.array(users),
            "item_id": pa.array(items if items is not None else [i % 1000 for i in range(n)]),
            "domain": pa.array(domains or ["A" if i % 2 else "B" for i in range(n)]),
            "label": pa.array([i % 2 for i in range(n)], pa.int8()),
            "hist_A": pa.array([[i % 7] for i in range(n)], pa.list_(pa.int64())),
            "hist_count_A": pa.array([1.0] * n, pa.float32()),
            "hist_B": pa.array([[] for _ in range(n)], pa.list_(pa.int64())),
            "hist_count_B": pa.array([0.0] * n, pa.float32()),
        }
    )


def write(path: Path, table: pa.Table, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def brute_force(ids: list[Any], num_embeddings: int) -> tuple[int, int, int]:
    """(distinct ids, rows used, colliding ids) by plain Python."""
    distinct = set(ids)
    by_row: dict[int, int] = {}
    for i in distinct:
        r = hash_reference(i) % num_embeddings
        by_row[r] = by_row.get(r, 0) + 1
    return len(distinct), len(by_row), sum(c for c in by_row.values() if c > 1)


def test_id_counts_merge_row_groups_in_bounded_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_mod, "_MERGE_AT", 50)  # force many merges
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 400, 120) for _ in range(30)]
    acc = IdCounts()
    for b in batches:
        acc.add(hash_ids(b))
        assert acc._pending_size < max(50, len(acc.hashes)) + 120
    acc.merged()
    everything = np.concatenate(batches)
    u, c = np.unique(hash_ids(everything), return_counts=True)
    np.testing.assert_array_equal(acc.hashes, u)
    np.testing.assert_array_equal(acc.counts, c)


def test_stats_match_brute_force_over_files_and_row_groups(tmp_path: Path) -> None:
    spec = load_spec(SYNTHETIC)  # user_id: hash into 4096 rows
    rng = np.random.default_rng(2)
    users = [*rng.integers(-(10**12), 10**12, 3000).tolist(), 5, 5, 5]
    write(tmp_path / "d" / "a.parquet", data_rows(users[:1500]), row_group_size=400)
    write(tmp_path / "d" / "b.parquet", data_rows(users[1500:]), row_group_size=700)
    (s,) = hash_stats(spec, collect_ids(spec, tmp_path / "d"))
    assert (s.key, s.table, s.num_embeddings) == ("user_id", "user", 4096)
    assert (s.ids, s.rows, s.colliding) == brute_force(users, 4096)
    assert s.occurrences == len(users) and s.unseen_ids is None
    assert s.collision_rate == s.colliding / s.ids
    assert abs(s.collision_rate - s.expected_rate) < 0.05  # a uniform hash collides like a random map


def test_unseen_ids_and_occurrences_against_a_reference(tmp_path: Path) -> None:
    spec = load_spec(SYNTHETIC)
    train = write(tmp_path / "train.parquet", data_rows(["u1", "u2", "u3", "u3"]))
    valid = write(tmp_path / "valid.parquet", data_rows(["u1", "u4", "u4", "u5", "ü6", "u2"]))
    (s,) = hash_stats(spec, collect_ids(spec, [valid]), collect_ids(spec, str(train)))
    assert (s.ids, s.occurrences) == (5, 6)
    assert (s.unseen_ids, s.unseen_occurrences) == (3, 4)  # u4 (twice), u5, ü6
    text = format_hash_stats([s])
    assert "60.00%" in text and "66.67%" in text and "unseen ids" in text


def test_hashed_candidates_are_counted_per_domain_and_shared_table(tmp_path: Path) -> None:
    raw = yaml.safe_load(SYNTHETIC.read_text())
    for f in raw["features"]:
        if f["name"] in ("item", "hist_A", "hist_B"):
            f["mapping"] = {"type": "hash"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(tmp_path / "s.yaml")
    items = ["x1", "x2", "y1", "x1", "y2", "y2"]
    domains = ["A", "A", "B", "A", "B", "C"]  # the unknown domain C is not counted
    data = write(tmp_path / "d.parquet", data_rows([1, 2, 3, 4, 5, 6], items=items, domains=domains))
    stats = {s.key: s for s in hash_stats(spec, collect_ids(spec, data))}
    assert set(stats) == {"user_id", "item@A", "item@B", "hist_A", "hist_B", "table:item_A", "table:item_B"}
    assert (stats["item@A"].ids, stats["item@A"].occurrences) == (2, 3)
    assert (stats["item@B"].ids, stats["item@B"].occurrences) == (2, 2)
    assert (stats["hist_A"].ids, stats["hist_A"].occurrences) == (6, 6)  # ints 0..5 in one-id lists
    assert stats["table:item_A"].ids == 8 and stats["table:item_A"].table == "item_A"
    assert stats["hist_B"].ids == 0 and stats["hist_B"].collision_rate == 0.0


def test_cli_prints_the_table_for_several_paths_and_a_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "train" / "p.parquet", data_rows([1, 2, 3]))
    v1 = write(tmp_path / "valid" / "date=2026-11-19" / "p.parquet", data_rows([1, 2, 9]))
    v2 = write(tmp_path / "valid" / "date=2026-11-20" / "p.parquet", data_rows([3, 10]))
    argv = ["features", "check", str(SYNTHETIC), "--data", str(v1), str(v2.parent)]
    assert main([*argv, "--data", str(tmp_path / "train"), "--reference", str(tmp_path / "train")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{v1} {v2.parent}: OK (2 file(s), 5 rows)" in out
    assert f"hash-mapped ids vs reference {tmp_path / 'train'}:" in out
    header = next(line for line in out.splitlines() if "collision rate" in line and "feature" in line)
    assert header.split()[:4] == ["feature", "table", "num_embeddings", "distinct"]
    user_lines = [line.split() for line in out.splitlines() if line.strip().startswith("user_id")]
    assert len(user_lines) == 2  # one table per --data
    assert user_lines[0][:4] == ["user_id", "user", "4,096", "5"]
    assert user_lines[0][-2:] == ["40.00%", "40.00%"]  # ids 9 and 10: 2 of 5 ids, 2 of 5 rows
    assert user_lines[1][-2:] == ["0.00%", "0.00%"]


def test_cli_reference_with_problems_is_an_input_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write(tmp_path / "v.parquet", data_rows([1, 2]))
    ref = write(tmp_path / "r.parquet", data_rows([1, 2]).drop_columns(["user_id"]))
    assert main(["features", "check", str(SYNTHETIC), "--data", str(data), "--reference", str(ref)]) == 2
    _, err = capsys.readouterr()
    assert "--reference data has 1 problem(s)" in err and "column 'user_id' is missing" in err
    assert str(ref) in err and "Fix:" in err


def test_cli_missing_reference_is_an_input_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path / "v.parquet", data_rows([1, 2]))
    missing = tmp_path / "nope" / "*.parquet"
    assert main(["features", "check", str(SYNTHETIC), "--data", str(data), "--reference", str(missing)]) == 2
    _, err = capsys.readouterr()
    assert "pattern matches no file" in err and str(missing) in err
