"""Grouped inference: rows that share a history are encoded once, with the scores of the row-by-row path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec
from crossrank.models.elastic import ElasticConfig
from crossrank.models.ranker import TARGET_FREE_ENCODERS
from crossrank.models.sequence import SEQUENCE_ENCODERS, build_sequence_encoder
from crossrank.pipeline.cli.main import main
from crossrank.pipeline.core.distributed import DistContext, all_gather_cat, init_distributed
from crossrank.pipeline.evaluation.predict import model_outputs
from crossrank.pipeline.evaluation.ranking import ranking_metrics
from crossrank.pipeline.prepare.ranking_set import prepare_ranking
from crossrank.pipeline.reading import history_groups as hg
from crossrank.pipeline.reading.reader import Block, ParquetBatchReader
from crossrank.pipeline.scoring.model import load_for_inference
from crossrank.pipeline.scoring.score import score
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.test_tracing import COMBOS, Combo, tiny_model, tiny_spec

REPO = Path(__file__).resolve().parents[1]
# Every encoder and placement with GCA, and concat (whose fused slots are one tensor shared by the domains).
GROUPED_COMBOS = [c for c in COMBOS if c[1] == "gca" or c[:2] == ("elastic", "concat")]


def predict(
    model: torch.nn.Module, reader: ParquetBatchReader, ctx: DistContext, grouped: bool = False
) -> dict[str, torch.Tensor]:
    """The predictions of all ranks gathered on every rank (``logits, labels, weights, domains, ortho,
    row_ids``), to compare the grouped and the row-by-row paths row by row."""
    outs = [
        (logits, rows.labels.float(), rows.weights.float(), rows.domains, ortho, rows.row_ids)
        for rows, logits, ortho in model_outputs(model, reader, ctx, grouped)
    ]
    names = ("logits", "labels", "weights", "domains", "ortho", "row_ids")
    return {
        n: all_gather_cat(torch.cat(c), ctx).cpu()
        for n, c in zip(names, zip(*outs, strict=True), strict=True)
    }


def repeated_block(spec: FeatureSpec, users: int, per_user: int, seed: int) -> Block:
    """``users`` random histories (some empty), each repeated for ``per_user`` candidates, rows shuffled
    so that copies of a history are not always adjacent; every row has its own candidate, user and dense."""
    rng = np.random.default_rng(seed)
    n = users * per_user
    owner = rng.permutation(np.repeat(np.arange(users), per_user))
    jagged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for d in spec.domain_names:
        event = spec.event_for(d)
        lengths = rng.integers(0, 12, users).astype(np.int32)
        lengths[0] = 0
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        # the history's items and, with an event feature, each event's id (0/1), per user
        for key, high in [(spec.sequence_for(d).name, 29), *([(event.name, 2)] if event else [])]:
            values = rng.integers(0, high, int(lengths.sum()))
            rows = [values[offsets[o] : offsets[o + 1]] for o in owner]
            jagged[key] = (lengths[owner], np.concatenate(rows).astype(np.int64))
    domains = rng.integers(0, 2, n)
    for i, d in enumerate(spec.domain_names):
        mask = domains == i
        jagged[spec.candidate_key(d)] = (mask.astype(np.int32), rng.integers(0, 29, int(mask.sum())))
    jagged["user_id"] = (np.ones(n, np.int32), rng.integers(0, 49, n))
    dense = rng.random((n, 1)).astype(np.float32)
    return Block(dense, np.zeros(n, np.float32), domains.astype(np.int64), np.arange(n), jagged)


@pytest.mark.parametrize("combo", GROUPED_COMBOS, ids=["-".join(map(str, c)) for c in GROUPED_COMBOS])
def test_grouped_forward_equals_the_row_by_row_forward(combo: Combo) -> None:
    spec, model = tiny_spec(), tiny_model(combo).eval()
    block = repeated_block(spec, users=7, per_user=5, seed=sum(map(ord, str(combo))))
    batch_size = 40  # 35 real rows and 5 padding rows
    with torch.no_grad():
        rows, want, want_ortho = hg.forward_batch(
            model, block.to_batch(spec.pooled_keys, spec.sequence_keys, batch_size)
        )
        grouped = hg.grouped_batch(block, spec, batch_size)
        _, got, got_ortho = hg.forward_batch(model, grouped)
    assert grouped.num_histories == 8  # 7 histories and the padding rows' empty one
    real = rows.weights > 0
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_ortho[real], want_ortho[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", SEQUENCE_ENCODERS)
def test_target_free_encoders_ignore_the_candidate(name: str) -> None:
    torch.manual_seed(0)
    enc = build_sequence_encoder(name, 8, ElasticConfig(num_slots=4, num_heads=2, recency_buckets=4), "A")
    values, lengths = torch.rand(9, 8), torch.tensor([4, 0, 5])
    with torch.no_grad():
        a, b = enc(values, lengths, torch.rand(3, 8)), enc(values, lengths, torch.rand(3, 8))
    assert isinstance(enc, TARGET_FREE_ENCODERS) == torch.equal(a, b)  # DIN reads it, the others do not


def _histories(block: Block, keys: list[str], row: int) -> list[list[int]]:
    out = []
    for key in keys:
        lengths, values = block.jagged[key]
        start = int(lengths[:row].sum())
        out.append(values[start : start + lengths[row]].tolist())
    return out


@pytest.mark.parametrize("collide", [False, True])
def test_groups_hold_identical_histories_even_when_hashes_collide(
    collide: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec()
    keys = spec.history_keys
    block = repeated_block(spec, users=9, per_user=4, seed=2)
    if collide:  # every row hashes alike: only the value-by-value check tells them apart
        monkeypatch.setattr(hg, "history_hashes", lambda jagged, keys, n: np.zeros(n, np.uint64))
    groups = hg.group_histories(block, keys)
    distinct = {repr(_histories(block, keys, r)) for r in range(len(block))}
    for row, g in enumerate(groups.group):
        assert _histories(block, keys, row) == _histories(block, keys, int(groups.first[g]))
    assert (np.diff(groups.first) > 0).all() and groups.first[0] == 0  # numbered by first appearance
    if collide:  # sharing is lost (only rows equal to the first row share), never exactness
        assert len(distinct) < groups.num_groups <= len(block)
    else:
        assert groups.num_groups == len(distinct) == 9


def test_hash_separates_histories_that_differ_in_one_place() -> None:
    keys = tiny_spec().history_keys
    lengths, values = np.array([2, 2, 2, 0], np.int32), np.array([1, 2, 2, 1, 1, 1])  # [1,2] [2,1] [1,1] []
    empty = (np.zeros(4, np.int32), np.zeros(0, np.int64))
    hashes = hg.history_hashes({keys[0]: (lengths, values), keys[1]: empty}, keys, 4)
    assert len(set(hashes.tolist())) == 4
    moved = hg.history_hashes({keys[0]: empty, keys[1]: (lengths, values)}, keys, 4)  # the other domain
    assert not set(moved[:3].tolist()) & set(hashes.tolist())


@pytest.fixture(scope="module")
def ranking_run(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One step of an ELASTIC model with interest memories, and a ranking set of 1 + 19 candidates."""
    data = tmp_path_factory.mktemp("grouped") / "data"
    shutil.copytree(small_synthetic, data)  # a private copy: the shared fixture must not grow ranking/
    prepare_ranking(data, negatives=19, seed=0)
    run_dir = data.parent / "run"
    overrides = [
        f"data.spec={REPO / 'features' / 'specs' / 'synthetic.yaml'}",
        f"data.train={data / 'train'}",
    ]
    overrides += ["data.valid=", "data.test=", "data.batch_size=64", "data.ranking_group_size=20"]
    overrides += ["train.epochs=1", "train.max_steps=1"]
    overrides += ["model.sequence_encoder=elastic", "model.encoder.memory_size=256", f"run_dir={run_dir}"]
    train(load_config(None, overrides))
    return run_dir, data / "ranking"


def _scores(out: Path) -> pd.Series:
    return ds.dataset(out, format="parquet").to_table().to_pandas().set_index("row_id")["score"].sort_index()


def test_grouped_scoring_and_evaluation_equal_the_row_by_row_path(
    ranking_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, ranking = ranking_run
    ctx = init_distributed()
    loaded = load_for_inference(run_dir, ctx)
    score(loaded, ranking, tmp_path / "grouped", ctx, batch_size=300)  # grouped: the default
    score(loaded, ranking, tmp_path / "rows", ctx, batch_size=300, grouped=False)
    grouped, rows = _scores(tmp_path / "grouped"), _scores(tmp_path / "rows")
    assert (grouped.index == rows.index).all() and len(rows) == pq.ParquetFile(
        ranking / "part-00000.parquet"
    ).metadata.num_rows
    np.testing.assert_allclose(grouped.to_numpy(), rows.to_numpy(), rtol=1e-5, atol=1e-6)
    reader = ParquetBatchReader(loaded.spec, ranking, 300)
    assert [g.num_histories for g in hg.grouped_batches(reader, 2)] == [
        15,
        15,
    ]  # 300 rows: 15 groups of 1 + 19
    p_rows = predict(loaded.sharded.model, reader, ctx)
    p_grouped = predict(loaded.sharded.model, reader, ctx, grouped=True)
    assert torch.equal(p_rows["row_ids"], p_grouped["row_ids"])
    torch.testing.assert_close(p_grouped["logits"], p_rows["logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(p_grouped["ortho"], p_rows["ortho"], rtol=1e-5, atol=1e-6)


def test_the_cli_turns_grouping_off_with_row_by_row(
    ranking_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, ranking = ranking_run
    metrics = []
    for flag in ([], ["--row-by-row"]):
        argv = ["evaluate", "--checkpoint", str(run_dir), "--data", str(ranking), "--ranking", str(ranking)]
        assert main([*argv, "--batch-size", "500", *flag]) == 0
        metrics.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6) and metrics[0]["hr@10"] > 0


def test_a_ranking_set_of_another_group_size_is_a_clear_error() -> None:
    logits, row_ids, domains = torch.rand(40), torch.arange(40), torch.zeros(40, dtype=torch.long)
    with pytest.raises(
        InputError, match=r"40 row\(s\) outside whole groups of 100.*data\.ranking_group_size"
    ):
        ranking_metrics(logits, row_ids, domains, 100, ["A", "B"])
