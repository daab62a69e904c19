"""Atomic Parquet (and small text: ``crossrank.features.atomic_files``) writers shared by the stages.

A reader (a training job, a second ``prepare`` run, a crash) must never see a half-written file under its
final name: every file is written under a hidden temporary name in the same folder, flushed, and then moved
into place with ``os.replace`` (atomic on POSIX when source and target share a file system: hence the same
folder). On an object store (``s3://...``), which has no rename, a file is spooled to a local cache and
uploaded in one go: the object appears only once complete (:mod:`crossrank.features.storage`).

A full disk (or quota) while writing is an :class:`~crossrank.features.errors.InputError` naming the folder,
raised after the temporary file is removed: nothing is left under the final name, nor half-written beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crossrank.features.atomic_files import disk_full_as_input_error, temp_path, write_text_atomic
from crossrank.features.storage import ObjectPath, as_path, cache_dir, is_remote, upload_file

# zstd at Arrow's default level compresses the long, repetitive history lists ~2x better than snappy at about
# the same write speed; every Parquet reader we use (pyarrow, DuckDB, Spark) reads it.
DEFAULT_COMPRESSION = "zstd"


def fsync_path(path: Path) -> None:
    """Flush a file (so that a rename never exposes data only in page cache), or a folder's entries (so
    that a rename into it is durable), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicParquetWriter:
    """Streams tables into one Parquet file with row groups of exactly ``row_group_size`` rows (the last may
    be shorter), and moves the file into place only when the ``with`` block ends without an exception.

    Appended tables may have any length: rows are buffered until a full row group is available, so that row
    group boundaries do not depend on how the caller chunked its work.

    Args:
        path: the final file name; its folder is created if needed.
        schema: the Arrow schema of every appended table.
        row_group_size: rows per row group (>= 1).
        compression: the Parquet codec.

    Example::

        with AtomicParquetWriter(Path("out/train/part-00000.parquet"), schema, 32768) as w:
            for chunk in chunks:
                w.write(chunk)
    """

    def __init__(
        self, path: Path, schema: pa.Schema, row_group_size: int, compression: str = DEFAULT_COMPRESSION
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        self.path = as_path(path)
        self.schema = schema
        self.row_group_size = row_group_size
        self.compression = compression
        self.rows_written = 0
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None
        self._pending: pa.Table = schema.empty_table()

    def __enter__(self) -> AtomicParquetWriter:
        if is_remote(self.path):  # spooled locally, uploaded in one go when complete (atomic there)
            self._tmp = cache_dir("spool") / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = temp_path(self.path)
        try:
            with disk_full_as_input_error(self.path):
                self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (same schema); full row groups are written now, the remainder is buffered.

        Args:
            table: rows to append.
        """
        if self._writer is None:
            raise RuntimeError("AtomicParquetWriter.write() called outside its `with` block")
        if not table.schema.equals(self.schema):
            raise ValueError(f"table schema\n{table.schema}\ndiffers from the writer's schema\n{self.schema}")
        self._pending = pa.concat_tables([self._pending, table]) if self._pending.num_rows else table
        n_full = (self._pending.num_rows // self.row_group_size) * self.row_group_size
        if n_full:
            with disk_full_as_input_error(self.path):
                self._writer.write_table(self._pending.slice(0, n_full), row_group_size=self.row_group_size)
            self._pending = self._pending.slice(n_full)
            self.rows_written += n_full

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._writer is None or self._tmp is None:  # already closed (a caller may abort after a failure)
            return
        try:
            if exc_type is not None:  # the caller's error is the one to raise; the file goes anyway
                with contextlib.suppress(OSError):
                    self._writer.close()
                return
            with disk_full_as_input_error(self.path):
                if self._pending.num_rows:
                    self._writer.write_table(self._pending, row_group_size=self.row_group_size)
                    self.rows_written += self._pending.num_rows
                self._pending = self.schema.empty_table()
                self._writer.close()
                fsync_path(self._tmp)
                if isinstance(self.path, ObjectPath):
                    upload_file(self._tmp, self.path)
                else:
                    os.replace(self._tmp, self.path)
        finally:
            # On any failure (the caller's or ours) the temporary file goes; an old target stays untouched.
            if self._tmp.exists():
                self._tmp.unlink()
            self._writer = None
            self._pending = self.schema.empty_table()


def write_parquet_atomic(
    table: pa.Table, path: Path, row_group_size: int, compression: str = DEFAULT_COMPRESSION
) -> None:
    """Write ``table`` to ``path`` atomically (temporary name in the same folder, then ``os.replace``).

    Args:
        table: the rows to write.
        path: the final file name; its folder is created if needed.
        row_group_size: rows per row group (the last one may be shorter).
        compression: the Parquet codec.
    """
    with AtomicParquetWriter(path, table.schema, row_group_size, compression) as writer:
        writer.write(table)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Args:
        obj: a JSON-serialisable object.
        path: the final file name.
    """
    write_text_atomic(json.dumps(obj, indent=2) + "\n", path)
