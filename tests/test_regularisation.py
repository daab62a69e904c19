"""``train.sparse_weight_decay`` reaches fbgemm's fused optimizer with the L2 mode (the kwarg alone leaves
fbgemm's mode at NONE: no decay), and ``train.dense_weight_decay`` makes the dense optimizer AdamW."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossrank.pipeline.core.distributed import launch_local

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"


def _optimizer_settings(sparse_wd: float, dense_wd: float) -> dict[str, Any]:
    from crossrank.features.spec import load_spec
    from crossrank.pipeline.core.distributed import init_distributed
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.sharding import build_sharded_model

    ctx = init_distributed()
    sets = [f"data.spec={SPEC}", "data.train=unused", "model.sequence_encoder=mean"]
    sets += [f"train.sparse_weight_decay={sparse_wd}", f"train.dense_weight_decay={dense_wd}"]
    built = build_sharded_model(load_spec(SPEC), load_config(None, sets), ctx)
    tables = []  # (weight_decay, mode) of every fused table-batched kernel
    for module in built.model.modules():
        for lookup in getattr(module, "_lookups", []):
            for emb in getattr(lookup, "_emb_modules", []):
                args = emb._emb_module.optimizer_args
                tables.append((args.weight_decay, int(args.weight_decay_mode)))
    dense = [opt for _, opt in built.optimizer.optimizers if "weight_decay" in opt.param_groups[0]]
    group = dense[0].param_groups[0]
    return {"tables": tables, "dense": (group["weight_decay"], group.get("decoupled_weight_decay", False))}


def test_weight_decays_reach_the_optimizers(tmp_path: Path) -> None:
    on = launch_local(1, tmp_path, _optimizer_settings, 0.01, 0.02)[0]
    assert on["tables"] and all(t == (0.01, 1) for t in on["tables"])  # WeightDecayMode.L2
    assert on["dense"] == (0.02, True)  # AdamW: decoupled
    off = launch_local(1, tmp_path, _optimizer_settings, 0.0, 0.0)[0]
    assert all(mode == 0 for _, mode in off["tables"]) and off["dense"] == (0.0, False)
