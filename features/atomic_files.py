"""Small files written atomically: a hidden temporary file in the same folder, flushed, then ``os.replace``
(a reader sees the old file or the new one, never a part). A full disk (or quota) is an
:class:`~crossrank.features.errors.InputError` naming the folder, raised after the temporary file is removed.

The feature tools (``features check --fit``: spec edits, vocabularies) and every pipeline stage
(``crossrank.pipeline.core.atomic``) share these. A remote path (``s3://...``) is written in one upload,
which an object store makes visible only once complete (:mod:`crossrank.features.storage`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from crossrank.features.errors import InputError
from crossrank.features.storage import ObjectPath, as_path, is_remote, write_bytes_atomic


def temp_path(path: Path) -> Path:
    """A hidden, unique temporary name next to ``path`` (pid + random suffix: no clash between writers)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The hidden folder a ``prepare`` job writes into before it swaps it into place (crossrank.pipeline.core.outdir).
_STAGE = re.compile(r"^\.(.+)\.tmp-\d+-[0-9a-f]+$")


def _visible(folder: Path) -> Path:
    """``folder`` as the user knows it: a prepare job's hidden staging folder named as its target."""
    return Path(*[m.group(1) if (m := _STAGE.match(part)) else part for part in folder.parts])


@contextlib.contextmanager
def disk_full_as_input_error(path: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT, EFBIG) while writing ``path`` into an InputError naming its folder
    and the fix; other OSErrors pass through."""
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        folder = _visible(Path(path).parent)
        raise InputError(
            f"cannot write {Path(path).name}: {e.strerror or e} (nothing was left under that name).",
            where=str(folder),
            fix=f"free space on the disk that holds {folder} (or write to a folder on another disk), then run "
            "the same command again.",
        ) from None


def write_text_atomic(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically.

    Args:
        text: the file content.
        path: the final file name; its folder is created if needed.
    """
    path = as_path(path)
    if is_remote(path):  # one upload: atomic on an object store (see crossrank.features.storage)
        assert isinstance(path, ObjectPath)
        write_bytes_atomic(text.encode("utf-8"), path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with disk_full_as_input_error(path), open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
