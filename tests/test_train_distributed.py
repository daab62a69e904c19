"""Training end to end: 2 processes (gloo, file rendezvous, as TorchRec's DLRM tests do) and 1 process."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from crossrank.features.spec import load_spec
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.conftest import launch

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"


def job(data: Path, run_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"data.spec={SPEC}",
            f"data.train={data / 'train'}",
            f"data.valid={data / 'valid'}",
            f"data.test={data / 'test'}",
            "data.batch_size=128",
            "data.eval_batch_size=1024",
            "train.epochs=3",
            "train.log_every=10",
            f"run_dir={run_dir}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def two_process_run(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("train2")
    results = launch(2, tmp, train, job(small_synthetic, tmp / "run"))
    return results, tmp / "run", small_synthetic


def test_ranks_really_have_uneven_batch_counts(small_synthetic: Path) -> None:
    # The 2-process run below is only a hang test if the ranks' shares differ.
    spec = load_spec(SPEC)
    counts = [
        ParquetBatchReader(spec, small_synthetic / "train", 128, rank=r, world_size=2).num_batches
        for r in (0, 1)
    ]
    assert counts[0] != counts[1]


def test_two_process_training_learns(two_process_run) -> None:  # type: ignore[no-untyped-def]
    results, _, data = two_process_run
    r0, r1 = results[0], results[1]
    assert r0.world_size == 2
    # Every rank computes the same metrics from the gathered predictions.
    assert r0.test["auc"] == r1.test["auc"]
    curve = r0.loss_curve
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first - 0.01, curve
    oracle = json.loads((data / "oracle.json").read_text())["oracle_auc"]["test"]
    assert r0.test["auc"] > 0.6, r0.test
    assert r0.test["auc"] < oracle + 0.02  # a model cannot beat the truth (beyond noise)
    n_test = sum(u.num_rows for u in ParquetBatchReader(load_spec(SPEC), data / "test", 1).units)
    assert r0.test["rows"] == n_test  # padding rows excluded, no row lost or doubled
    assert not math.isnan(r0.test["auc/A"]) and not math.isnan(r0.test["auc/B"])
    # The planner placed every table, the ELASTIC interest memories included (DMP shards them like features).
    assert set(r0.plan) == {"user", "item_A", "item_B", "interest_memory_A", "interest_memory_B"}


def test_two_process_run_writes_metrics(two_process_run) -> None:  # type: ignore[no-untyped-def]
    _, run_dir, _ = two_process_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and len(metrics["valid"]) == 3
    assert {"auc", "ne", "logloss", "auc/A", "auc/B"} <= set(metrics["test"])
    assert metrics["params"]["embedding"] == (4096 + 2 * 1025 + 2 * 4096) * 32  # features + 2 memories
    assert (run_dir / "config.yaml").is_file()


def test_single_process_without_launcher(small_synthetic: Path, tmp_path: Path) -> None:
    result = train(job(small_synthetic, tmp_path / "run", "train.epochs=1", "train.max_steps=5"))
    assert result.steps == 5 and result.world_size == 1
    assert 0.0 < result.test["auc"] < 1.0


# (model.sequence_encoder, extra overrides): every selectable encoder with every fusion (gca is the default),
# the parameter-matched baseline, layer-wise (stack) fusion, and ELASTIC without its memory tables (then no
# encoder module holds a table, like DIN and self-attention).
FUSION_RUNS = [[f"model.fusion.kind={kind}"] for kind in ("none", "cross_attention", "concat")]
ENCODER_RUNS: list[tuple[str, list[str]]] = [
    *(
        (encoder, extra)
        for encoder in ("elastic", "self_attention", "din", "mean")
        for extra in [[], *FUSION_RUNS]
    ),
    ("mean", ["model.fusion.kind=none", "model.fusion.param_matched=true"]),
    ("elastic", ["model.fusion.placement=stack"]),
    ("elastic", ["model.fusion.gate_act=tanh"]),
    ("elastic", ["model.encoder.memory_size=0"]),
]
FEATURE_TABLES = ["model.embedding_collection", "model.sparse_arch.embedding_bag_collection"]


def train_every_encoder(data: str, run_root: str) -> list[dict[str, Any]]:
    """One rank: each encoder trains 3 steps through ``train()`` (TrainPipelineSparseDist); records the loss
    and which sharded modules the pipeline's ``_rewrite_model`` pipelined or left alone."""
    from torchrec.distributed.train_pipeline import train_pipelines

    rewrites: list[dict[str, list[str]]] = []
    rewrite = train_pipelines._rewrite_model

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = rewrite(*args, **kwargs)
        rewrites.append(
            {"pipelined": sorted(m.forward.name for m in out[0]), "not_pipelined": sorted(out[4])}
        )
        return out

    results = []
    with mock.patch.object(train_pipelines, "_rewrite_model", spy):
        for i, (encoder, extra) in enumerate(ENCODER_RUNS):
            cfg = load_config(
                None,
                [
                    f"data.spec={SPEC}",
                    f"data.train={data}/train",
                    "data.batch_size=64",
                    "train.epochs=1",
                    "train.max_steps=3",
                    "train.log_every=1",
                    "model.encoder.memory_size=256",
                    f"model.sequence_encoder={encoder}",
                    f"run_dir={run_root}/{i}",
                    *extra,
                ],
            )
            result = train(cfg)
            results.append({"steps": result.steps, "losses": result.loss_curve, **rewrites[-1]})
    return results


def test_every_sequence_encoder_trains_pipelined_on_two_processes(
    small_synthetic: Path, tmp_path: Path
) -> None:
    """Each encoder x fusion passes the pipeline's fx trace, trains with finite loss, and the feature tables
    stay pipelined; ELASTIC's memory tables read ids computed in the forward, so they cannot be."""
    out = launch(2, tmp_path, train_every_encoder, str(small_synthetic), str(tmp_path))
    for (encoder, extra), rank0, rank1 in zip(ENCODER_RUNS, out[0], out[1], strict=True):
        name = f"{encoder} {extra}"
        assert rank0["steps"] == rank1["steps"] == 3, name
        assert len(rank0["losses"]) == 3 and all(math.isfinite(v) for v in rank0["losses"] + rank1["losses"])
        assert rank0["pipelined"] == rank1["pipelined"] == FEATURE_TABLES, name
        with_memory = encoder == "elastic" and "model.encoder.memory_size=0" not in extra
        memories = [f"model.sequence_encoders.{d}.memory.values" for d in "AB"] if with_memory else []
        assert rank0["not_pipelined"] == memories, name
