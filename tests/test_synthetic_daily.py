"""``crossrank prepare synthetic --days N``: daily partitions of one generated world, with new items that
launch on day 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from crossrank.features.errors import InputError
from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic
from crossrank.pipeline.prepare.synthetic.daily import prepare_synthetic_days

CONFIG = SyntheticConfig(users=300, items_per_domain=200, rows=6000, max_len=20, seed=3)
DATES = ["2026-11-20", "2026-11-21", "2026-11-22"]


@pytest.fixture(scope="module")
def daily(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("daily")
    prepare_synthetic_days(out, CONFIG, days=3, start_date=DATES[0], new_item_frac=0.25)
    return out


def _read(folder: Path, columns: list[str] | None = None):  # type: ignore[no-untyped-def]
    return pq.read_table(sorted(folder.rglob("*.parquet")), columns=columns)


def _items(table, domains=("A", "B")):  # type: ignore[no-untyped-def]
    hist = np.concatenate([pc.list_flatten(table[f"hist_{d}"]).to_numpy() for d in domains])
    return table["item_id"].to_numpy(), hist


def test_days_are_consecutive_partitions_with_all_splits(daily: Path) -> None:
    assert sorted(p.name for p in daily.glob("date=*")) == [f"date={d}" for d in DATES]
    summary = json.loads((daily / "summary.json").read_text())
    assert [d["date"] for d in summary["days"]] == DATES
    for d, date in enumerate(DATES):
        ts = []
        for split in ("train", "valid", "test"):
            t = pq.read_table(daily / f"date={date}" / split)
            assert t.num_rows == summary["days"][d]["rows"][split] > 0
            ts.append(t["timestamp"].to_numpy())
        # Time order inside the day: train before valid before test, and all within the day.
        assert ts[0].max() < ts[1].min() and ts[1].max() < ts[2].min()
        assert d / 3 <= ts[0].min() / 1e9 and ts[2].max() / 1e9 < (d + 1) / 3
        oracle = json.loads((daily / f"date={date}" / "oracle.json").read_text())
        assert 0.7 < oracle["oracle_auc"]["test"] < 0.95


def test_new_items_are_unseen_on_day_one_and_appear_on_day_two(daily: Path) -> None:
    first_new = json.loads((daily / "summary.json").read_text())["first_new_item"]
    assert first_new == 150
    cand, hist = _items(_read(daily / f"date={DATES[0]}"))
    assert cand.max() < first_new and hist.max() < first_new
    cand2, hist2 = _items(_read(daily / f"date={DATES[1]}"))
    assert (cand2 >= first_new).sum() > 0 and (hist2 >= first_new).sum() > 0


def test_rows_are_the_generated_rows_minus_day_one_new_item_candidates(daily: Path, tmp_path: Path) -> None:
    prepare_synthetic(tmp_path / "one", CONFIG)
    whole = _read(tmp_path / "one").sort_by("row_id")
    parts = _read(daily, ["row_id", "item_id", "label", "true_prob"]).sort_by("row_id")
    ids = parts["row_id"].to_numpy()
    assert np.unique(ids).size == ids.size  # each row once
    day = np.floor(whole["timestamp"].to_numpy() / 1e9 * 3)
    dropped = (day == 0) & (whole["item_id"].to_numpy() >= 150)
    expect = whole.filter(~dropped)
    assert ids.tolist() == expect["row_id"].to_numpy().tolist()
    assert parts["label"].equals(expect["label"]) and parts["true_prob"].equals(expect["true_prob"])


def test_a_rerun_with_fewer_days_leaves_nothing_stale(daily: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    prepare_synthetic_days(out, CONFIG, days=3, start_date=DATES[0])
    prepare_synthetic_days(out, CONFIG, days=2, start_date="2026-12-01")
    assert sorted(p.name for p in out.iterdir()) == ["date=2026-12-01", "date=2026-12-02", "summary.json"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"days": 0, "start_date": "2026-11-20"}, "--days"),
        ({"days": 2, "start_date": "20-11-2026"}, "--start-date"),
        ({"days": 2, "start_date": "2026-11-20", "new_item_frac": 1.0}, "--new-item-frac"),
    ],
)
def test_bad_arguments_are_input_errors(tmp_path: Path, kwargs: dict, fragment: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=fragment):
        prepare_synthetic_days(tmp_path, CONFIG, **kwargs)
