"""Output folders that a ``prepare`` job owns as a whole: checked before any work, replaced in one swap.

``check_target`` refuses a target that is a file, or a non-empty folder that is not the same command's
earlier output (unless ``overwrite``). ``replaced_folder`` has the job write its complete output into a
hidden sibling folder, ``.NAME.tmp-<pid>-<hex>``, and swaps it into place only when the job succeeded: the
old folder is renamed aside, the new one renamed to NAME, and the old one removed. A job that fails leaves
the earlier output untouched; a crash between the two renames leaves no folder at NAME; a reader never sees
a mix of old and new files. Hidden siblings of dead jobs are removed by the next run.

A remote ``out_dir`` (``s3://...``; object stores have no rename) is staged in a local cache folder and
uploaded when the job succeeded, ``summary.json`` last: a folder without it is incomplete (a crash during the
upload), which a rerun replaces with --overwrite.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from crossrank.features.errors import InputError
from crossrank.features.storage import as_path, cache_dir, is_remote, rmtree, upload_tree

# The hidden siblings ``replaced_folder`` writes (a crashed job may leave them inside an output it owns).
_STAGE = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]+$")


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def earlier_output(folder: Path, names: Callable[[str], bool], summary_keys: tuple[str, ...]) -> bool:
    """Whether ``folder`` is a complete earlier output of a command: every entry is a name it writes, and
    its ``summary.json`` (written last) holds ``summary_keys``."""
    summary = read_json(folder / "summary.json")
    if not isinstance(summary, dict) or not all(k in summary for k in summary_keys):
        return False
    return all(names(p.name) or _STAGE.match(p.name) for p in folder.iterdir())


def _make_parent(out_dir: Path) -> None:
    """Create ``out_dir``'s parent, or an InputError naming the path."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"cannot create the output folder ({e.strerror})",
            where=str(out_dir),
            fix="pass a folder path that is not a file and that you can write to.",
        ) from None


def check_target(out_dir: Path, *, is_own: Callable[[Path], bool], overwrite: bool, command: str) -> None:
    """An InputError, before any work, unless ``out_dir`` is missing, empty, ``command``'s earlier output
    (``is_own``), or ``overwrite`` is set; also when it is a file or holds the current folder."""
    out_dir = as_path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(
            "the output folder is a file.", where=str(out_dir), fix="pass a folder path that is not a file."
        )
    _make_parent(out_dir)
    if not is_remote(out_dir) and not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write the output folder ({out_dir.parent} is not writable).",
            where=str(out_dir),
            fix="pass a folder in a place you can write to.",
        )
    if not out_dir.is_dir() or not any(out_dir.iterdir()) or is_own(out_dir):
        return
    if not overwrite:
        names = sorted(p.name for p in out_dir.iterdir())
        raise InputError(
            f"the output folder is not empty and is not the output of an earlier `{command}` "
            f"(it holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}).",
            where=str(out_dir),
            fix="pass a new or empty folder, or --overwrite to replace the folder and everything in it.",
        )
    cwd = Path.cwd().resolve()
    if out_dir.resolve() in (cwd, *cwd.parents, Path.home().resolve()):
        raise InputError(
            "refusing to replace the current folder, one of its parents or the home folder.",
            where=str(out_dir),
            fix="pass a folder of its own for the output.",
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(out_dir: Path) -> None:
    """Remove the hidden siblings (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>-*``) of jobs no longer running."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]+$")
    for p in out_dir.parent.iterdir():
        m = pattern.match(p.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _uploaded_folder(out_dir: Path) -> Iterator[Path]:
    """``replaced_folder`` for a remote ``out_dir`` (no rename there): the job writes into a local staging
    folder in the cache; when it succeeds, the old objects under ``out_dir`` are removed and the new files
    uploaded, ``summary.json`` (the commit marker that :func:`earlier_output` and readers check) last."""
    stage = cache_dir("stage") / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        summary = out_dir / "summary.json"
        summary.unlink(missing_ok=True)  # uncommit the old output first: a crash below leaves no valid mix
        rmtree(out_dir, ignore_errors=True)
        upload_tree(stage, out_dir, last="summary.json")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def replaced_folder(out_dir: Path) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``out_dir`` to write into; when the block succeeds, it replaces
    ``out_dir`` (see the module docstring); when it fails, it is removed and ``out_dir`` stays as it was."""
    out_dir = as_path(out_dir)
    if is_remote(out_dir):
        with _uploaded_folder(out_dir) as stage:
            yield stage
        return
    _make_parent(out_dir)
    _remove_leftovers(out_dir)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
    try:
        if out_dir.exists():
            out_dir.rename(old)
    except OSError as e:  # e.g. a mount point
        shutil.rmtree(stage, ignore_errors=True)
        raise InputError(
            f"cannot replace the output folder ({e.strerror}).",
            where=str(out_dir),
            fix="pass a folder inside it, or one that is not a mount point.",
        ) from None
    stage.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
