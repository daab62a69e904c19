"""A scoring job's output folder, tied to what produced it.

``OUT/_job.json`` records the job: the input location(s), the checkpoint's identity (its resolved
folder, step, world size and the hashes of its ``meta.json`` and ``spec.yaml``) and the passthrough columns.
``OUT/_manifest/part-NNNNN.json`` records that ``OUT/part-NNNNN.parquet`` holds the scores of one input unit,
identified by its file (path, size, mtime_ns), row group and row count, and of which checkpoint.

A rerun into the folder:

* with another checkpoint, input or passthrough list is refused (:class:`InputError`) unless ``overwrite``,
  which clears the old output first; a folder holding anything else than scoring output is always refused;
* keeps the parts whose unit is unchanged, and removes (entry first, then part) those whose unit changed or
  no longer exists, and parts without an entry (a crash between the two writes), so after the job the folder
  holds every current input row exactly once.

On an object store (``--output s3://...``) the same holds: each part and each entry is one upload, visible
only once complete (:mod:`crossrank.features.storage`), the entry after its part; a unit's identity also holds
its file's ETag (the store's modification times have a one-second resolution).

Everything here is cheap (file metadata and small JSON files): it runs before the model is loaded, and
``check_output_path`` before torch is even imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossrank.features.errors import InputError
from crossrank.features.files import DataPaths, as_path_list
from crossrank.features.storage import ObjectPath, as_path, is_remote, is_uri, rmtree
from crossrank.pipeline.core.atomic import write_json_atomic

if TYPE_CHECKING:  # the CLI checks the output path with this module before it imports torch
    from crossrank.pipeline.reading.reader import Unit

MANIFEST = "_manifest"
JOB_FILE = "_job.json"  # beside the manifest: readers of OUT skip names starting with "_" or "."
PART = re.compile(r"^part-(\d{5,})\.parquet$")
ENTRY = re.compile(r"^part-(\d{5,})\.json$")
_OVERWRITE_FIX = "pass --overwrite to replace them, or another --output folder."


def part_name(index: int) -> str:
    """The name (no suffix) of part ``index``: ``part-NNNNN``."""
    return f"part-{index:05d}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def checkpoint_identity(path: Path) -> dict[str, Any]:
    """What identifies a checkpoint's weights: its resolved folder, step and world size, and the hashes of
    its ``meta.json`` (written last, on every save) and ``spec.yaml``."""
    from crossrank.pipeline.training.checkpoint import read_meta

    meta, path = read_meta(path), as_path(path)
    return {
        "path": str(path.resolve()),
        "step": meta.get("step"),
        "world_size": meta.get("world_size"),
        "meta_sha256": _sha256(path / "meta.json"),
        "spec_sha256": _sha256(path / "spec.yaml"),
    }


def job_record(checkpoint: Path, input_path: DataPaths, passthrough: list[str]) -> dict[str, Any]:
    """The content of ``_job.json`` for a job scoring ``input_path`` with ``checkpoint``."""
    return {
        "input": [p if is_uri(p) else os.path.abspath(p) for p in as_path_list(input_path)],
        "checkpoint": checkpoint_identity(checkpoint),
        "passthrough": list(passthrough),
    }


def unit_identities(units: list[Unit]) -> list[dict[str, Any]]:
    """Each unit's identity: its file's absolute path (or URI), size and mtime_ns, its row group and row
    count; on an object store also the file's ETag (its mtime has a one-second resolution there)."""
    files = {u.file for u in units}
    stats = {f: f.stat() for f in files}
    etags = {f: f.etag() for f in files if isinstance(f, ObjectPath)}
    return [
        {
            "file": str(u.file) if is_remote(u.file) else os.path.abspath(u.file),
            "size": stats[u.file].st_size,
            "mtime_ns": stats[u.file].st_mtime_ns,
            "row_group": u.row_group,
            "rows": u.num_rows,
            **({"etag": etags[u.file]} if u.file in etags else {}),
        }
        for u in units
    ]


def _key(identity: dict[str, Any]) -> str:
    return json.dumps(identity, sort_keys=True)


def check_output_path(output: Path) -> None:
    """An InputError, before any work, when ``output`` is a file or cannot be created or written (a remote
    folder: when it is a file; its permissions are the store's, checked at the first write)."""
    output = as_path(output)
    if output.exists() and not output.is_dir():
        raise InputError(
            "the output path is a file, not a folder.", where=str(output), fix="pass a folder for --output."
        )
    if is_remote(output):
        return
    existing = output
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(
            f"cannot create the output folder: {existing} is a file.",
            where=str(output),
            fix="pass a folder path for --output.",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(
            f"the output folder cannot be written ({existing} is not writable).",
            where=str(output),
            fix="pass a folder you can write to, or fix its permissions.",
        )


def _temporary(name: str) -> bool:
    """A temporary file of the atomic writers (``.part-00001.parquet.tmp-...``, ``._job.json.tmp-...``)."""
    return name.startswith((".part-", f".{JOB_FILE}.tmp-")) and ".tmp-" in name


def _foreign(output: Path) -> list[str]:
    """Names in ``output`` that scoring does not write (its parts, their temporary files, the manifest)."""
    return sorted(
        p.name
        for p in output.iterdir()
        if not (p.name in (MANIFEST, JOB_FILE) or PART.match(p.name) or _temporary(p.name))
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between the recorded job and this one, in words."""
    out = []
    if old.get("checkpoint") != new["checkpoint"]:
        was = old.get("checkpoint") or {}
        out.append(
            f"they are the scores of checkpoint {was.get('path')} (step {was.get('step')}), not of "
            f"{new['checkpoint']['path']} (step {new['checkpoint']['step']})"
        )
    if old.get("input") != new["input"]:
        out.append(f"they score input {old.get('input')}, not {new['input']}")
    if old.get("passthrough") != new["passthrough"]:
        out.append(f"their passthrough columns are {old.get('passthrough')}, not {new['passthrough']}")
    return out


@dataclass(frozen=True)
class OutputState:
    """What :func:`check_output` found: whether the old output must be cleared, and the recorded job."""

    clear: bool
    recorded: dict[str, Any] | None


def check_output(output: Path, record: dict[str, Any], overwrite: bool) -> OutputState:
    """Check (read-only) that this job may write to ``output``; see the module docstring."""
    check_output_path(output)
    if not output.is_dir() or not any(output.iterdir()):
        return OutputState(False, None)
    foreign = _foreign(output)
    if foreign:
        raise InputError(
            f"the output folder holds files that `crossrank score` did not write ({', '.join(foreign[:5])}).",
            where=str(output),
            fix="pass a new or empty folder for --output (--overwrite never deletes other files).",
        )
    recorded = _read_json(output / JOB_FILE)
    if not isinstance(recorded, dict):
        if overwrite:
            return OutputState(True, None)
        raise InputError(
            "the output folder holds scores whose checkpoint and input are not recorded "
            f"(no readable {JOB_FILE}: an older crossrank, or an interrupted --overwrite).",
            where=str(output),
            fix=_OVERWRITE_FIX,
        )
    diff = _differences(recorded, record)
    if diff and not overwrite:
        raise InputError(
            f"the output folder holds other scores: {'; '.join(diff)}.", where=str(output), fix=_OVERWRITE_FIX
        )
    return OutputState(bool(diff), recorded)


def _clear(output: Path) -> None:
    """Remove a scoring output (job record first: an interrupted clear is never taken for a valid output)."""
    (output / JOB_FILE).unlink(missing_ok=True)
    rmtree(output / MANIFEST, ignore_errors=True)
    for p in output.iterdir():
        if PART.match(p.name) or _temporary(p.name):
            p.unlink()


def valid_entries(output: Path, record: dict[str, Any], identities: list[dict[str, Any]]) -> dict[str, str]:
    """Unit identity key -> part name, for the manifest entries of current units, written with this job's
    checkpoint, whose part exists (the first entry of a unit, by name, if there are several)."""
    current = {_key(i) for i in identities}
    kept: dict[str, str] = {}
    folder = output / MANIFEST
    for entry in sorted(folder.glob("part-*.json")) if folder.is_dir() else []:
        data = _read_json(entry)
        name = entry.name.removesuffix(".json")
        if not isinstance(data, dict) or not ENTRY.match(entry.name):
            continue
        key = _key(data.get("unit") or {})
        ok = data.get("checkpoint") == record["checkpoint"] and (output / f"{name}.parquet").is_file()
        if ok and key in current and key not in kept:
            kept[key] = name
    return kept


def tidy_output(output: Path, record: dict[str, Any], identities: list[dict[str, Any]], clear: bool) -> int:
    """Make ``output`` hold only valid parts of current units (run by one rank, while the others wait):
    clear it if asked, write the job record, remove stale entries (then their parts), parts without an
    entry and temporary files. Returns the number of parts removed."""
    if clear:
        _clear(output)
    (output / MANIFEST).mkdir(parents=True, exist_ok=True)
    if _read_json(output / JOB_FILE) != record:
        write_json_atomic(record, output / JOB_FILE)
    keep = set(valid_entries(output, record, identities).values())
    for entry in (output / MANIFEST).iterdir():
        name = entry.name.removesuffix(".json")
        if name not in keep:
            entry.unlink()  # the entry first: a crash here leaves a part without entry, removed next time
    removed = 0
    for p in output.iterdir():
        stale_part = PART.match(p.name) and p.name.removesuffix(".parquet") not in keep
        if stale_part or _temporary(p.name):
            p.unlink()
            removed += bool(stale_part)
    return removed


def part_names(identities: list[dict[str, Any]], done: dict[str, str]) -> list[str]:
    """Every unit's part name: the existing one for a finished unit, else the lowest free number (in unit
    order, so every rank computes the same names)."""
    used = set(done.values())
    names, free = [], 0
    for identity in identities:
        name = done.get(_key(identity))
        if name is None:
            while part_name(free) in used:
                free += 1
            name = part_name(free)
            used.add(name)
        names.append(name)
    return names


def is_done(identity: dict[str, Any], done: dict[str, str]) -> bool:
    """Whether the unit with this identity has a valid part."""
    return _key(identity) in done


def manifest_entry(unit: Unit, identity: dict[str, Any], record: dict[str, Any], rows: int) -> dict[str, Any]:
    """The manifest entry of a scored unit."""
    return {
        "file": str(unit.file),
        "row_group": unit.row_group,
        "rows": rows,
        "unit": identity,
        "checkpoint": record["checkpoint"],
    }
