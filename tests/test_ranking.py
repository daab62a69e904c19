"""The sampled ranking protocol: group construction and HR/NDCG."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from crossrank.features.errors import InputError
from crossrank.pipeline.evaluation.ranking import StreamingRanking, ranking_metrics
from crossrank.pipeline.prepare.ranking_set import prepare_ranking
from tests.conftest import launch


@pytest.fixture(scope="module")
def ranking(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # A private copy: the shared fixture folder must not grow a ranking/ folder.
    import shutil

    data = tmp_path_factory.mktemp("rk") / "data"
    shutil.copytree(small_synthetic, data)
    prepare_ranking(data, negatives=9, seed=1)
    return data, data / "ranking"


def test_groups_hold_the_latest_positive_and_unseen_negatives(ranking: tuple[Path, Path]) -> None:
    data, out = ranking
    table = ds.dataset(out, format="parquet").to_table().to_pandas()
    assert len(table) % 10 == 0
    groups = table["row_id"].to_numpy() // 10
    pos = table["row_id"].to_numpy() % 10 == 0
    assert (table["label"].to_numpy() == pos).all()
    files = [str(f) for s in ("train", "valid", "test") for f in (data / s).glob("*.parquet")]
    every = ds.dataset(files, format="parquet").to_table(columns=["user_id", "item_id", "domain"]).to_pandas()
    rated = set(zip(every.user_id, every.item_id, every.domain, strict=True))
    test = ds.dataset(data / "test", format="parquet").to_table().to_pandas()
    for _, rows in table.groupby(groups):
        first = rows.iloc[0]
        assert rows["user_id"].nunique() == 1 and rows["domain"].nunique() == 1
        assert all(list(h) == list(first["hist_A"]) for h in rows["hist_A"])  # same context in the group
        negatives = rows["item_id"].to_numpy()[1:]
        assert len(set(negatives)) == 9 and first["item_id"] not in negatives
        assert not any((first.user_id, i, first.domain) in rated for i in negatives)
        # the positive is the user's latest positive test row in that domain
        mine = test[(test.user_id == first.user_id) & (test.domain == first.domain) & (test.label == 1)]
        assert first["timestamp"] == mine["timestamp"].max()
    assert len(np.unique(groups)) == len(test[test.label == 1].groupby(["user_id", "domain"]))


def test_hr_and_ndcg() -> None:
    group = 10
    scores = torch.tensor(
        [
            [9.0] + [0.0] * 9,  # positive on top: rank 0
            [5.0, 6.0, 7.0] + [0.0] * 7,  # two negatives above: rank 2
            [0.0] + [1.0] * 9,  # last: rank 9, still in the top 10
            [1.0, 1.0] + [0.0] * 8,  # a tie counts against the model: rank 1
        ]
    )
    row_ids = torch.arange(40).flip(0)  # any order
    logits = scores.reshape(-1)[row_ids]
    domains = torch.tensor([0, 0, 1, 1]).repeat_interleave(group)[row_ids]
    m = ranking_metrics(logits, row_ids, domains, group, ["A", "B"], k=10)
    assert m["hr@10"] == 1.0
    expected = [1.0, 1 / math.log2(4), 1 / math.log2(11), 1 / math.log2(3)]
    assert math.isclose(m["ndcg@10"], sum(expected) / 4)
    assert math.isclose(m["ndcg@10/A"], (expected[0] + expected[1]) / 2)
    m3 = ranking_metrics(logits, row_ids, domains, group, ["A", "B"], k=3)
    assert m3["hr@3"] == 0.75  # rank 9 falls out of the top 3


def test_negatives_carry_their_own_item_columns(tmp_path: Path) -> None:
    """MovieLens' genres and year describe the candidate: a negative gets its own movie's, not the
    positive's (``summary.json`` names those columns); the user's columns stay the positive row's."""
    from crossrank.pipeline.prepare.movielens import prepare_movielens

    ml100k = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
    prepare_movielens(ml100k, tmp_path / "ml", max_len=5)
    prepare_ranking(tmp_path / "ml", negatives=19, users=50, seed=0)
    rows = ds.dataset(tmp_path / "ml" / "ranking", format="parquet").to_table().to_pandas()
    every = ds.dataset(tmp_path / "ml" / "train", format="parquet").to_table().to_pandas()
    genres = {i: list(g) for i, g in zip(every["item_id"], every["genres"], strict=True)}
    year = dict(zip(every["item_id"], every["year"], strict=True))
    known = rows[rows["item_id"].isin(genres.keys())]
    assert len(known) > 0.9 * len(rows)
    assert [list(g) for g in known["genres"]] == [genres[i] for i in known["item_id"]]
    assert known["year"].fillna(0).tolist() == [
        0 if math.isnan(year[i]) else year[i] for i in known["item_id"]
    ]
    groups = rows.groupby(rows["row_id"] // 20)
    assert (groups["genres"].apply(lambda g: len({tuple(x) for x in g})) > 1).all()  # they differ in a group
    assert (groups["gender"].nunique() == 1).all() and (groups["age"].nunique() == 1).all()


def _ranking_rows(groups: int, group_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Scores, row ids and domains of ``groups`` whole groups, rows shuffled, with some tied scores."""
    g = torch.Generator().manual_seed(seed)
    n = groups * group_size
    logits = torch.randint(0, 40, (n,), generator=g).float() / 8  # ties with the positive happen
    domains = (torch.arange(n) // group_size) % 2
    order = torch.randperm(n, generator=g)
    return logits[order], torch.arange(n)[order], domains[order]


def test_streamed_ranking_equals_all_rows_at_once_whatever_the_batches() -> None:
    """Groups split across batches (and rows in any order) are scored once complete."""
    logits, row_ids, domains = _ranking_rows(60, 10)
    want = ranking_metrics(logits, row_ids, domains, 10, ["A", "B"])
    order = torch.argsort(row_ids)  # in row order, cut at odd places: groups straddle updates
    acc = StreamingRanking(10, ["A", "B"])
    for part in torch.tensor_split(order, [7, 33, 34, 250, 591]):
        acc.update(logits[part], row_ids[part], domains[part])
        assert acc.rows.numel() < 10  # at most one incomplete group held
    assert acc.finish() == pytest.approx(want)
    acc = StreamingRanking(10, ["A", "B"])
    acc.update(logits[:-3], row_ids[:-3], domains[:-3])  # 3 rows missing: their group is never whole
    with pytest.raises(InputError, match="7 row"):
        acc.finish()


def _rank_ranking(cut: int, drop_last: bool) -> dict[str, float] | str:
    from crossrank.pipeline.core.distributed import init_distributed

    ctx = init_distributed()
    logits, row_ids, domains = _ranking_rows(60, 10)
    order = torch.argsort(row_ids)[: 597 if drop_last else 600]
    mine = order[:cut] if ctx.rank == 0 else order[cut:]  # group 30 is split between the ranks
    acc = StreamingRanking(10, ["A", "B"])
    acc.update(logits[mine], row_ids[mine], domains[mine])
    try:
        return acc.finish(ctx)
    except InputError as e:
        return str(e)


def test_two_ranks_equal_one_process_with_groups_split_between_them(tmp_path: Path) -> None:
    logits, row_ids, domains = _ranking_rows(60, 10)
    want = ranking_metrics(logits, row_ids, domains, 10, ["A", "B"])
    (tmp_path / "ok").mkdir(), (tmp_path / "bad").mkdir()
    got = launch(2, tmp_path / "ok", _rank_ranking, 305, False)
    assert got[0] == pytest.approx(want) and got[1] == pytest.approx(want)
    bad = launch(2, tmp_path / "bad", _rank_ranking, 305, True)  # every rank raises, none hangs
    assert "outside whole groups of 10" in bad[0] and bad[0] == bad[1]
