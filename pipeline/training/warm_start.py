"""Warm start: a NEW run starts from another run's checkpoint, also when the feature spec evolved.

The checkpoint's DCP metadata (read with :class:`SafeFileSystemReader`, no arbitrary unpickling) is compared
key by key with the freshly built, sharded model's ``state_dict()`` (any world size, any plan):

    ``loaded``         in both with the same shape: DCP reshards it into this run's plan.
    ``resized``        an embedding table whose row count changed (same ``embedding_dim``): rows
                       ``[0, min(old, new))`` are loaded, the others keep their initialiser.
    ``reinitialised``  a dense parameter whose shape changed (e.g. the over arch input after a feature was
                       added): it keeps its initialiser.
    ``new``            only in the model (a new feature / table / layer): it keeps its initialiser.
    ``dropped``        only in the checkpoint: ignored.

A table whose ``embedding_dim`` changed is an error (its rows cannot be reused), as is any key that is not
``loaded`` under ``strict``. Optimizer state is loaded, with ``init_optimizer``, for ``loaded`` keys only;
everything else (and every key without it) starts from a fresh optimizer state. The training position,
RNG, loss curves and metrics of the source run are never read: step and epoch start at 0.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from crossrank.features.errors import InputError
from crossrank.pipeline.core.distributed import DistContext
from crossrank.pipeline.training.checkpoint import (
    SafeFileSystemReader,
    check_checkpoint_files,
    resolve_checkpoint,
)
from crossrank.pipeline.training.sharding import ShardedRanker

DECISIONS: tuple[str, ...] = ("loaded", "resized", "reinitialised", "new", "dropped")
_TABLE_KEY = re.compile(r"^(?P<module>.+)\.(?:embedding_bags|embeddings)\.(?P<table>[^.]+)\.weight$")


@dataclass
class KeyDecision:
    """What the warm start did with one state-dict key.

    Args:
        key: the model's state-dict key, e.g. ``model.over_arch.model.1.weight``.
        decision: one of :data:`DECISIONS`.
        checkpoint_shape / model_shape: the key's shape on either side (``None`` where it is absent).
        optimizer: ``loaded`` (its optimizer state came from the checkpoint), ``fresh`` or ``-`` (dropped).
        table: the embedding table behind the key, if it is one.
    """

    key: str
    decision: str
    checkpoint_shape: list[int] | None
    model_shape: list[int] | None
    optimizer: str = "fresh"
    table: str = ""


@dataclass
class WarmStartReport:
    """The decision of every state-dict key of a warm start (printed as a table, kept in metrics.json).

    Example::

        report = warm_start("runs/base", built, ctx, init_optimizer=False, strict=False)
        print(report.format())
        report.keys("resized")  # e.g. ["model.sparse_arch.embedding_bag_collection.embedding_bags.user.weight"]
    """

    source: str
    init_optimizer: bool
    strict: bool
    entries: list[KeyDecision] = field(default_factory=list)
    load_s: float = 0.0

    def keys(self, decision: str) -> list[str]:
        """The keys with one decision, in model order."""
        return [e.key for e in self.entries if e.decision == decision]

    def counts(self) -> dict[str, int]:
        return {d: len(self.keys(d)) for d in DECISIONS}

    def format(self) -> str:
        """A summary line, then ``key | decision | checkpoint shape | model shape | optimizer`` per key."""
        rows = [("key", "decision", "checkpoint shape", "model shape", "optimizer")]
        rows += [
            (e.key, e.decision, _shape_text(e.checkpoint_shape), _shape_text(e.model_shape), e.optimizer)
            for e in self.entries
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        counts = ", ".join(f"{n} {d}" for d, n in self.counts().items() if n)
        optim = "loaded for the loaded keys" if self.init_optimizer else "fresh"
        head = f"warm start from {self.source} in {self.load_s:.1f}s: {counts}; optimizer state {optim}"
        return "\n".join([head, *lines])

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form written to ``metrics.json`` under ``warm_start``."""
        return {
            "source": self.source,
            "init_optimizer": self.init_optimizer,
            "strict": self.strict,
            "load_s": self.load_s,
            "counts": self.counts(),
            "keys": [e.__dict__ for e in self.entries],
        }


def _shape_text(shape: list[int] | None) -> str:
    """``4096x32``, ``scalar`` for a 0-d tensor, ``-`` when absent."""
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def _saved_tensors(path: Path) -> dict[str, TensorStorageMetadata]:
    """Every tensor of the checkpoint (flattened DCP key -> its metadata), read without unpickling code."""
    check_checkpoint_files(path)  # a deleted or truncated file: one error naming it
    try:
        metadata = SafeFileSystemReader(path).read_metadata()
    except Exception as e:  # a tampered .metadata file
        raise InputError(
            f"cannot read the checkpoint's metadata ({e}).",
            where=str(path),
            fix="pass an untampered checkpoint folder written by crossrank (or its run folder).",
        ) from None
    return {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _table_names(built: ShardedRanker, keys: list[str]) -> dict[str, str]:
    """State-dict key -> table name, for the keys of the model's TorchRec tables (however they are sharded)."""
    out = {}
    for key in keys:
        m = _TABLE_KEY.match(key)
        if m and m.group("table") in built.plan.plan.get(m.group("module"), {}):
            out[key] = m.group("table")
    return out


def _decide(
    saved: dict[str, list[int]], model: dict[str, list[int]], tables: dict[str, str], path: Path
) -> list[KeyDecision]:
    """One decision per key of the model, then one per key only in the checkpoint; raises when a table's
    ``embedding_dim`` changed."""
    entries, bad_dims = [], []
    for key, shape in model.items():
        old, table = saved.get(key), tables.get(key, "")
        if old is None:
            decision = "new"
        elif old == shape:
            decision = "loaded"
        elif table and len(old) == len(shape) == 2 and old[1] != shape[1]:
            bad_dims.append(
                f"table {table!r}: embedding_dim {old[1]} in the checkpoint, {shape[1]} in this model"
            )
            continue
        else:
            decision = "resized" if table else "reinitialised"
        entries.append(KeyDecision(key, decision, old, shape, table=table))
    if bad_dims:
        raise InputError(
            f"cannot warm start: {'; '.join(bad_dims)}. A table's rows cannot be reused at another dimension.",
            where=str(path),
            fix="keep the embedding_dim of the checkpoint's spec.yaml, or rename the table in the feature spec "
            "to start it fresh (a new model-wide dimension means training without train.init_from).",
        )
    entries += [KeyDecision(k, "dropped", s, None, optimizer="-") for k, s in saved.items() if k not in model]
    return entries


def _check(report: WarmStartReport, path: Path) -> None:
    """Nothing loaded is an error (a warm start that reused nothing is a mistake), and so, under ``strict``,
    is any key that is not ``loaded``."""
    if not report.keys("loaded") and not report.keys("resized"):
        raise InputError(
            "no parameter of the checkpoint matches this model, so the warm start would reuse nothing.",
            where=str(path),
            fix="point train.init_from at a crossrank checkpoint of this model family, or remove it.",
        )
    differ = [f"{e.key} ({e.decision})" for e in report.entries if e.decision != "loaded"]
    if report.strict and differ:
        raise InputError(
            f"train.init_strict is set but {len(differ)} key(s) are not loaded as they are: {', '.join(differ)}.",
            where=str(path),
            fix="warm start from a checkpoint of the same spec and model config, or set train.init_strict=false "
            "to load what matches (new / resized / reinitialised keys keep their initialiser).",
        )


def _dcp_load(state: dict[str, Any], path: Path) -> None:
    """DCP-load ``state`` in place (collective), with DCP's failures turned into one InputError."""
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(path))
    except CheckpointException as e:  # a BaseException: each failure is (exception, traceback frames)
        reasons = "; ".join(str(f[0] if isinstance(f, tuple) else f) for f in e.failures.values())
        raise InputError(
            f"cannot load the checkpoint for the warm start: {reasons}",
            where=str(path),
            fix="use an untampered checkpoint written by crossrank.",
        ) from None


def _copy_common_rows(full: torch.Tensor, target: torch.Tensor, table: str) -> None:
    """Rows ``[0, min(old, new))`` of the checkpoint's whole table ``full`` into this rank's part of
    ``target``: each local shard of a ShardedTensor at its offsets (table-, column-, row-wise), or the
    replicated tensor of a data-parallel table."""
    if isinstance(target, ShardedTensor):
        parts = [(s.tensor, s.metadata.shard_offsets) for s in target.local_shards()]
    elif type(target) is torch.Tensor:
        parts = [(target, [0, 0])]
    else:
        raise InputError(
            f"table {table!r} is held as a {type(target).__name__}, which a resizing warm start cannot fill.",
            fix="keep the table's num_embeddings as in the checkpoint, or rename the table to start it fresh.",
        )
    common = min(full.shape[0], target.shape[0])
    with torch.no_grad():
        for local, (row, col) in parts:
            n = min(local.shape[0], common - row)
            if n > 0:
                local[:n].copy_(full[row : row + n, col : col + local.shape[1]])


def _optimizer_targets(
    optimizer: torch.optim.Optimizer, loaded: set[str], saved: dict[str, list[int]]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The optimizer's full state dict (state materialised first: Adam's is lazy) and the part of it to
    read from the checkpoint: every state of a ``loaded`` key, when the checkpoint holds them all with the
    same shapes (a parameter's state is loaded whole or not at all). The other keys' state is zeroed, as
    a fresh optimizer's (the materialising step counted one step)."""
    if hasattr(optimizer, "init_state"):
        optimizer.init_state()
        optimizer.zero_grad(set_to_none=True)
    full = optimizer.state_dict()
    targets: dict[str, dict[str, Any]] = {}
    for key, states in full["state"].items():
        tensors = {n: t for n, t in states.items() if isinstance(t, torch.Tensor)}
        same = all(saved.get(f"optim.state.{key}.{n}") == list(t.shape) for n, t in tensors.items())
        if key in loaded and tensors and same:
            targets[key] = tensors
            continue
        for t in tensors.values():
            for local in [s.tensor for s in t.local_shards()] if isinstance(t, ShardedTensor) else [t]:
                local.zero_()
    return full, targets


def warm_start(
    source: str | Path, built: ShardedRanker, ctx: DistContext, *, init_optimizer: bool, strict: bool
) -> WarmStartReport:
    """Load another run's checkpoint into the freshly built model (and optimizer) of a new run; collective.

    Args:
        source: a ``checkpoints/step-N`` folder or a run folder (resolved by ``resolve_checkpoint``).
        built: the new run's sharded model and optimizer, before any step.
        ctx: this process's place in the job (any world size: DCP reshards).
        init_optimizer: also load the optimizer state of the ``loaded`` keys.
        strict: any key that is not ``loaded`` is an error.

    Returns:
        The per-key decisions (the same on every rank).
    """
    t0 = time.perf_counter()
    path = resolve_checkpoint(source)
    saved_md = _saved_tensors(path)
    saved = {k: list(md.size) for k, md in saved_md.items()}
    model_state = built.model.state_dict()
    model_shapes = {k: list(v.shape) for k, v in model_state.items() if isinstance(v, torch.Tensor)}
    tables = _table_names(built, list(model_shapes))
    saved_model = {k.removeprefix("model."): s for k, s in saved.items() if k.startswith("model.")}
    report = WarmStartReport(
        str(path), init_optimizer, strict, _decide(saved_model, model_shapes, tables, path)
    )
    _check(report, path)
    loaded = set(report.keys("loaded"))
    resized = {
        k: torch.empty(saved_model[k], dtype=saved_md[f"model.{k}"].properties.dtype)
        for k in report.keys("resized")
    }
    state: dict[str, Any] = {"model": {**{k: model_state[k] for k in loaded}, **resized}}
    full_optim: dict[str, Any] = {}
    optim_targets: dict[str, dict[str, Any]] = {}
    if init_optimizer:
        full_optim, optim_targets = _optimizer_targets(built.optimizer, loaded, saved)
        state["optim"] = {"state": optim_targets}
    _dcp_load(state, path)
    for key, full in resized.items():
        _copy_common_rows(full, model_state[key], tables[key])
    built.model.load_state_dict(model_state)
    if init_optimizer:
        built.optimizer.load_state_dict(full_optim)
    for e in report.entries:
        e.optimizer = "loaded" if e.key in optim_targets else e.optimizer
    report.load_s = time.perf_counter() - t0
    return report
