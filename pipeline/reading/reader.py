"""Streaming Parquet -> :class:`~crossrank.pipeline.reading.batch.Batch`, each rank reading a disjoint share of row groups.

The unit of work is one (file, row group). Units are balanced across ranks by row count; each unit is
converted to a columnar :class:`Block` in one vectorised pass (ids mapped per the spec, histories truncated
to the most recent ``max_len`` events), so errors name the file and row group, and batches are cut from
blocks without per-row Python. Every batch has exactly ``batch_size`` rows: the tail is padded with
empty rows of weight 0, and :meth:`ParquetBatchReader.batches` pads with whole empty batches up to an
agreed count, so ranks with fewer rows never leave a collective hanging.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from crossrank.features.check import schema_problems
from crossrank.features.errors import InputError
from crossrank.features.files import DataPaths, list_parquet_files, open_parquet
from crossrank.features.idmap import check_oov_fraction, map_ids
from crossrank.features.spec import HISTORY_KINDS, LIST_KINDS, FeatureSpec, SpecError
from crossrank.features.validate import (
    capped,
    domain_index,
    first_error,
    metadata_problems,
    preflight_error,
    row_group_problems,
)
from crossrank.pipeline.reading.batch import Batch


def row_offsets(x: np.ndarray) -> np.ndarray:
    """Offsets of a jagged array's rows into its values from the lengths ``x``: [n + 1], starting at 0."""
    out = np.zeros(len(x) + 1, dtype=np.int64)
    np.cumsum(x, out=out[1:])
    return out


def jagged_take(
    lengths: np.ndarray, values: np.ndarray, idx: np.ndarray, offsets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of a jagged array (lengths, values), vectorised; ``offsets`` (``row_offsets(lengths)``)
    when the caller has them, so that many small takes from one big block do not rescan its lengths."""
    offsets = row_offsets(lengths) if offsets is None else offsets
    new_lengths = lengths[idx]
    starts = offsets[:-1][idx]
    total = int(new_lengths.sum())
    gather = np.repeat(starts - row_offsets(new_lengths)[:-1], new_lengths) + np.arange(total)
    return new_lengths, values[gather]


def keep_last(lengths: np.ndarray, values: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncate each row of a jagged array to its last ``max_len`` entries (the most recent events)."""
    if len(lengths) == 0 or lengths.max(initial=0) <= max_len:
        return lengths, values
    kept = np.minimum(lengths, max_len)
    starts = row_offsets(lengths)[:-1] + (lengths - kept)
    gather = np.repeat(starts - row_offsets(kept)[:-1], kept) + np.arange(int(kept.sum()))
    return kept, values[gather]


@dataclass
class Block:
    """Columnar, already-mapped rows: the reader's unit between Parquet and a Batch.

    Args:
        dense: [n, F_dense] float32.
        labels: [n] float32.
        domains: [n] int64 candidate domain index.
        row_ids: [n] int64 row ids (-1 where the row id column is not an integer).
        jagged: KJT key -> (lengths [n] int32, values int64 rows).
    """

    dense: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    row_ids: np.ndarray
    jagged: dict[str, tuple[np.ndarray, np.ndarray]]
    # Per KJT key, the row offsets into its values (computed on the first slice; the arrays never change).
    _offsets: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        """Memory held by the block's arrays."""
        arrays = [
            self.dense,
            self.labels,
            self.domains,
            self.row_ids,
            *(a for lv in self.jagged.values() for a in lv),
        ]
        return sum(a.nbytes for a in arrays)

    def take(self, idx: np.ndarray) -> Block:
        return Block(
            self.dense[idx],
            self.labels[idx],
            self.domains[idx],
            self.row_ids[idx],
            {k: jagged_take(lv[0], lv[1], idx, self.offsets(k)) for k, lv in self.jagged.items()},
        )

    def offsets(self, key: str) -> np.ndarray:
        """Row offsets into ``jagged[key]``'s values (computed once: the arrays never change)."""
        if key not in self._offsets:
            self._offsets[key] = row_offsets(self.jagged[key][0])
        return self._offsets[key]

    def slice(self, start: int, stop: int) -> Block:
        """Rows ``start:stop`` as views, without a gather: the batches are cut from a block of the whole
        shuffle buffer, and a gather would rescan the buffer's lengths for every batch (quadratic)."""
        stop = min(stop, len(self))
        jagged = {}
        for k, (lengths, values) in self.jagged.items():
            offsets = self.offsets(k)
            jagged[k] = (lengths[start:stop], values[offsets[start] : offsets[stop]])
        s = slice(start, stop)
        return Block(self.dense[s], self.labels[s], self.domains[s], self.row_ids[s], jagged)

    @staticmethod
    def concat(blocks: list[Block]) -> Block:
        if len(blocks) == 1:
            return blocks[0]
        keys = blocks[0].jagged.keys()
        return Block(
            np.concatenate([b.dense for b in blocks]),
            np.concatenate([b.labels for b in blocks]),
            np.concatenate([b.domains for b in blocks]),
            np.concatenate([b.row_ids for b in blocks]),
            {
                k: (
                    np.concatenate([b.jagged[k][0] for b in blocks]),
                    np.concatenate([b.jagged[k][1] for b in blocks]),
                )
                for k in keys
            },
        )

    @staticmethod
    def empty(n: int, n_dense: int, keys: list[str]) -> Block:
        """n rows with no ids, zero dense features, label 0 — the padding rows (given weight 0)."""
        z = np.zeros(n, dtype=np.int32)
        return Block(
            np.zeros((n, n_dense), np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, np.int64),
            np.full(n, -1, np.int64),
            {k: (z, np.zeros(0, np.int64)) for k in keys},
        )

    def to_batch(self, pooled_keys: list[str], sequence_keys: list[str], batch_size: int) -> Batch:
        """A Batch of exactly ``batch_size`` rows: this block's rows (weight 1) then padding (weight 0)."""
        n = len(self)
        pad = batch_size - n
        if pad < 0:
            raise ValueError(f"block of {n} rows exceeds batch size {batch_size}")
        block = (
            self
            if pad == 0
            else Block.concat([self, Block.empty(pad, self.dense.shape[1], list(self.jagged))])
        )
        weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])

        def kjt(keys: list[str]) -> KeyedJaggedTensor:
            return KeyedJaggedTensor(
                keys=keys,
                values=torch.from_numpy(np.concatenate([block.jagged[k][1] for k in keys])),
                lengths=torch.from_numpy(np.concatenate([block.jagged[k][0] for k in keys]).astype(np.int32)),
            )

        return Batch(
            dense=torch.from_numpy(block.dense),
            pooled=kjt(pooled_keys),
            sequences=kjt(sequence_keys),
            labels=torch.from_numpy(block.labels),
            weights=torch.from_numpy(weights),
            domains=torch.from_numpy(block.domains),
            row_ids=torch.from_numpy(block.row_ids),
            loss_scale=torch.tensor([1.0 / max(n, 1)]),
        )


@dataclass
class ReaderStats:
    """Policies applied while reading (reported, never silent)."""

    oov: dict[str, int] = field(default_factory=dict)  # feature -> ids sent to the OOV row
    dense_filled: dict[str, int] = field(default_factory=dict)  # feature -> missing/NaN values filled
    rows: int = 0
    ids: dict[str, int] = field(default_factory=dict)  # KJT key -> ids mapped (the OOV fractions' base)

    def add(self, counts: dict[str, int], name: str, n: int) -> None:
        if n:
            counts[name] = counts.get(name, 0) + n

    def record(self, key: str, n_ids: int, n_oov: int) -> None:
        """Count one mapped batch of a KJT key's ids, ``n_oov`` of them sent to the OOV row."""
        self.add(self.ids, key, n_ids)
        self.add(self.oov, key, n_oov)


@dataclass(frozen=True)
class Unit:
    """One row group of one file: the reader's unit of work."""

    file: Path
    row_group: int
    num_rows: int

    def __str__(self) -> str:
        return f"{self.file} (row group {self.row_group})"


def discover_units(spec: FeatureSpec, path: DataPaths, *, with_label: bool = True) -> list[Unit]:
    """Every (file, row group) of ``path`` (file, folder, glob or a list of them), after checking each file's
    schema against the spec and the pre-flight of its footer statistics (:func:`metadata_problems`: null labels,
    labels outside [0, 1], ids beyond their table, ... in seconds, before any training). Schema problems of
    every file are one :class:`SpecError`; else the pre-flight's, of every file, one InputError."""
    units: list[Unit] = []
    problems, preflight = [], []
    for file in list_parquet_files(path):
        try:
            meta = open_parquet(file)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(
                f"not a readable Parquet file ({e}).", where=str(file), fix="re-create the file."
            ) from None
        if meta.metadata.num_rows == 0:
            raise InputError(
                "the Parquet file has no rows.", where=str(file), fix="remove it or re-prepare the data."
            )
        found = schema_problems(spec, meta.schema_arrow, str(file), with_label=with_label)
        if not found:  # no data page is read: metadata only
            preflight += capped(metadata_problems(spec, meta.metadata, file, with_label=with_label), file)
        problems += found
        units += [Unit(file, rg, meta.metadata.row_group(rg).num_rows) for rg in range(meta.num_row_groups)]
    if problems:
        raise SpecError(problems)
    error = preflight_error(preflight, spec)
    if error is not None:
        raise error
    return units


def assign_units(units: list[Unit], world_size: int) -> list[list[Unit]]:
    """Balance units across ranks by rows (largest first to the least-loaded rank); deterministic."""
    shares: list[list[Unit]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for u in sorted(units, key=lambda u: (-u.num_rows, str(u.file), u.row_group)):
        r = min(range(world_size), key=lambda i: (load[i], i))
        shares[r].append(u)
        load[r] += u.num_rows
    return [sorted(s, key=lambda u: (str(u.file), u.row_group)) for s in shares]


def read_unit(unit: Unit, columns: list[str]) -> pa.Table:
    """One row group's columns, or an InputError naming the file and row group."""
    try:
        return open_parquet(unit.file).read_row_group(unit.row_group, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(
            f"cannot read the row group ({e}).", where=str(unit), fix="re-create the file."
        ) from None


def empty_batch(spec: FeatureSpec, batch_size: int) -> Batch:
    """A batch of padding rows only (weight 0, no ids): what a rank without data feeds to collectives."""
    block = Block.empty(0, max(1, len(spec.dense_features)), [*spec.sequence_keys, *spec.pooled_keys])
    return block.to_batch(spec.pooled_keys, spec.sequence_keys, batch_size)


class BlockConverter:
    """Turns one Arrow table (one unit's rows) into a :class:`Block` per the feature spec."""

    def __init__(self, spec: FeatureSpec, *, with_label: bool = True) -> None:
        self.spec = spec
        self.with_label = with_label
        self.stats = ReaderStats()
        self.columns = spec.required_columns(with_label=with_label)

    def convert(self, table: pa.Table, where: str) -> Block:
        """The row group's values checked (the first problem of :func:`row_group_problems`, the check that
        ``features check`` runs, is an InputError), then mapped."""
        spec = self.spec
        error = first_error(row_group_problems(spec, table, where, with_label=self.with_label), spec)
        if error is not None:
            raise error
        n = table.num_rows
        jagged: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for f in spec.of_kind("id", *LIST_KINDS):
            col = table.column(f.column).combine_chunks()
            if f.kind == "id":
                valid = col.is_valid().to_numpy(zero_copy_only=False)
                lengths = valid.astype(np.int32)
                flat = col.filter(col.is_valid())
            else:
                lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy().astype(np.int32)
                flat = pc.list_flatten(col)
            values = flat.to_numpy(zero_copy_only=False)
            if f.kind in HISTORY_KINDS:  # an event feature is cut like its history (same lengths: checked)
                lengths, values = keep_last(lengths, values, f.max_len)
            rows, n_oov = map_ids(
                values, spec.table_of_key(f.name), f.mapping, where=where, feature=f.name, spec_path=spec.path
            )
            self.stats.record(f.name, len(rows), n_oov)
            jagged[f.name] = (lengths, rows)

        domains = self._domains(table)
        cand = spec.candidate
        cand_col = table.column(cand.column).combine_chunks()
        cand_ids = cand_col.to_numpy(zero_copy_only=False)
        for i, d in enumerate(spec.domain_names):
            mask = domains == i
            key = spec.candidate_key(d)
            rows, n_oov = map_ids(
                cand_ids[mask],
                spec.table_of_key(key),
                cand.mapping,
                where=where,
                feature=key,
                spec_path=spec.path,
            )
            self.stats.record(key, len(rows), n_oov)
            jagged[key] = (mask.astype(np.int32), rows)
        where_so_far = f"{where}, counted over every row group this process has read so far"
        check_oov_fraction(spec, self.stats.oov, self.stats.ids, where=where_so_far)

        self.stats.rows += n
        row_ids = self._row_ids(table)
        return Block(self._dense(table), self._labels(table), domains, row_ids, jagged)

    def _row_ids(self, table: pa.Table) -> np.ndarray:
        """The row ids as int64 (-1 for string ids; checked: not null, unique)."""
        rid = table.column(self.spec.row_id).combine_chunks()
        if pa.types.is_integer(rid.type):
            return rid.to_numpy().astype(np.int64)
        return np.full(len(rid), -1, np.int64)

    def _domains(self, table: pa.Table) -> np.ndarray:
        """Each row's domain index (checked: every domain declared)."""
        return domain_index(self.spec, table).to_numpy().astype(np.int64)

    def _dense(self, table: pa.Table) -> np.ndarray:
        feats = self.spec.dense_features
        if not feats:  # DenseArch needs one input: a constant column keeps the interface uniform
            return np.ones((table.num_rows, 1), np.float32)
        out = np.empty((table.num_rows, len(feats)), np.float32)
        for j, f in enumerate(feats):
            x = table.column(f.column).to_numpy().astype(np.float32)  # nulls -> NaN
            missing = ~np.isfinite(x)
            self.stats.add(self.stats.dense_filled, f.name, int(missing.sum()))
            x[missing] = f.fill
            if f.transform == "log1p":  # checked: no negative values
                x = np.log1p(x)
            elif f.transform == "standardize":
                x = (x - f.mean) / f.std
            out[:, j] = x
        return out

    def _labels(self, table: pa.Table) -> np.ndarray:
        """The labels as float32 (checked: 0/1, no null, no NaN)."""
        if not self.with_label:
            return np.zeros(table.num_rows, np.float32)
        return table.column(self.spec.label).to_numpy().astype(np.float32)


class ParquetBatchReader:
    """Streams one rank's share of a Parquet file or folder as fixed-size :class:`Batch` es.

    Args:
        spec: the feature spec (columns, id mapping, truncation).
        path: a Parquet file or a folder of them.
        batch_size: rows per batch (B), the same on every rank.
        rank, world_size: this process's share: units are balanced across ranks by row count.
        shuffle: per epoch, read the units in a random order into a buffer of up to ``shuffle_buffer_mb`` of
            mapped rows and yield the buffer's rows in a random order. When the rank's share fits in the
            buffer (e.g. ml-1m at the 1 GiB default), every epoch is a permutation of the whole share;
            otherwise each buffer is a random sample of units from all over the split.
        seed: shuffling seed (the epoch is added, so every epoch differs and every run repeats).
        with_label: False for unlabeled scoring input.

    Example::

        reader = ParquetBatchReader(spec, "data/demo/train", batch_size=512, rank=0, world_size=2)
        for batch in reader.batches(epoch=0, num_batches=reader.num_batches):
            ...
    """

    def __init__(
        self,
        spec: FeatureSpec,
        path: DataPaths,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer_mb: float = 1024,
        with_label: bool = True,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.", fix="set data.batch_size.")
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        if shuffle_buffer_mb < 0:
            raise InputError(
                f"data.shuffle_buffer_mb must be >= 0, got {shuffle_buffer_mb}.",
                fix="set it to the memory (MB per rank) for mixing training rows, e.g. 1024; 0 mixes within a unit.",
            )
        self.shuffle_buffer_bytes = int(shuffle_buffer_mb * 2**20)
        self.units = assign_units(discover_units(spec, path, with_label=with_label), world_size)[rank]
        self.converter = BlockConverter(spec, with_label=with_label)

    @property
    def num_rows(self) -> int:
        return sum(u.num_rows for u in self.units)

    @property
    def num_batches(self) -> int:
        """Batches this rank yields for its rows (the last one padded)."""
        return -(-self.num_rows // self.batch_size)

    @property
    def stats(self) -> ReaderStats:
        return self.converter.stats

    def _read(self, unit: Unit) -> Block:
        return self.converter.convert(read_unit(unit, self.converter.columns), str(unit))

    def blocks(self, epoch: int = 0) -> Iterator[Block]:
        """This rank's rows as blocks: one per unit in file order, or when ``shuffle`` the units in a random
        order, gathered into buffers of up to ``shuffle_buffer_mb`` (the unit that fills a buffer is its
        last), whose rows are yielded in a random order as blocks of ``batch_size`` rows."""
        if not self.shuffle:
            yield from (self._read(u) for u in self.units)
            return
        rng = np.random.default_rng([self.seed, epoch])
        buffer: list[Block] = []
        held = 0
        for i in rng.permutation(len(self.units)):
            buffer.append(self._read(self.units[i]))
            held += buffer[-1].nbytes
            if held >= self.shuffle_buffer_bytes:
                yield from self._mixed(buffer, rng)
                buffer, held = [], 0
        if buffer:
            yield from self._mixed(buffer, rng)

    def _mixed(self, buffer: list[Block], rng: np.random.Generator) -> Iterator[Block]:
        """The buffer's rows in a random order, as blocks of ``batch_size`` rows. The buffer is concatenated
        once (a sequential copy) and each batch gathers its rows from it with the cached row offsets; a
        permuted copy of the whole buffer would cost a random gather of every value and twice the memory."""
        block = Block.concat(buffer)
        buffer.clear()  # the parts are copied into ``block``: let them go
        order = rng.permutation(len(block))
        for start in range(0, len(order), self.batch_size):
            yield block.take(order[start : start + self.batch_size])

    def row_slices(self, epoch: int = 0) -> Iterator[Block]:
        """This rank's rows cut into blocks of ``batch_size`` rows (the last one shorter), in batch order."""
        carry: Block | None = None
        for block in self.blocks(epoch):
            if carry is not None:
                block = Block.concat([carry, block])
            full = len(block) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                yield block.slice(start, start + self.batch_size)
            carry = block.slice(full, len(block)) if full < len(block) else None
        if carry is not None:
            yield carry

    def batches(self, epoch: int = 0, num_batches: int | None = None, skip: int = 0) -> Iterator[Batch]:
        """Exactly ``num_batches - skip`` batches: this epoch's batches ``skip..num_batches-1`` (default count:
        this rank's own); past the data, empty batches. ``skip`` resumes an epoch mid-way: the skipped
        batches are cut the same way (so the rest are identical) but never converted to tensors."""
        total = self.num_batches if num_batches is None else num_batches
        pooled, seq = self.spec.pooled_keys, self.spec.sequence_keys
        emitted = 0
        for rows in self.row_slices(epoch):
            if emitted == total:
                return
            if emitted >= skip:
                yield rows.to_batch(pooled, seq, self.batch_size)
            emitted += 1
        while emitted < total:
            if emitted >= skip:
                yield empty_batch(self.spec, self.batch_size)
            emitted += 1
