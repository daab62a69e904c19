"""A checkpoint's model for inference, sharded for this job's world size."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec, load_spec
from crossrank.features.storage import as_path
from crossrank.pipeline.core.distributed import DistContext
from crossrank.pipeline.training.checkpoint import (
    describe_checkpoint,
    load_checkpoint,
    read_meta,
    resolve_checkpoint,
)
from crossrank.pipeline.training.config import JobConfig, config_from_dict
from crossrank.pipeline.training.sharding import ShardedRanker, build_sharded_model

SPEC_FILE = "spec.yaml"  # the feature spec a checkpoint was trained with, copied into it by save_checkpoint
_OTHER_CHECKPOINT = "use another checkpoint of the run (an earlier checkpoints/step-N, or its best)"
# Encoder settings added after checkpoints were first written, with the value that rebuilds the model an older
# checkpoint was trained as: its meta.json holds its whole config, so a missing key means older code.
_ADDED_ENCODER_KEYS = {
    "event_residual": False,
    "query_init_std": 0.02,
    "recency_prior": 0.0,
    "mean_windows": [],
}


@dataclass
class LoadedModel:
    """A checkpoint's model, sharded for this job's world size, with the spec and config it was trained with."""

    sharded: ShardedRanker
    spec: FeatureSpec
    cfg: JobConfig
    checkpoint: Path


def checkpoint_spec(path: Path) -> FeatureSpec:
    """The feature spec a checkpoint was trained with (its own ``spec.yaml``: ``score`` and ``evaluate``
    take no spec, the model only fits the one it was trained with); an InputError when it is missing."""
    spec_path = as_path(path) / SPEC_FILE
    if not spec_path.is_file():
        raise InputError(
            f"the checkpoint is incomplete: its {SPEC_FILE}, the feature spec it was trained with (which "
            "`score` and `evaluate` always use), is missing.",
            where=str(spec_path),
            fix=f"{_OTHER_CHECKPOINT}, or copy the spec the run was trained with (data.spec in the run "
            f"folder's config.yaml) to {spec_path}.",
        )
    return load_spec(spec_path)


def checkpoint_config(path: Path) -> JobConfig:
    """The job config a checkpoint was trained with (from its ``meta.json``)."""
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict):
        raise InputError(
            "the checkpoint's meta.json has no training config.",
            where=str(as_path(path) / "meta.json"),
            fix=f"{_OTHER_CHECKPOINT}.",
        )
    raw = copy.deepcopy(meta["config"])
    model = raw.get("model")
    encoder = model.get("encoder") if isinstance(model, dict) else None
    if isinstance(encoder, dict):
        for key, value in _ADDED_ENCODER_KEYS.items():
            encoder.setdefault(key, value)
    return config_from_dict(raw, str(as_path(path) / "meta.json"))


def load_for_inference(checkpoint: str | Path, ctx: DistContext) -> LoadedModel:
    """Build the model a checkpoint was trained as, planned for *this* world size, and load its weights
    (DCP reshards them); the optimizer state is not read. A run folder means its best checkpoint, else its
    latest; rank 0 prints which one is used, and that its own spec is."""
    path = resolve_checkpoint(checkpoint)
    if ctx.is_main:
        print(f"using {describe_checkpoint(checkpoint, path)}")
    spec = checkpoint_spec(path)
    cfg = checkpoint_config(path)
    if ctx.is_main:
        print(f"feature spec: {path / SPEC_FILE} (the checkpoint's own, which it was trained with)")
    sharded = build_sharded_model(spec, cfg, ctx)
    load_checkpoint(path, sharded.model, None, ctx)
    sharded.model.eval()
    return LoadedModel(sharded, spec, cfg, path)
