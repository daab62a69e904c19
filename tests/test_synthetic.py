"""Tests of ``crossrank.pipeline.prepare.synthetic``: the data contract, determinism, histories and the oracle."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossrank.features.errors import InputError
from crossrank.pipeline.core.auc import roc_auc
from crossrank.pipeline.prepare.synthetic import (
    SPLIT_BOUNDS,
    SPLITS,
    TIME_SCALE,
    Block,
    SyntheticConfig,
    _histories,
    build_world,
    iter_blocks,
    output_schema,
    prepare_synthetic,
)

# Small enough for per-row Python checks; small row groups and chunks force several parts per split.
SMALL = {"users": 150, "items_per_domain": 200, "rows": 4000, "max_len": 12, "row_group_size": 256}
EXPECTED_COLUMNS = [
    ("row_id", pa.int64()),
    ("user_id", pa.int64()),
    ("item_id", pa.int64()),
    ("domain", pa.string()),
    ("label", pa.int8()),
    ("timestamp", pa.int64()),
    ("hist_A", pa.list_(pa.int64())),
    ("hist_count_A", pa.float32()),
    ("hist_B", pa.list_(pa.int64())),
    ("hist_count_B", pa.float32()),
    ("true_prob", pa.float32()),
]


def read_split(out_dir: Path, split: str) -> pa.Table:
    """All parts of a split, in part order."""
    parts = sorted((out_dir / split).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts])


@pytest.fixture(scope="module")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticConfig]:
    out = tmp_path_factory.mktemp("default")
    config = SyntheticConfig()
    prepare_synthetic(out, config)
    return out, config


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticConfig]:
    out = tmp_path_factory.mktemp("small")
    config = SyntheticConfig(**SMALL, chunk_values=3000, values_per_part=500)
    prepare_synthetic(out, config)
    return out, config


def test_schema_row_groups_and_value_ranges(small_data: tuple[Path, SyntheticConfig]) -> None:
    out, config = small_data
    row_ids = []
    for split in SPLITS:
        parts = sorted((out / split).glob("part-*.parquet"))
        assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(len(parts))]
        assert len(parts) >= 2 if split == "train" else len(parts) >= 1
        sizes = []
        for part in parts:
            meta = pq.ParquetFile(part).metadata
            sizes += [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        # Every row group is full except the split's very last one.
        assert all(s == config.row_group_size for s in sizes[:-1])
        assert 0 < sizes[-1] <= config.row_group_size

        table = read_split(out, split)
        assert [(f.name, f.type) for f in table.schema] == EXPECTED_COLUMNS
        assert table.schema.equals(output_schema(config.domains))
        cols = {name: table.column(name).to_numpy() for name in ("user_id", "item_id", "label", "timestamp")}
        assert cols["user_id"].min() >= 0 and cols["user_id"].max() < config.users
        assert cols["item_id"].min() >= 0 and cols["item_id"].max() < config.items_per_domain
        assert set(np.unique(cols["label"]).tolist()) == {0, 1}
        assert set(table.column("domain").to_pylist()) == {"A", "B"}
        bounds = {"train": (0, SPLIT_BOUNDS[0]), "valid": SPLIT_BOUNDS, "test": (SPLIT_BOUNDS[1], TIME_SCALE)}
        lo, hi = bounds[split]
        assert cols["timestamp"].min() >= lo and cols["timestamp"].max() < hi
        prob = table.column("true_prob").to_numpy()
        assert np.all((prob > 0) & (prob < 1))
        for d in config.domains:
            values = pc.list_flatten(table.column(f"hist_{d}")).to_numpy()
            assert values.min() >= 0 and values.max() < config.items_per_domain
        row_ids.append(table.column("row_id").to_numpy())
    all_ids = np.concatenate(row_ids)
    assert all_ids.size == config.rows == np.unique(all_ids).size


def test_same_seed_identical_other_seed_different(tmp_path: Path) -> None:
    config = SyntheticConfig(**SMALL)
    prepare_synthetic(tmp_path / "a", config)
    prepare_synthetic(tmp_path / "b", SyntheticConfig(**SMALL))
    prepare_synthetic(tmp_path / "c", SyntheticConfig(**{**SMALL, "seed": 1}))
    for split in SPLITS:
        a, b, c = (read_split(tmp_path / x, split) for x in "abc")
        assert a.equals(b)
        assert not a.equals(c)
    oracle_a = json.loads((tmp_path / "a" / "oracle.json").read_text())
    assert oracle_a == json.loads((tmp_path / "b" / "oracle.json").read_text())


def test_histories_are_the_events_strictly_before_the_row(small_data: tuple[Path, SyntheticConfig]) -> None:
    out, config = small_data
    blocks = list(iter_blocks(config))
    owner = {u: b for b in blocks for u in range(b.user_lo, b.user_hi)}
    assert sorted(owner) == list(range(config.users))
    table = pa.concat_tables([read_split(out, s) for s in SPLITS]).to_pydict()
    checked_nonempty = 0
    for i in range(len(table["row_id"])):
        user, ts = table["user_id"][i], table["timestamp"][i]
        for d, name in enumerate(config.domains):
            block = owner[user]
            stream = block.stream(user, d)
            times, items = block.time[stream], block.item[stream]
            assert np.all(np.diff(times) >= 0)
            earlier = items[times < ts]
            assert table[f"hist_count_{name}"][i] == earlier.size
            assert table[f"hist_{name}"][i] == earlier[-config.max_len :].tolist()
            checked_nonempty += earlier.size > 0
    assert checked_nonempty > len(table["row_id"])  # most rows have a non-empty history somewhere


def test_histories_exclude_events_at_the_row_time() -> None:
    """Ties cannot be left to chance (timestamps are fine-grained): a hand-made stream has them."""
    config = SyntheticConfig(users=1, max_len=3)
    times = np.array([10, 20, 20, 30, 40], dtype=np.int64)  # user 0, domain 0; domain 1 has one event
    block = Block(
        index=0,
        user_lo=0,
        user_hi=1,
        starts=np.array([0, 5]),
        key=np.concatenate([times, (1 << 30) | np.array([25])]),
        time=np.concatenate([times, [25]]),
        item=np.array([1, 2, 3, 4, 5, 6], dtype=np.int32),
        interest=np.zeros(6, dtype=np.int16),
    )
    t = np.array([5, 10, 20, 21, 30, 41], dtype=np.int64)
    lists, count = _histories(config, block, np.zeros(t.size, dtype=np.int64), t, 0)
    assert lists.to_pylist() == [[], [], [1], [1, 2, 3], [1, 2, 3], [3, 4, 5]]
    assert count.tolist() == [0, 0, 1, 3, 3, 5]
    lists, count = _histories(config, block, np.zeros(t.size, dtype=np.int64), t, 1)
    assert lists.to_pylist() == [[], [], [], [], [6], [6]]


def test_truncation_to_max_len(small_data: tuple[Path, SyntheticConfig]) -> None:
    out, config = small_data
    table = pa.concat_tables([read_split(out, s) for s in SPLITS])
    truncated = 0
    for name in config.domains:
        lens = pc.list_value_length(table.column(f"hist_{name}")).to_numpy()
        counts = table.column(f"hist_count_{name}").to_numpy()
        assert np.all(counts >= lens)
        assert np.array_equal(lens, np.minimum(counts, config.max_len))
        truncated += int((counts > config.max_len).sum())
    # Heavy-tailed stream lengths: truncation happens, but not to every row.
    assert 0.02 * config.rows < truncated < 0.9 * config.rows
    lengths = build_world(config).lengths
    assert lengths.min() >= 1 and lengths.max() <= config.events_cap
    assert lengths.max() > 2 * config.max_len


def test_oracle_auc_and_positive_rate(default_data: tuple[Path, SyntheticConfig]) -> None:
    out, config = default_data
    oracle = json.loads((out / "oracle.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert oracle["params"]["users"] == config.users and oracle["params"]["domains"] == ["A", "B"]
    for split in SPLITS:
        table = read_split(out, split)
        prob, label = table.column("true_prob").to_numpy(), table.column("label").to_numpy()
        auc = roc_auc(prob, label)
        assert 0.75 <= oracle["oracle_auc"][split] <= 0.88
        assert oracle["oracle_auc"][split] == pytest.approx(auc, abs=1e-12)
        assert oracle["positive_rate"][split] == pytest.approx(label.mean(), abs=1e-12)
        assert 0.3 <= label.mean() <= 0.6
        # The labels really are Bernoulli(true_prob): calibration within noise.
        assert abs(label.mean() - prob.mean()) < 4 * np.sqrt(0.25 / label.size)
        assert summary["splits"][split]["rows"] == table.num_rows
        assert summary["splits"][split]["users"] == np.unique(table.column("user_id").to_numpy()).size
    assert sum(summary["splits"][s]["rows"] for s in SPLITS) == config.rows


def test_cross_domain_signal(default_data: tuple[Path, SyntheticConfig]) -> None:
    """For domain-A candidates, a score from the B history alone predicts the label."""
    out, config = default_data
    item_cluster = build_world(config).item_cluster
    table = read_split(out, "train")
    is_a = pc.equal(table.column("domain"), "A").to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(is_a))
    cand_cluster = item_cluster[0, table.column("item_id").to_numpy()]
    hist_b = table.column("hist_B")
    row = pc.list_parent_indices(hist_b).to_numpy()
    hist_cluster = item_cluster[1, pc.list_flatten(hist_b).to_numpy()]
    same = np.bincount(row, weights=hist_cluster == cand_cluster[row], minlength=table.num_rows)
    score = same / np.maximum(pc.list_value_length(hist_b).to_numpy(zero_copy_only=False), 1)
    label = table.column("label").to_numpy()
    assert roc_auc(score, label) > 0.55
    # Control: the same score with candidate clusters shuffled has no signal.
    shuffled = np.random.default_rng(0).permutation(cand_cluster)
    same = np.bincount(row, weights=hist_cluster == shuffled[row], minlength=table.num_rows)
    assert abs(roc_auc(same, label) - 0.5) < 0.03


@pytest.mark.parametrize("seed", range(20))
def test_roc_auc_matches_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = rng.integers(0, 5, n).astype(np.float64)  # few values: many ties
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(scores.astype(np.float32), labels.astype(bool)) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_edge_cases() -> None:
    assert roc_auc(np.array([0.1, 0.2, 0.9]), np.array([0, 0, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.2, 0.1]), np.array([1, 0, 0])) == 1.0
    assert roc_auc(np.array([0.9, 0.2, 0.1]), np.array([0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1])) == 0.5
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc(np.zeros(3), np.zeros(4))


def test_empty_splits_and_stale_parts(tmp_path: Path) -> None:
    prepare_synthetic(tmp_path, SyntheticConfig(**SMALL, chunk_values=3000, values_per_part=500))
    assert len(list((tmp_path / "train").glob("part-*.parquet"))) >= 2
    summary = prepare_synthetic(tmp_path, SyntheticConfig(**{**SMALL, "rows": 1}))
    # A rerun replaces all earlier parts; a split without rows still has a readable, typed part.
    counts = {s: read_split(tmp_path, s).num_rows for s in SPLITS}
    assert sum(counts.values()) == 1
    for split in SPLITS:
        assert [p.name for p in (tmp_path / split).glob("part-*.parquet")] == ["part-00000.parquet"]
        assert read_split(tmp_path, split).schema.equals(output_schema(("A", "B")))
        assert summary.splits[split].rows == counts[split]
    oracle = json.loads((tmp_path / "oracle.json").read_text())
    assert all(v is None for v in oracle["oracle_auc"].values())  # one row: AUC undefined


def test_summary_format_and_json(small_data: tuple[Path, SyntheticConfig]) -> None:
    out, config = small_data
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] == json.loads((out / "oracle.json").read_text())["params"]
    assert summary["params"]["hist_cap"] == config.events_cap
    summary_obj = prepare_synthetic(out, config)
    text = summary_obj.format()
    for split in SPLITS:
        assert split in text
        assert f"{summary_obj.splits[split].rows:,}" in text
    assert summary_obj.to_json()["splits"] == {s: asdict(v) for s, v in summary_obj.splits.items()}
    json.dumps(summary_obj.to_json())


def test_more_domains(tmp_path: Path) -> None:
    config = SyntheticConfig(**{**SMALL, "domains": ("x", "y", "z"), "interests_per_user": 4})
    prepare_synthetic(tmp_path, config)
    table = read_split(tmp_path, "train")
    expected = [f"{kind}_{d}" for d in "xyz" for kind in ("hist", "hist_count")]
    assert table.column_names[6:12] == expected
    assert set(table.column("domain").to_pylist()) == {"x", "y", "z"}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"users": 0}, "users"),
        ({"rows": 0}, "rows"),
        ({"max_len": 0}, "max_len"),
        ({"domains": ("A",)}, "domains"),
        ({"domains": ("A", "A")}, "domains"),
        ({"domains": ("A", "B-1")}, "domains"),
        ({"items_per_domain": 31}, "items_per_domain"),
        ({"row_group_size": 0}, "row_group_size"),
        ({"users": 2.5}, "users"),
        ({"interests_per_user": 1}, "interests_per_user"),
        ({"switch_prob": 1.5}, "switch_prob"),
        ({"hist_cap": 150}, "hist_cap"),
        ({"seed": -1}, "seed"),
        ({"domain_medians": (4.0,)}, "domain_medians"),
        ({"domain_medians": (4.0, 0.0)}, "domain_medians"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs: dict, name: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        SyntheticConfig(**kwargs)
    assert name in str(err.value)
    # Also when a valid config is changed afterwards: prepare_synthetic validates again.
    config = SyntheticConfig()
    for key, value in kwargs.items():
        setattr(config, key, value)
    with pytest.raises(InputError, match=name):
        prepare_synthetic(tmp_path, config)
    assert not (tmp_path / "train").exists()


def test_failure_leaves_no_partial_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crossrank.pipeline.prepare.synthetic.job as synthetic_job

    config = SyntheticConfig(**SMALL, chunk_values=3000)
    prepare_synthetic(tmp_path, config)
    draw, calls = synthetic_job._draw_rows, []

    def failing_draw(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:  # after some rows were handed to the writers
            raise RuntimeError("boom")
        return draw(*args, **kwargs)

    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(synthetic_job, "_draw_rows", failing_draw)
    with pytest.raises(RuntimeError, match="boom"):
        prepare_synthetic(tmp_path, config)
    # The earlier complete output is left exactly as it was, and no temporary file or folder remains.
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")] == []


def test_domain_medians_make_a_sparse_domain(tmp_path: Path) -> None:
    """``domain_medians=(2, 40)``: most users have a few A events and many B events (untruncated counts)."""
    prepare_synthetic(
        tmp_path / "d", SyntheticConfig(**{**SMALL, "max_len": 20, "domain_medians": (2.0, 40.0)})
    )
    test = pq.read_table(tmp_path / "d" / "test").to_pandas()
    last = test.sort_values("row_id").groupby("user_id").last()  # each user's latest row: nearly all events
    assert last["hist_count_A"].median() <= 4 and last["hist_count_B"].median() >= 20
    assert json.loads((tmp_path / "d" / "oracle.json").read_text())["params"]["domain_medians"] == [2.0, 40.0]
