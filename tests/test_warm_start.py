"""Warm start (``train.init_from``): another run's weights in a new run, across world sizes and feature-spec
evolution (added / dropped features, resized tables), with the decision of every key in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import ShardedTensor

from crossrank.features.errors import InputError
from crossrank.features.spec import load_spec
from crossrank.pipeline.cli import main
from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.scoring.model import load_for_inference
from crossrank.pipeline.training import loop
from crossrank.pipeline.training.checkpoint import SafeFileSystemReader, latest_checkpoint
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.sharding import build_sharded_model
from tests.conftest import launch
from torchx_components import crossrank as components

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"
USER = "model.sparse_arch.embedding_bag_collection.embedding_bags.user.weight"
USER_2 = "model.sparse_arch.embedding_bag_collection.embedding_bags.user_2.weight"
ITEM_A = "model.embedding_collection.embeddings.item_A.weight"
DENSE_IN = "model.dense_arch.model._mlp.0._linear.weight"  # [64, number of dense features]
OVER_IN = "model.over_arch.model.0._mlp.0._linear.weight"  # [128, interactions of the sparse features]
OVER_OUT = "model.over_arch.model.1.weight"


def write_spec(path: Path, *, small: bool = False, item_rows: int = 1025, dim: int = 32) -> Path:
    """synthetic.yaml, or with ``small`` its evolution partner: ``user`` 2048 rows instead of 4096, no
    ``hist_count_B`` and an extra id feature ``user_id_2`` with its own table ``user_2``."""
    text = SPEC.read_text().replace("item_A, num_embeddings: 1025", f"item_A, num_embeddings: {item_rows}")
    if small:
        text = text.replace("user, num_embeddings: 4096", "user, num_embeddings: 2048")
        text = text.replace("  - {name: hist_count_B, kind: dense", "  # - {name: hist_count_B, kind: dense")
        text = text.replace(
            "tables:\n", "tables:\n  - {name: user_2, num_embeddings: 512, embedding_dim: 32}\n"
        )
        text += "  - {name: user_id_2, kind: id, column: user_id, table: user_2, mapping: {type: hash}}\n"
    path.write_text(text.replace("embedding_dim: 32", f"embedding_dim: {dim}"))
    return path


def job(data: Path, spec: Path, run_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"data.spec={spec}",
            f"data.train={data / 'train'}",
            "data.batch_size=128",
            "train.max_steps=3",
            "train.log_every=3",
            "train.resume=never",
            "model.encoder.memory_size=256",
            f"run_dir={run_dir}",
            *extra,
        ],
    )


def full(t: torch.Tensor) -> torch.Tensor:
    """A state tensor as one plain tensor (a ShardedTensor's local shards put together: all of them, on
    one process)."""
    if not isinstance(t, ShardedTensor):
        return t.detach().clone()
    out = torch.zeros(t.size(), dtype=t.dtype)
    for s in t.local_shards():
        offsets, sizes = s.metadata.shard_offsets, s.metadata.shard_sizes
        out[tuple(slice(o, o + n) for o, n in zip(offsets, sizes, strict=True))] = s.tensor
    return out


def saved(checkpoint: Path, key: str) -> torch.Tensor:
    """One tensor of a checkpoint (a flattened DCP key), read whole."""
    md = SafeFileSystemReader(checkpoint).read_metadata().state_dict_metadata[key]
    t = torch.empty(md.size, dtype=md.properties.dtype)  # type: ignore[union-attr]
    dcp.load({key: t}, storage_reader=SafeFileSystemReader(checkpoint))
    return t


def probe_batch(spec_path: str, data: str):  # type: ignore[no-untyped-def]
    return next(iter(ParquetBatchReader(load_spec(spec_path), Path(data) / "valid", 256).batches()))


def logits_of(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        _, (_, logits, *_) = model(batch)
    return logits


def train_watching(cfg: Any, data: str, keys: list[str]) -> dict[str, Any]:
    """``train(cfg)``, recording just before the first step: the logits of a validation batch, the start
    position, the ``keys``' state (this rank's shards: (offsets, tensor)) and the optimizer state."""
    seen: dict[str, Any] = {}
    fit = loop.Trainer.fit

    def spy(self: loop.Trainer) -> None:
        model = self.built.model
        state = model.state_dict()
        seen["logits"] = logits_of(model, probe_batch(self.spec.path, data))
        seen["start"] = (self.start_epoch, self.start_step, self.result.steps, len(self.result.loss_curve))
        seen["shards"] = {
            k: [(list(s.metadata.shard_offsets), s.tensor.clone()) for s in state[k].local_shards()]
            if isinstance(state[k], ShardedTensor)
            else [([0, 0], state[k].clone())]
            for k in keys
        }
        seen["optim"] = {
            k: {n: full(t) for n, t in v.items()}
            for k, v in self.built.optimizer.state_dict()["state"].items()
        }
        fit(self)

    with mock.patch.object(loop.Trainer, "fit", spy):
        result = loop.train(cfg)
    return {**seen, "steps": result.steps, "warm_start": result.warm_start}


def assemble(shards: list[tuple[list[int], torch.Tensor]], shape: list[int]) -> torch.Tensor:
    out = torch.full(shape, float("nan"))
    for (row, col), t in shards:
        out[row : row + t.shape[0], col : col + t.shape[1]] = t
    return out


def decisions(report: dict[str, Any]) -> dict[str, str]:
    return {e["key"]: e["decision"] for e in report["keys"]}


@pytest.fixture(scope="module")
def sources(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two source runs on one process: the full spec, and the small one (see ``write_spec``)."""
    tmp = tmp_path_factory.mktemp("warm_sources")
    out = {}
    for name, small in (("full", False), ("small", True)):
        spec = write_spec(tmp / f"{name}.yaml", small=small)
        loop.train(job(small_synthetic, spec, tmp / name))
        out[name] = latest_checkpoint(tmp / name)
    return out


def test_warm_start_one_to_two_processes_and_back(
    sources: dict[str, Path], small_synthetic: Path, tmp_path: Path
) -> None:
    """1 -> 2 processes (item_A grown from 1025 to 1537 rows: sharded over both ranks), then 2 -> 1 from the
    2-process run: the loaded model scores like the source, training starts at step 0 and runs."""
    data, source = str(small_synthetic), sources["full"]
    grown = write_spec(tmp_path / "grown.yaml", item_rows=1537)
    cfg = job(small_synthetic, grown, tmp_path / "two", f"train.init_from={source.parent.parent}")
    out = launch(2, tmp_path, train_watching, cfg, data, [ITEM_A])
    expected = logits_of(
        load_for_inference(source, init_distributed()).sharded.model, probe_batch(str(SPEC), data)
    )
    old_items = saved(source, f"model.{ITEM_A}")
    shards = [s for r in (0, 1) for s in out[r]["shards"][ITEM_A]]
    items = assemble(shards, [1537, 32])
    for r in (0, 1):  # no ids >= 300 in the data: the grown rows are never looked up
        np.testing.assert_allclose(out[r]["logits"], expected, rtol=1e-5, atol=1e-6)
        assert out[r]["start"] == (0, 0, 0, 0) and out[r]["steps"] == 3
    assert torch.equal(items[:1025], old_items)  # common rows loaded, wherever each rank's rows start
    bound = (1 / 1537) ** 0.5  # TorchRec's default init: uniform(-sqrt(1/rows), sqrt(1/rows))
    assert items[1025:].abs().max() <= bound and items[1025:].abs().min() > 0
    assert decisions(out[0]["warm_start"])[ITEM_A] == "resized"
    assert all(out[r]["shards"][ITEM_A] for r in (0, 1)), "item_A no longer split over both ranks"

    two = latest_checkpoint(tmp_path / "two")
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    back = job(small_synthetic, grown, tmp_path / "one", f"train.init_from={two}", "train.init_strict=true")
    one = train_watching(back, data, [])
    expected = logits_of(
        load_for_inference(two, init_distributed()).sharded.model, probe_batch(str(grown), data)
    )
    np.testing.assert_allclose(one["logits"], expected, rtol=1e-5, atol=1e-6)
    assert one["start"] == (0, 0, 0, 0) and one["steps"] == 3
    assert set(decisions(one["warm_start"]).values()) == {"loaded"}  # strict: everything matched
    assert OVER_OUT not in one["optim"]  # no init_optimizer: Adam starts lazily, as in a fresh run
    assert not one["optim"][USER]["user.momentum1"].any()


def test_added_dense_feature_dropped_table_grown_table_with_optimizer(
    sources: dict[str, Path], small_synthetic: Path, tmp_path: Path
) -> None:
    """Small spec -> full spec: ``hist_count_B`` is added (the dense arch input grows), ``user_2`` dropped
    (the over arch input shrinks) and ``user`` grows 2048 -> 4096 rows; the optimizer state comes along
    for the loaded keys only."""
    source, run_dir = sources["small"], tmp_path / "run"
    cfg = job(small_synthetic, SPEC, run_dir, f"train.init_from={source}", "train.init_optimizer=true")
    seen = train_watching(cfg, str(small_synthetic), [USER, ITEM_A])
    got = decisions(seen["warm_start"])
    assert got[DENSE_IN] == got[OVER_IN] == "reinitialised"
    assert got[USER] == "resized" and got[USER_2] == "dropped" and got[ITEM_A] == "loaded"
    assert {got[k] for k in got if k not in (DENSE_IN, OVER_IN, USER, USER_2)} == {"loaded"}
    user = assemble(seen["shards"][USER], [4096, 32])
    assert torch.equal(user[:2048], saved(source, f"model.{USER}"))  # common rows from the source
    fresh = build_sharded_model(load_spec(SPEC), cfg, init_distributed()).model.state_dict()
    assert torch.equal(user[2048:], full(fresh[USER])[2048:])  # new rows keep their initialiser
    assert torch.equal(assemble(seen["shards"][ITEM_A], [1025, 32]), saved(source, f"model.{ITEM_A}"))
    optim, prefix = seen["optim"], "optim.state."
    assert torch.equal(optim[OVER_OUT]["exp_avg"], saved(source, f"{prefix}{OVER_OUT}.exp_avg"))
    assert torch.equal(optim[ITEM_A]["item_A.momentum1"], saved(source, f"{prefix}{ITEM_A}.item_A.momentum1"))
    assert optim[OVER_OUT]["exp_avg"].any() and optim[OVER_OUT]["step"] == 3
    assert not optim[USER]["user.momentum1"].any()  # resized: fresh optimizer state
    assert optim[DENSE_IN]["step"] == 0 and not optim[DENSE_IN]["exp_avg"].any()  # reinitialised: fresh
    assert seen["start"] == (0, 0, 0, 0) and seen["steps"] == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["warm_start"]["counts"] == {
        "loaded": len(got) - 4,
        "resized": 1,
        "reinitialised": 2,
        "new": 0,
        "dropped": 1,
    }
    entry = next(e for e in metrics["warm_start"]["keys"] if e["key"] == USER)
    assert entry == {
        "key": USER,
        "decision": "resized",
        "checkpoint_shape": [2048, 32],
        "model_shape": [4096, 32],
        "optimizer": "fresh",
        "table": "user",
    }
    assert metrics["steps"] == 3 and len(metrics["loss_curve"]) == 1  # nothing of the source's curves


def test_dropped_dense_feature_added_table_shrunk_table_without_optimizer(
    sources: dict[str, Path], small_synthetic: Path, tmp_path: Path
) -> None:
    """Full spec -> small spec, from the run folder: ``hist_count_B`` dropped, ``user_2`` new (keeps its
    initialiser), ``user`` shrinks to its first 2048 rows; no optimizer state is read."""
    source = sources["full"]
    small = write_spec(tmp_path / "small.yaml", small=True)
    cfg = job(small_synthetic, small, tmp_path / "run", f"train.init_from={source.parent.parent}")
    seen = train_watching(cfg, str(small_synthetic), [USER, USER_2])
    got = decisions(seen["warm_start"])
    assert (
        got[DENSE_IN] == got[OVER_IN] == "reinitialised" and got[USER] == "resized" and got[USER_2] == "new"
    )
    assert torch.equal(assemble(seen["shards"][USER], [2048, 32]), saved(source, f"model.{USER}")[:2048])
    fresh = build_sharded_model(load_spec(small), cfg, init_distributed()).model.state_dict()
    assert torch.equal(assemble(seen["shards"][USER_2], [512, 32]), full(fresh[USER_2]))
    assert OVER_OUT not in seen["optim"] and not seen["optim"][ITEM_A]["item_A.momentum1"].any()
    assert {e["optimizer"] for e in seen["warm_start"]["keys"]} == {"fresh"}


def test_changed_embedding_dim_names_the_tables(
    sources: dict[str, Path], small_synthetic: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "dim16.yaml", dim=16)
    cfg = job(small_synthetic, spec, tmp_path / "run", f"train.init_from={sources['full']}")
    with pytest.raises(
        InputError, match=r"table 'user': embedding_dim 32 in the checkpoint, 16 in this model"
    ) as e:
        loop.train(cfg)
    assert str(sources["full"]) in str(e.value) and "rename the table" in str(e.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_strict_lists_every_key_not_loaded(
    sources: dict[str, Path], small_synthetic: Path, tmp_path: Path
) -> None:
    cfg = job(
        small_synthetic,
        SPEC,
        tmp_path / "run",
        f"train.init_from={sources['small']}",
        "train.init_strict=true",
    )
    with pytest.raises(InputError, match=r"train\.init_strict") as e:
        loop.train(cfg)
    for key, decision in ((DENSE_IN, "reinitialised"), (USER, "resized"), (USER_2, "dropped")):
        assert f"{key} ({decision})" in str(e.value)


def test_resume_wins_over_init_from(sources: dict[str, Path], small_synthetic: Path, tmp_path: Path) -> None:
    """A restarted warm-started run continues from its own checkpoint (train.resume=auto), and keeps the
    report of the warm start it was started with instead of warm-starting again."""
    run_dir, source = tmp_path / "run", f"train.init_from={sources['full']}"
    first = loop.train(job(small_synthetic, SPEC, run_dir, source))
    again = job(small_synthetic, SPEC, run_dir, source, "train.resume=auto", "train.epochs=2")
    result = loop.train(again)
    assert result.checkpoint_load_s > 0 and result.steps == 6
    assert result.warm_start == first.warm_start and result.warm_start["counts"]["loaded"] > 0


def test_cli_and_torchx_pass_init_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    got: list[Any] = []
    monkeypatch.setattr(loop, "train", got.append)
    argv = ["train", "--set", f"data.train={tmp_path}", "--init-from", "runs/base", "--init-optimizer"]
    assert main(argv) in (0, None)
    assert got[0].train.init_from == "runs/base" and got[0].train.init_optimizer is True
    cmd = components.train("train.epochs=2", init_from="runs/base", init_optimizer=True).roles[0].args[1]
    assert (
        "train --config configs/demo.yaml --init-from runs/base --init-optimizer --set train.epochs=2" in cmd
    )
    assert "--init" not in components.train().roles[0].args[1]
