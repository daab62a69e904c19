"""A checkpoint's model for inference, sharded for this job's world size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crossrank.features.spec import FeatureSpec, load_spec
from crossrank.pipeline.core.distributed import DistContext
from crossrank.pipeline.training.checkpoint import (
    describe_checkpoint,
    load_checkpoint,
    read_meta,
    resolve_checkpoint,
)
from crossrank.pipeline.training.config import JobConfig, config_from_dict
from crossrank.pipeline.training.sharding import ShardedRanker, build_sharded_model


@dataclass
class LoadedModel:
    """A checkpoint's model, sharded for this job's world size, with the spec and config it was trained with."""

    sharded: ShardedRanker
    spec: FeatureSpec
    cfg: JobConfig
    checkpoint: Path


def load_for_inference(checkpoint: str | Path, ctx: DistContext) -> LoadedModel:
    """Build the model a checkpoint was trained as, planned for *this* world size, and load its weights
    (DCP reshards them); the optimizer state is not read. A run folder means its best checkpoint, else its
    latest; rank 0 prints which one is used."""
    path = resolve_checkpoint(checkpoint)
    if ctx.is_main:
        print(f"using {describe_checkpoint(checkpoint, path)}")
    meta = read_meta(path)
    spec = load_spec(path / "spec.yaml")
    cfg = config_from_dict(meta["config"], str(path / "meta.json"))
    sharded = build_sharded_model(spec, cfg, ctx)
    load_checkpoint(path, sharded.model, None, ctx)
    sharded.model.eval()
    return LoadedModel(sharded, spec, cfg, path)
