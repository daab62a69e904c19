"""Streaming one split into ``part-NNNNN.parquet`` files of bounded size."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from crossrank.pipeline.core.atomic import AtomicParquetWriter


class _SplitWriter:
    """Streams a split into parts; every row group is full but the split's last one.

    A part is closed (and moved into place) at the first row-group boundary after it holds
    ``values_per_part`` history values, so part sizes stay bounded for long histories.
    """

    def __init__(self, folder: Path, schema: pa.Schema, row_group_size: int, values_per_part: int) -> None:
        self.folder, self.schema = folder, schema
        self.row_group_size, self.values_per_part = row_group_size, values_per_part
        self.writer: AtomicParquetWriter | None = None
        self.part_rows = 0
        self.part_values = 0
        self.parts = 0

    def add(self, table: pa.Table, values: int) -> None:
        """Append rows holding ``values`` history values in all."""
        while table.num_rows:
            if self.writer is None:
                path = self.folder / f"part-{self.parts:05d}.parquet"
                self.writer = AtomicParquetWriter(path, self.schema, self.row_group_size).__enter__()
                self.part_rows = self.part_values = 0
            if self.part_values < self.values_per_part:
                self.writer.write(table)
                self.part_rows += table.num_rows
                self.part_values += values
                return
            # The part is full: complete its last row group, then continue in a new part.
            head = table.slice(0, -self.part_rows % self.row_group_size)
            table = table.slice(head.num_rows)
            if head.num_rows:
                self.writer.write(head)
                self.part_rows += head.num_rows
            if self.part_rows % self.row_group_size == 0:
                self._finish()
            values = 0  # the rest's share is unknown; it only delays the next part by a chunk

    def close(self) -> None:
        """Finish the last part; a split without rows gets one empty, typed part."""
        if self.writer is None and self.parts == 0:
            self.writer = AtomicParquetWriter(
                self.folder / "part-00000.parquet", self.schema, self.row_group_size
            ).__enter__()
        if self.writer is not None:
            self._finish()

    def abort(self, error: BaseException) -> None:
        """Drop the part in progress: its temporary file goes, nothing is moved into place."""
        if self.writer is not None:
            self.writer.__exit__(type(error), error, error.__traceback__)
            self.writer = None

    def _finish(self) -> None:
        """Close the part in progress, moving it into place."""
        assert self.writer is not None
        self.writer.__exit__(None, None, None)
        self.writer = None
        self.parts += 1
