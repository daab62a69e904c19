"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded model and optimizer state from every
rank, written atomically, resolvable to the latest complete one, loadable on any world size, and read
without unpickling arbitrary objects.

Layout of ``RUN_DIR/checkpoints/step-000000123/``::

    .metadata, __0_0.distcp, ...   DCP: {"model": DMP state dict, "optim": fused + dense optimizer state}
    rng-rank0.npy, ...             each rank's torch RNG state (plain arrays, loaded with allow_pickle=False)
    spec.yaml                      the feature spec the model was trained with
    meta.json                      step, epoch, reader position, world size, config; written last

A checkpoint is written to ``.tmp-step-...`` and renamed into place by rank 0 once every rank has
finished, so a crash mid-write leaves the previous checkpoint intact; ``latest_checkpoint`` only returns
folders whose ``meta.json`` exists and parses.

``RUN_DIR/best/`` is a copy of the checkpoint with the best validation ``train.select_metric`` so far (never
rotated away by ``keep_checkpoints``). :func:`promote_best` copies into ``.tmp-best``, fsyncs and swaps it in by
rename, so a crash mid-copy leaves the previous best. A run folder given to :func:`resolve_checkpoint`
(``crossrank score`` / ``evaluate``, warm start) means its best checkpoint, else its latest; resuming
(:func:`latest_checkpoint`) always continues from the latest.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from crossrank.features.errors import InputError
from crossrank.pipeline.core.distributed import DistContext

STEP_DIR = re.compile(r"^step-(\d+)$")
BEST_DIR = "best"
_TMP_BEST = ".tmp-best"  # the copy being made
_OLD_BEST = ".old-best"  # the previous best between the two renames of a swap

# What DCP's ``.metadata`` pickle may reference: its own dataclasses and a few torch / builtin value types.
_SAFE_GLOBALS: dict[str, set[str] | None] = {
    "torch.distributed.checkpoint.metadata": None,
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": None,
    "torch": {
        "Size",
        "float32",
        "float16",
        "bfloat16",
        "float64",
        "int64",
        "int32",
        "int8",
        "uint8",
        "bool",
        "strided",
        "contiguous_format",
        "preserve_format",
    },
    "torch.serialization": {"_get_layout"},  # maps a name like "torch.strided" to the layout object
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice", "tuple", "list", "dict"},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = _SAFE_GLOBALS.get(module, set())
        if allowed is None or name in allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"checkpoint metadata references {module}.{name}, which is not allowed")


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, but ``.metadata`` is unpickled with an allowlist (DCP's own ``pickle.load`` would
    run arbitrary code from a tampered file). Tensor data is read by DCP with ``weights_only=True``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with self.fs.create_stream(path, "rb") as f:
            metadata = _RestrictedUnpickler(io.BytesIO(f.read())).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError("checkpoint metadata is not DCP Metadata")
        storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, or an InputError naming the folder."""
    meta = Path(path) / "meta.json"
    try:
        return json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(
            f"not a complete crossrank checkpoint ({e}).",
            where=str(path),
            fix="pass a checkpoints/step-N folder.",
        ) from None


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished checkpoint folder: its ``meta.json`` (written last) exists and parses."""
    try:
        json.loads((Path(path) / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (incomplete and temporary folders are ignored)."""
    root = checkpoint_root(run_dir)
    found = []
    for d in root.iterdir() if root.is_dir() else []:
        m = STEP_DIR.match(d.name)
        if m and is_complete(d):
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's newest complete checkpoint (what a resume continues from), or ``None``."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's complete ``best`` checkpoint, or ``None``. A crash between the two renames of a swap leaves
    the previous best at ``.old-best``, which then still counts."""
    for name in (BEST_DIR, _OLD_BEST):
        if is_complete(Path(run_dir) / name):
            return Path(run_dir) / name
    return None


def resolve_checkpoint(path: str | Path, prefer_best: bool = True) -> Path:
    """What a checkpoint argument names: a checkpoint folder itself; a run folder: its ``best`` checkpoint if
    it is complete (with ``prefer_best``; a resume passes ``False``), else its latest; a run's
    ``checkpoints`` folder: its latest."""
    p = Path(path)
    if (p / "meta.json").is_file():
        return p
    best = best_checkpoint(p) if prefer_best else None
    found = best or latest_checkpoint(p) or latest_checkpoint(p.parent)
    if found is not None:
        return found
    raise InputError(
        "no complete checkpoint here.", where=str(p), fix="pass a run folder or a checkpoints/step-N folder."
    )


def describe_checkpoint(given: str | Path, resolved: Path) -> str:
    """Which checkpoint :func:`resolve_checkpoint` chose for ``given`` and why, in one line."""
    if Path(given) == resolved:
        return f"checkpoint {resolved}"
    if resolved.name in (BEST_DIR, _OLD_BEST):
        meta = read_meta(resolved)
        best = meta.get("result", {}).get("best") or {}
        score = f"valid {best.get('metric')} {best['value']:.4f} at " if "value" in best else ""
        return f"checkpoint {resolved} (the best of {given}: {score}step {meta.get('step')})"
    if checkpoint_root(given) == resolved.parent:
        return f"checkpoint {resolved} (the latest of {given}, which has no best checkpoint)"
    return f"checkpoint {resolved} (the latest of {given})"


def _barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    spec_path: str,
    ctx: DistContext,
    keep: int = 3,
) -> Path:
    """Write a checkpoint from every rank (collective); returns its final folder.

    Args:
        run_dir: the run folder (checkpoints go to ``run_dir/checkpoints``).
        step: global step, names the folder.
        model / optimizer: the DMP model and its combined optimizer (each rank saves its own shards).
        meta: JSON-able training state (epoch, reader position, config, ...).
        spec_path: the feature spec, copied into the checkpoint.
        keep: complete checkpoints to keep (older ones are deleted).
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash of an earlier attempt
        tmp.mkdir(parents=True)
    _barrier(ctx)
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    dcp.save(state, storage_writer=FileSystemWriter(tmp))
    np.save(tmp / f"rng-rank{ctx.rank}.npy", torch.get_rng_state().numpy())
    _barrier(ctx)
    if ctx.is_main:
        shutil.copyfile(spec_path, tmp / "spec.yaml")
        _write_meta(tmp, {**meta, "step": step, "world_size": ctx.world_size})
        _commit(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(ctx)
    return final


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (after a rename), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """``folder/meta.json``, replaced atomically (a reader sees the old or the new one, never a part)."""
    tmp = folder / "meta.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / "meta.json")


def _commit(tmp: Path, final: Path) -> None:
    """The atomic step: rename the finished folder into place, then make the rename durable."""
    if final.exists():  # the same step written again (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(final.parent)


def update_meta(path: Path, changes: dict[str, Any], ctx: DistContext) -> None:
    """Merge ``changes`` into a written checkpoint's ``meta.json`` (collective; rank 0 writes, atomically)."""
    if ctx.is_main:
        _write_meta(path, {**read_meta(path), **changes})
    _barrier(ctx)


def _copy_file(src: Path, dst: Path) -> None:
    shutil.copy2(src, dst)
    _fsync(dst)


def _copy_checkpoint(src: Path, dst: Path, changes: dict[str, Any]) -> None:
    """Copy a checkpoint folder to a new folder ``dst``, every file fsynced, ``meta.json`` (with
    ``changes`` merged in) last."""
    dst.mkdir(parents=True)
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif f.relative_to(src).as_posix() not in ("meta.json", "meta.json.tmp"):
            _copy_file(f, target)
    _write_meta(dst, {**read_meta(src), **changes})
    for d in [dst, *(d for d in dst.rglob("*") if d.is_dir())]:
        _fsync(d)


def promote_best(run_dir: str | Path, checkpoint: Path, changes: dict[str, Any], ctx: DistContext) -> Path:
    """Make a written checkpoint the run's ``best`` (collective; rank 0 copies). The copy goes to
    ``.tmp-best`` (fsynced, ``meta.json`` last, with ``changes`` merged in), then the old best is renamed
    to ``.old-best``, the copy to ``best``, and the old one removed: a crash at any point leaves a complete
    best (:func:`best_checkpoint` falls back to ``.old-best`` between the renames)."""
    run = Path(run_dir)
    final, tmp, old = run / BEST_DIR, run / _TMP_BEST, run / _OLD_BEST
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash of an earlier copy
        _copy_checkpoint(checkpoint, tmp, changes)
        if is_complete(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        elif final.exists():  # a damaged best: drop it (the previous one may still be at .old-best)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(run)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(ctx)
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext
) -> dict[str, Any]:
    """Load a checkpoint into a freshly built (and sharded, for any world size and plan) model and optimizer;
    DCP reshards as needed. Returns its ``meta.json``."""
    path = Path(path)
    meta = read_meta(path)
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        # Optimizer state (e.g. Adam's moments) is created lazily on the first step; DCP loads in place, so
        # materialise it first (a zero-gradient step: parameters do not move) or it would not be restored.
        if hasattr(optimizer, "init_state"):
            optimizer.init_state()
            optimizer.zero_grad(set_to_none=True)
        state["optim"] = optimizer.state_dict()
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(path))
    except CheckpointException as e:  # a BaseException: turn it into the one-paragraph error users get
        # each failure is (exception, traceback frames)
        reasons = "; ".join(str(f[0] if isinstance(f, tuple) else f) for f in e.failures.values())
        raise InputError(
            f"cannot load the checkpoint: {reasons}",
            where=str(path),
            fix="use an untampered checkpoint written by crossrank for this model config.",
        ) from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng = path / f"rng-rank{ctx.rank}.npy"
    if meta.get("world_size") == ctx.world_size and rng.is_file():
        torch.set_rng_state(torch.from_numpy(np.load(rng, allow_pickle=False)))
    return meta
