"""Event features (``kind: event``): what happened at each event of a history (MovieLens: whether the user
liked it), one entry per event, cut with the history, looked up in its own table and scaling the event's
item embedding; rows share a history encoding only when their events match too."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec, builtin_spec_path, parse_spec
from crossrank.features.validate import row_group_problems
from crossrank.pipeline.prepare.movielens import prepare_movielens
from crossrank.pipeline.reading import history_groups as hg
from crossrank.pipeline.reading.reader import Block, ParquetBatchReader
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.test_grouped_scoring import repeated_block
from tests.test_tracing import TINY_SPEC, tiny_model

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


def event_spec_raw() -> dict[str, Any]:
    """The tiny spec of the tracing tests, with a `liked` event feature on both histories."""
    raw = copy.deepcopy(TINY_SPEC)
    identity = {"type": "identity", "oov": "error"}  # ids are table rows: the reader test reads them back
    for f in raw["features"]:
        if f["kind"] in ("sequence", "candidate"):
            f["mapping"] = identity
    raw["tables"].append(
        {"name": "liked", "num_embeddings": 3, "embedding_dim": raw["tables"][0]["embedding_dim"]}
    )
    for d in ("A", "B"):
        raw["features"].append(
            {
                "name": f"liked_{d}",
                "kind": "event",
                "of": f"hist_{d}",
                "column": f"liked_{d}",
                "table": "liked",
                "mapping": identity,
            }
        )
    return raw


def event_spec() -> FeatureSpec:
    spec, problems = parse_spec(event_spec_raw(), "<events>")
    assert spec is not None, problems
    return spec


def problems_of(raw: dict[str, Any]) -> list[str]:
    spec, problems = parse_spec(raw, "<events>")
    assert spec is None
    return [f"[{p.feature}] {p.message} Fix: {p.fix}" for p in problems]


def test_an_event_feature_takes_its_history_s_domain_and_length() -> None:
    spec = event_spec()
    assert [(f.domain, f.max_len, f.table) for f in spec.of_kind("event")] == [
        ("A", 20, "liked"),
        ("B", 20, "liked"),
    ]
    assert spec.history_keys == ["hist_A", "liked_A", "hist_B", "liked_B"]
    assert spec.sequence_keys == ["hist_A", "item@A", "liked_A", "hist_B", "item@B", "liked_B"]
    assert [c.feature_names for c in spec.embedding_configs()][-1] == ["liked_A", "liked_B"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda f: f.update(of="hist_C"), "[liked_A] `of: 'hist_C'` names no sequence feature."),
        (lambda f: f.update(of="hist_B"), "[hist_B] history 'hist_B' has several event features."),
        (lambda f: f.update(table="item_A"), "[liked_A] uses item table 'item_A'"),
        (lambda f: f.update(max_len=5), "[liked_A] an event feature takes `domain` and `max_len`"),
        (lambda f: f.pop("table"), "[liked_A] a event feature needs `table:`."),
    ],
)
def test_a_wrong_event_feature_is_a_clear_spec_problem(change: Any, expected: str) -> None:
    raw = event_spec_raw()
    change(next(f for f in raw["features"] if f["name"] == "liked_A"))
    problems = problems_of(raw)
    assert any(p.startswith(expected) for p in problems), problems


def rows_table(hist_a: list[list[int]], liked_a: list[list[int]]) -> pa.Table:
    n = len(hist_a)
    return pa.table(
        {
            "row_id": pa.array(range(n), pa.int64()),
            "label": pa.array([i % 2 for i in range(n)], pa.int8()),
            "user_id": pa.array(range(n), pa.int64()),
            "item_id": pa.array([3] * n, pa.int64()),
            "domain": pa.array(["A"] * n),
            "hist_A": pa.array(hist_a, pa.list_(pa.int64())),
            "hist_B": pa.array([[]] * n, pa.list_(pa.int64())),
            "n_A": pa.array([1.0] * n, pa.float32()),
            "liked_A": pa.array(liked_a, pa.list_(pa.int64())),
            "liked_B": pa.array([[]] * n, pa.list_(pa.int64())),
        }
    )


def test_event_ids_are_cut_with_their_history(tmp_path: Path) -> None:
    long = list(range(1, 26))  # 25 events, max_len 20: the last 20 are kept, and the last 20 likes with them
    likes = [i % 2 for i in range(25)]
    pq.write_table(rows_table([long, [7, 8]], [likes, [1, 0]]), tmp_path / "d.parquet")
    batch = next(ParquetBatchReader(event_spec(), tmp_path / "d.parquet", 2).batches())
    hist, liked = batch.sequences["hist_A"], batch.sequences["liked_A"]
    assert torch.equal(hist.lengths(), liked.lengths()) and hist.lengths().tolist() == [20, 2]
    assert hist.values().tolist() == [*long[5:], 7, 8]
    assert liked.values().tolist() == [*likes[5:], 1, 0]


def test_an_event_list_of_another_length_names_the_column_row_and_fix(tmp_path: Path) -> None:
    table = rows_table([[1, 2], [3, 4, 5]], [[1, 0], [1, 1]])
    problems = row_group_problems(event_spec(), table, "d.parquet, row group 0")
    assert [p.feature for p in problems] == ["liked_A"]
    assert "'liked_A'" in problems[0].message and "'hist_A'" in problems[0].message
    assert (
        "first: row 1 of this row group" in problems[0].message
        and "one 'liked_A' entry per event" in problems[0].fix
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(InputError, match=r"(?s)d\.parquet.*liked_A.*row 1"):
        list(ParquetBatchReader(event_spec(), tmp_path / "d.parquet", 2).batches())


@pytest.mark.parametrize("encoder", ["mean", "din", "elastic"])
def test_events_change_the_scores_and_split_history_groups(encoder: str) -> None:
    """The likes enter the model (flipping them moves the scores), and rows whose histories hold the same
    items but other likes are not grouped together: grouped scores equal the row-by-row ones."""
    spec = event_spec()
    model = tiny_model((encoder, "gca", "early", 16), spec).eval()
    block = repeated_block(spec, users=6, per_user=4, seed=3)
    flipped = dict(block.jagged)
    lengths, likes = flipped["liked_A"]
    first_row = int(lengths[0])  # row 0's likes flipped: its items still match its copies', its likes do not
    flipped["liked_A"] = (lengths, np.concatenate([1 - likes[:first_row], likes[first_row:]]))
    changed = Block(block.dense, block.labels, block.domains, block.row_ids, flipped)
    assert first_row > 0
    with torch.no_grad():
        base = hg.forward_batch(model, block.to_batch(spec.pooled_keys, spec.sequence_keys, 24))[1]
        _, want, _ = hg.forward_batch(model, changed.to_batch(spec.pooled_keys, spec.sequence_keys, 24))
        grouped = hg.grouped_batch(changed, spec, 24)
        got = hg.forward_batch(model, grouped)[1]
    assert (want[0] - base[0]).abs() > 1e-4 and torch.equal(want[1:], base[1:])
    assert grouped.num_histories == 7  # 6 users' histories, and row 0's on its own
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_movielens_trains_with_the_likes_of_its_histories(tmp_path: Path) -> None:
    """``prepare movielens`` writes ``hist_liked_<D>`` and the shipped spec trains on it end to end."""
    prepare_movielens(ML100K, tmp_path / "ml", max_len=30)
    data = tmp_path / "ml"
    sets = [
        f"data.spec={builtin_spec_path('movielens')}",
        *(f"data.{s}={data / s}" for s in ("train", "valid", "test")),
        "data.batch_size=256",
        "train.epochs=1",
        "train.max_steps=30",
        f"run_dir={tmp_path / 'run'}",
    ]
    result = train(load_config(REPO / "configs" / "ml1m.yaml", sets))
    assert result.reader["ids"]["hist_liked_A"] > 0 and "hist_liked_A" not in result.reader["oov"]
    assert result.reader["ids"]["hist_liked_A"] == result.reader["ids"]["hist_A"]  # one like per event
    assert 0.6 < result.test["auc"] < 1.0
