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
folders whose ``meta.json`` exists and parses. A second save of the same step never deletes the first before
the new one is in place: the old folder is renamed to ``.old-step-...``, the new one to ``step-...``, and
only then is the old one removed (a crash between the renames leaves the old one at ``.old-step-...``, which
then still counts). Leftovers of crashed writes, and checkpoints beyond ``keep``, are removed at the next
save; a folder that cannot be removed is reported on stderr, not ignored.

On an object store (``run_dir: s3://...``; :mod:`crossrank.features.storage`), which has no rename, DCP's
``FsspecWriter`` writes the shards in place at ``step-...``, and ``meta.json``, written last by rank 0 once
every rank has finished, is the commit: "latest" is the highest step whose ``meta.json`` exists, exactly as
locally. A re-save of a step first removes the old copy's ``meta.json``, so a crash mid-write leaves an
incomplete folder (ignored, removed at the next save) and "latest" falls back to the previous checkpoint.

Before DCP reads a checkpoint, :func:`check_checkpoint_files` checks ``.metadata`` and the size of every
shard file it names, so a damaged checkpoint is one :class:`InputError` naming the file (no DCP traceback);
a shard whose bytes are corrupt is reported with its name as well.

``RUN_DIR/best/`` is a copy of the checkpoint with the best validation ``train.select_metric`` so far (never
rotated away by ``keep_checkpoints``). :func:`promote_best` copies into ``.tmp-best``, fsyncs and swaps it in by
rename, so a crash mid-copy leaves the previous best. A run folder given to :func:`resolve_checkpoint`
(``crossrank score`` / ``evaluate``, warm start) means its best checkpoint, else its latest; resuming
(:func:`latest_checkpoint`) always continues from the latest.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._fsspec_filesystem import FileSystem as FsspecFileSystem
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future
from tqdm import tqdm

from crossrank.features.errors import InputError
from crossrank.features.spec import copy_spec
from crossrank.features.storage import (
    ObjectPath,
    as_path,
    cache_dir,
    copy_file,
    is_remote,
    rmtree,
    upload_tree,
    write_bytes_atomic,
)
from crossrank.pipeline.core.atomic import fsync_path
from crossrank.pipeline.core.distributed import DistContext, all_reduce_max

STEP_DIR = re.compile(r"^step-(\d+)$")
# The previous copy of a step, between the two renames of a re-save (see ``_commit``).
_OLD_STEP_DIR = re.compile(r"^\.old-step-(\d+)$")
_TMP_STEP_DIR = re.compile(r"^\.tmp-step-(\d+)$")  # a checkpoint being written (or left by a crash)
# DCP's global metadata file, written by ``FileSystemWriter`` with rank coordination (how ``dcp.save`` runs
# here). DCP keeps the name private (``filesystem._metadata_fn``); tests/test_faults.py pins it.
METADATA_FILE = ".metadata"
# What torch.load says about bytes that are not a saved tensor (truncated or corrupt zip records).
_UNREADABLE = re.compile(r"PytorchStreamReader|miniz|zip archive|central directory|unpickl", re.IGNORECASE)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DAMAGED_FIX = (
    "use another checkpoint of the run (an earlier checkpoints/step-N, or its best); to resume training, move "
    "this folder out of checkpoints/ so that the run continues from its previous checkpoint."
)
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
    run arbitrary code from a tampered file), read once and kept, and a shard file that cannot be read is an
    :class:`InputError` naming it. Tensor data is read by DCP with ``weights_only=True``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        location = as_path(path)
        super().__init__(location if not is_remote(location) else str(location))
        if is_remote(location):  # DCP's fsspec file system (what FsspecReader sets up)
            self.fs = FsspecFileSystem()  # type: ignore[assignment]
            self.path = self.fs.init_path(str(location))
        self._metadata: Metadata | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's global metadata (crossrank never writes DCP's rank-local ones, so ``rank`` is
        ignored); raises OSError or UnpicklingError when it is missing or not DCP metadata."""
        if self._metadata is None:
            with (as_path(str(self.checkpoint_id)) / METADATA_FILE).open("rb") as f:
                metadata = _RestrictedUnpickler(io.BytesIO(f.read())).load()
            if not isinstance(metadata, Metadata):
                raise pickle.UnpicklingError("checkpoint metadata is not DCP Metadata")
            storage_meta = getattr(metadata, "storage_meta", None) or StorageMeta()
            storage_meta.load_id = self.load_id
            metadata.storage_meta = storage_meta
            self._metadata = metadata
        return self._metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """DCP's read, one shard file at a time, so that a file torch cannot read is named."""
        by_file: dict[str, list[Any]] = {}
        for item in plan.items:
            by_file.setdefault(_shard_name(self.storage_data[item.storage_index]), []).append(item)
        for name, items in by_file.items():
            try:
                super().read_data(replace(plan, items=items), planner).wait()
            except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
                if isinstance(e, RuntimeError) and not _UNREADABLE.search(str(e)):
                    raise  # not the file's bytes (e.g. a tensor that does not fit the model)
                raise InputError(
                    f"cannot load the checkpoint: its shard file {name} is damaged "
                    f"({type(e).__name__}: {str(e).split('. ')[0]}).",
                    where=str(as_path(str(self.checkpoint_id)) / name),
                    fix=_DAMAGED_FIX,
                ) from None
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut


def _shard_name(info: Any) -> str:
    """The file a DCP storage entry (``filesystem._StorageInfo``) lives in, relative to the checkpoint."""
    return str(getattr(info, "relative_path", "?"))


def check_checkpoint_files(path: str | Path) -> SafeFileSystemReader:
    """A reader for the checkpoint at ``path`` whose metadata is read, after checking that ``.metadata``
    parses and that every shard file it names is there and long enough; else an InputError naming the file
    (a truncated or deleted file is found here, before DCP reads anything)."""
    path = as_path(path)
    reader = SafeFileSystemReader(path)
    if not (path / METADATA_FILE).is_file():
        raise InputError(
            f"cannot load the checkpoint: its DCP metadata file {METADATA_FILE} is missing.",
            where=str(path / METADATA_FILE),
            fix=_DAMAGED_FIX,
        )
    try:
        metadata = reader.read_metadata()
    except Exception as e:  # a truncated, foreign or tampered file: pickle raises many kinds of errors
        raise InputError(
            f"cannot load the checkpoint: its DCP metadata file cannot be read ({e}).",
            where=str(path / METADATA_FILE),
            fix=_DAMAGED_FIX,
        ) from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        needed[_shard_name(info)] = max(needed.get(_shard_name(info), 0), end)
    for name, size in sorted(needed.items()):
        shard = path / name
        have = shard.stat().st_size if shard.is_file() else None
        if have is None or have < size:
            state = "is missing" if have is None else f"is truncated ({have:,} of {size:,} bytes)"
            raise InputError(
                f"cannot load the checkpoint: its shard file {name} {state}.",
                where=str(shard),
                fix=_DAMAGED_FIX,
            )
    return reader


class _RecordingStream:
    """A file stream that remembers the first OSError a write raised (in its file system)."""

    def __init__(self, stream: Any, fs: _RecordingFileSystem) -> None:
        self._stream, self._fs = stream, fs

    def write(self, data: Any) -> int:
        try:
            return int(self._stream.write(data))
        except OSError as e:
            self._fs.write_error = self._fs.write_error or e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _RecordingFileSystem(FileSystem):
    """DCP's local file system, remembering the first OSError a write raised: torch.save reports a failed
    write (e.g. a full disk) as a RuntimeError ("unexpected pos") that no longer holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.write_error: OSError | None = None

    @contextmanager
    def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
        with super().create_stream(path, mode) as stream:
            yield _RecordingStream(stream, self) if "w" in mode or "a" in mode else stream


class _Writer(FileSystemWriter):
    """DCP's file writer, but a write that failed with an OSError raises that OSError, so that every rank
    learns the cause (a full disk is then one InputError, see :func:`_write_error`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fs = _RecordingFileSystem()

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        try:
            return super().write_data(plan, planner)
        except Exception:
            if isinstance(self.fs, _RecordingFileSystem) and self.fs.write_error is not None:
                raise self.fs.write_error from None
            raise


def checkpoint_root(run_dir: str | Path) -> Path:
    return as_path(run_dir) / "checkpoints"


def read_meta(path: str | Path) -> dict[str, Any]:
    """A checkpoint's ``meta.json``, or an InputError naming the file."""
    meta = as_path(path) / "meta.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(
            f"not a complete crossrank checkpoint: its meta.json (written last) cannot be read ({e}).",
            where=str(meta),
            fix=_DAMAGED_FIX,
        ) from None
    if not isinstance(data, dict):
        raise InputError("not a crossrank checkpoint's meta.json.", where=str(meta), fix=_DAMAGED_FIX)
    return data


def is_complete(path: str | Path) -> bool:
    """Whether ``path`` is a finished checkpoint folder: its ``meta.json`` (written last) exists and parses."""
    try:
        json.loads((as_path(path) / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return True


def _step_folders(root: Path) -> dict[str, list[tuple[int, Path]]]:
    """The step folders under ``root`` by kind: ``final`` (step-N), ``old`` (.old-step-N), ``tmp``."""
    kinds: dict[str, list[tuple[int, Path]]] = {"final": [], "old": [], "tmp": []}
    for d in root.iterdir() if root.is_dir() else []:
        for kind, pattern in (("final", STEP_DIR), ("old", _OLD_STEP_DIR), ("tmp", _TMP_STEP_DIR)):
            m = pattern.match(d.name)
            if m:
                kinds[kind].append((int(m.group(1)), d))
    return kinds


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (incomplete and temporary folders are ignored). A step
    whose ``step-N`` is not complete counts with its ``.old-step-N``, if complete (a crash between the two
    renames of a re-save)."""
    kinds = _step_folders(checkpoint_root(run_dir))
    found = {step: d for step, d in kinds["final"] if is_complete(d)}
    for step, d in kinds["old"]:
        if step not in found and is_complete(d):
            found[step] = d
    return [found[step] for step in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's newest complete checkpoint (what a resume continues from), or ``None``."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The run's complete ``best`` checkpoint, or ``None``. A crash between the two renames of a swap leaves
    the previous best at ``.old-best``, which then still counts."""
    for name in (BEST_DIR, _OLD_BEST):
        if is_complete(as_path(run_dir) / name):
            return as_path(run_dir) / name
    return None


def resolve_checkpoint(path: str | Path, prefer_best: bool = True) -> Path:
    """What a checkpoint argument names: a checkpoint folder itself; a run folder: its ``best`` checkpoint if
    it is complete (with ``prefer_best``; a resume passes ``False``), else its latest; a run's
    ``checkpoints`` folder: its latest."""
    p = as_path(path)
    if (p / "meta.json").is_file():
        return p
    if p.is_dir() and (
        (p / METADATA_FILE).is_file() or STEP_DIR.match(p.name) or _TMP_STEP_DIR.match(p.name)
    ):
        raise InputError(
            "an incomplete checkpoint: it has no meta.json, which is written last (its write was interrupted).",
            where=str(p),
            fix=_DAMAGED_FIX,
        )
    best = best_checkpoint(p) if prefer_best else None
    found = best or latest_checkpoint(p) or latest_checkpoint(p.parent)
    if found is not None:
        return found
    raise InputError(
        "no complete checkpoint here.", where=str(p), fix="pass a run folder or a checkpoints/step-N folder."
    )


def describe_checkpoint(given: str | Path, resolved: Path) -> str:
    """Which checkpoint :func:`resolve_checkpoint` chose for ``given`` and why, in one line."""
    if as_path(given) == resolved:
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


def _all_ok(error: BaseException | None, ctx: DistContext) -> bool:
    """Whether no rank failed (collective: every rank learns of a failure on any rank, and a barrier)."""
    failed = int(error is not None)
    return not (all_reduce_max(failed, ctx) if ctx.world_size > 1 else failed)


def _disk_full(error: BaseException | None) -> OSError | None:
    """The full-disk OSError behind ``error``: DCP wraps each rank's failure in a CheckpointException, and
    torch.save turns a failed write into a RuntimeError whose context is the OSError."""
    todo = [error]
    if isinstance(error, CheckpointException):  # each failure is (exception, traceback frames)
        todo += [f[0] if isinstance(f, tuple) else f for f in error.failures.values()]
    seen: set[int] = set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return e
        todo += [e.__cause__, e.__context__]
    return None


def _write_error(folder: Path, error: BaseException | None) -> BaseException:
    """What a failed checkpoint write raises: an InputError for a full disk (or quota), else the error."""
    if error is None:  # this rank wrote its part, another one failed (and says why)
        return InputError(
            "another process of the job could not write its part of the checkpoint.",
            where=str(folder),
            fix="see the other process's error.",
        )
    full = _disk_full(error)
    if full is None:
        return error
    return InputError(
        f"cannot write the checkpoint: {full.strerror or full} (nothing was left under the final name).",
        where=str(folder.parent),
        fix=f"free space on the disk that holds {folder.parent} (or set run_dir to a folder on another "
        "disk), then run the same command again: training resumes from the latest checkpoint.",
    )


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
        keep: complete checkpoints to keep (older ones are deleted; a failure to delete is reported).

    A full disk is an InputError on every rank, and the temporary folder is removed. On an object store (no
    rename) the checkpoint is written in place at ``step-N`` and committed by its ``meta.json``, written last;
    an earlier copy of the step is uncommitted (its ``meta.json`` removed) and removed first.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:09d}"
    remote = is_remote(root)
    tmp = final if remote else root / f".tmp-step-{step:09d}"
    if ctx.is_main:
        if remote:
            (tmp / "meta.json").unlink(missing_ok=True)  # uncommit first: never a complete-looking mix
        rmtree(tmp, ignore_errors=True)  # left by a crash of an earlier attempt
        tmp.mkdir(parents=True, exist_ok=remote)
    _barrier(ctx)
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        state["optim"] = optimizer.state_dict()
    error: BaseException | None = None
    try:
        dcp.save(state, storage_writer=FsspecWriter(str(tmp)) if remote else _Writer(tmp))
        _save_rng(tmp / f"rng-rank{ctx.rank}.npy", torch.get_rng_state().numpy())
    except (OSError, CheckpointException) as e:
        error = e
    if _all_ok(error, ctx) and ctx.is_main:
        error = _finish(tmp, final, spec_path, {**meta, "step": step, "world_size": ctx.world_size})
    if not _all_ok(error, ctx):
        if ctx.is_main:
            rmtree(tmp, ignore_errors=True)
        raise _write_error(tmp, error)
    if ctx.is_main:
        _rotate(root, keep)
    _barrier(ctx)
    return final


def _finish(tmp: Path, final: Path, spec_path: str, meta: dict[str, Any]) -> OSError | None:
    """Rank 0's part once every rank's shards are written: the spec, ``meta.json`` (last), the commit (on an
    object store ``tmp`` is ``final``, and ``meta.json`` is the commit)."""
    try:
        _copy_spec(spec_path, tmp)  # with its vocabulary files: a vocab's lines are part of the model
        _write_meta(tmp, meta)
        if tmp != final:
            _commit(tmp, final)
    except OSError as e:
        return e
    return None


def _copy_spec(spec_path: str, folder: Path) -> None:
    """The spec and its vocabulary files into a checkpoint folder (remote: through a local staging copy)."""
    if not is_remote(folder):
        copy_spec(spec_path, folder)
        return
    with tempfile.TemporaryDirectory(dir=cache_dir("stage")) as stage:
        copy_spec(spec_path, Path(stage))
        upload_tree(Path(stage), folder)


def _save_rng(path: Path, state: np.ndarray) -> None:
    """A rank's RNG state as a ``.npy`` file (one upload on an object store)."""
    if not isinstance(path, ObjectPath):
        np.save(path, state)
        return
    buffer = io.BytesIO()
    np.save(buffer, state)
    write_bytes_atomic(buffer.getvalue(), path)


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """``folder/meta.json``, replaced atomically (a reader sees the old or the new one, never a part)."""
    if isinstance(folder, ObjectPath):  # one upload: atomic on an object store
        write_bytes_atomic(json.dumps(meta, indent=2).encode(), folder / "meta.json")
        return
    tmp = folder / "meta.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / "meta.json")


def _commit(tmp: Path, final: Path) -> None:
    """The atomic step: rename the finished folder into place, then make the rename durable. A folder of the
    same step (written again, e.g. after a resume) is renamed to ``.old-step-N`` first and removed only once
    the new one is in place, so a complete checkpoint of the step exists under one of the names throughout."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        if old.exists():  # the leftover of an earlier re-save that crashed after its renames
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)
    if old.exists():
        _remove(old, "the previous copy of this checkpoint")


def _remove(folder: Path, what: str) -> None:
    """Remove ``folder``; a failure is a warning line on stderr naming it (the run goes on)."""
    try:
        rmtree(folder)
    except OSError as e:
        tqdm.write(
            f"crossrank: warning: could not remove {what} {folder} ({e.strerror or e}); it stays on disk. "
            f"Fix: remove it by hand (and check the permissions and free space of {folder.parent}).",
            file=sys.stderr,
        )


def _rotate(root: Path, keep: int) -> None:
    """Remove the complete checkpoints beyond the newest ``keep`` and the leftovers of crashed writes
    (``.tmp-step-N``; ``.old-step-N`` whose ``step-N`` is complete); failures are reported, not raised."""
    for old in complete_checkpoints(root.parent)[:-keep] if keep > 0 else []:
        _remove(old, "old checkpoint")
    kinds = _step_folders(root)
    complete = {step for step, d in kinds["final"] if is_complete(d)}
    # On an object store an unfinished checkpoint is a step-N without meta.json (saves are collective: none
    # is being written while rank 0 rotates).
    unfinished = [d for step, d in kinds["final"] if step not in complete] if is_remote(root) else []
    for d in [d for _, d in kinds["tmp"]] + unfinished:
        _remove(d, "the unfinished checkpoint")
    for step, d in kinds["old"]:
        if step in complete:
            _remove(d, "the previous copy of checkpoint")


def update_meta(path: Path, changes: dict[str, Any], ctx: DistContext) -> None:
    """Merge ``changes`` into a written checkpoint's ``meta.json`` (collective; rank 0 writes, atomically)."""
    if ctx.is_main:
        _write_meta(path, {**read_meta(path), **changes})
    _barrier(ctx)


def _copy_file(src: Path, dst: Path) -> None:
    if is_remote(dst):
        copy_file(src, dst)
        return
    shutil.copy2(src, dst)
    fsync_path(dst)


def _copy_checkpoint(src: Path, dst: Path, changes: dict[str, Any]) -> None:
    """Copy a checkpoint folder to a new folder ``dst``, every file fsynced, ``meta.json`` (with
    ``changes`` merged in) last."""
    dst.mkdir(parents=True, exist_ok=is_remote(dst))
    for f in sorted(src.rglob("*")):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif f.relative_to(src).as_posix() not in ("meta.json", "meta.json.tmp"):
            _copy_file(f, target)
    _write_meta(dst, {**read_meta(src), **changes})
    for d in [] if is_remote(dst) else [dst, *(d for d in dst.rglob("*") if d.is_dir())]:
        fsync_path(d)


def promote_best(run_dir: str | Path, checkpoint: Path, changes: dict[str, Any], ctx: DistContext) -> Path:
    """Make a written checkpoint the run's ``best`` (collective; rank 0 copies). The copy goes to
    ``.tmp-best`` (fsynced, ``meta.json`` last, with ``changes`` merged in), then the old best is renamed
    to ``.old-best``, the copy to ``best``, and the old one removed: a crash at any point leaves a complete
    best (:func:`best_checkpoint` falls back to ``.old-best`` between the renames). On an object store (no
    rename) the old best is uncommitted (its ``meta.json`` removed) and replaced in place: a crash mid-copy
    leaves no best until the next round, and ``--checkpoint RUN`` falls back to the latest checkpoint."""
    run = as_path(run_dir)
    final, tmp, old = run / BEST_DIR, run / _TMP_BEST, run / _OLD_BEST
    if ctx.is_main and is_remote(run):
        (final / "meta.json").unlink(missing_ok=True)
        rmtree(final, ignore_errors=True)
        _copy_checkpoint(checkpoint, final, changes)
    elif ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash of an earlier copy
        _copy_checkpoint(checkpoint, tmp, changes)
        if is_complete(final):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        elif final.exists():  # a damaged best: drop it (the previous one may still be at .old-best)
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(run)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(ctx)
    return final


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, ctx: DistContext
) -> dict[str, Any]:
    """Load a checkpoint into a freshly built (and sharded, for any world size and plan) model and optimizer;
    DCP reshards as needed. Returns its ``meta.json``. A damaged checkpoint (a missing, truncated or
    unreadable file) is one InputError naming the file."""
    path = as_path(path)
    meta = read_meta(path)
    reader = check_checkpoint_files(path)
    state: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        # Optimizer state (e.g. Adam's moments) is created lazily on the first step; DCP loads in place, so
        # materialise it first (a zero-gradient step: parameters do not move) or it would not be restored.
        if hasattr(optimizer, "init_state"):
            optimizer.init_state()
            optimizer.zero_grad(set_to_none=True)
        state["optim"] = optimizer.state_dict()
    try:
        dcp.load(state, storage_reader=reader)
    except CheckpointException as e:  # a BaseException: turn it into the one-paragraph error users get
        # each failure is (exception, traceback frames)
        causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        named = next((c for c in causes if isinstance(c, InputError)), None)
        if named is not None:  # a shard file that could not be read (by this rank or another)
            raise named from None
        raise InputError(
            f"cannot load the checkpoint: {'; '.join(map(str, causes))}",
            where=str(path),
            fix="use an untampered checkpoint written by crossrank for this model config.",
        ) from None
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
        if meta.get("world_size") == ctx.world_size:  # the RNG only matters to a resumed training run
            torch.set_rng_state(_read_rng(path / f"rng-rank{ctx.rank}.npy"))
    return meta


def _read_rng(path: Path) -> torch.Tensor:
    """A rank's saved RNG state, or an InputError naming the file (without it a resume is not exact)."""
    try:
        state = np.load(io.BytesIO(path.read_bytes()) if is_remote(path) else path, allow_pickle=False)
        if state.dtype != np.uint8 or state.ndim != 1:
            raise ValueError(f"an array of {state.dtype}, not the uint8 RNG state")
    except (OSError, ValueError, EOFError) as e:
        raise InputError(
            f"cannot load the checkpoint: this rank's RNG state cannot be read ({e}).",
            where=str(path),
            fix=_DAMAGED_FIX,
        ) from None
    return torch.from_numpy(state)
