"""Rows that share a user's history, for inference: each distinct history of a batch is encoded once.

Scoring and evaluation tables often repeat a history: the sampled ranking protocol has 1 + 99 candidates
per (user, domain), a scoring table many candidates per user and time. :func:`group_histories` finds the
rows of a block whose every history (all the spec's ``sequence`` features) is identical, by a 64-bit hash
of each row's histories, and then checks every row against its group's first row value by value, so a
hash collision only costs sharing, never a wrong score. :func:`grouped_batch` builds a
:class:`GroupedBatch`: the rows' batch with each distinct history once, and each row's group.
:func:`forward_batch` runs either kind of batch through the model (``CrossDomainRanker.forward_grouped``
for a grouped one). Training keeps the row-by-row :class:`~crossrank.pipeline.reading.batch.Batch`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from crossrank.features.hashing import finalise
from crossrank.features.spec import FeatureSpec
from crossrank.models.ranker import CrossDomainRanker
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.reader import Block, ParquetBatchReader, jagged_take, row_offsets

_U = np.uint64
_POSITION = _U(0x9E3779B97F4A7C15)  # spreads an event's position before it joins its id


@dataclass
class HistoryGroups:
    """Which rows share their histories.

    Args:
        group: [n] int64, each row's group (0..U-1, numbered in order of first appearance).
        first: [U] int64, the first row of each group (its histories are the group's).
    """

    group: np.ndarray
    first: np.ndarray

    @property
    def num_groups(self) -> int:
        return len(self.first)


def history_hashes(jagged: dict[str, tuple[np.ndarray, np.ndarray]], keys: list[str], n: int) -> np.ndarray:
    """A 64-bit hash of each row's histories ([n] uint64): every key's length and ids, in order.

    Args:
        jagged: KJT key -> (lengths [n], values); keys: the history keys hashed.
    """
    out = np.zeros(n, _U)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        for i, key in enumerate(keys):
            lengths, values = jagged[key]
            offsets = row_offsets(lengths)
            position = np.arange(len(values), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            events = finalise(values.astype(np.int64).view(_U) + position.view(_U) * _POSITION)
            prefix = np.zeros(len(values) + 1, _U)
            np.cumsum(events, out=prefix[1:])
            per_row = prefix[offsets[1:]] - prefix[offsets[:-1]]  # wraps: a sum mod 2^64
            out = finalise(out ^ finalise(per_row ^ (lengths.astype(_U) << _U(20)) ^ _U(i)))
    return out


def _differs(
    jagged: dict[str, tuple[np.ndarray, np.ndarray]], keys: list[str], rep: np.ndarray
) -> np.ndarray:
    """[n] bool: rows whose histories differ from those of row ``rep[row]`` (any key, length or id)."""
    bad = np.zeros(len(rep), bool)
    for key in keys:
        lengths, values = jagged[key]
        bad |= lengths[rep] != lengths
        same_len = np.where(bad, np.arange(len(rep)), rep)  # rows of another length compare with themselves
        _, rep_values = jagged_take(lengths, values, same_len)
        prefix = np.zeros(len(values) + 1, np.int64)
        np.cumsum(rep_values != values, out=prefix[1:])
        offsets = row_offsets(lengths)
        bad |= prefix[offsets[1:]] > prefix[offsets[:-1]]
    return bad


def group_histories(block: Block, keys: list[str]) -> HistoryGroups:
    """Group the rows of ``block`` whose histories (KJT ``keys``) are identical.

    Rows are grouped by :func:`history_hashes`, then each row is compared with its group's first row; a
    row that differs (a hash collision) gets a group of its own, so rows of one group always hold the same
    histories.

    Example::

        groups = group_histories(block, spec.history_keys)  # block of the 1 + 99 ranking rows of 41 users
        groups.num_groups  # 41
    """
    n = len(block)
    _, first, group = np.unique(history_hashes(block.jagged, keys, n), return_index=True, return_inverse=True)
    group = group.reshape(-1)
    bad = np.flatnonzero(_differs(block.jagged, keys, first[group]))
    if len(bad):  # collisions: those rows stand alone
        group[bad] = len(first) + np.arange(len(bad))
        first = np.concatenate([first, bad])
    order = np.argsort(first, kind="stable")  # number groups by first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return HistoryGroups(rank[group].astype(np.int64), first[order].astype(np.int64))


@dataclass
class GroupedBatch:
    """A batch whose rows share histories, for inference (``CrossDomainRanker.forward_grouped``).

    Args:
        rows: the B rows as a :class:`Batch` (dense, pooled, candidates, labels, weights, row ids), except
            that its sequence KJT holds each distinct history once: row u < ``num_histories`` of every
            history key is distinct history u, the other rows are empty.
        history_group: [B] int64, each row's distinct history (padding rows: an empty one).
        num_histories: U.
    """

    rows: Batch
    history_group: torch.Tensor
    num_histories: int

    def to(self, device: torch.device, non_blocking: bool = False) -> GroupedBatch:
        return GroupedBatch(
            self.rows.to(device, non_blocking),
            self.history_group.to(device=device, non_blocking=non_blocking),
            self.num_histories,
        )

    @property
    def row_ids(self) -> torch.Tensor:
        return self.rows.row_ids


def grouped_batch(block: Block, spec: FeatureSpec, batch_size: int) -> GroupedBatch:
    """The :class:`GroupedBatch` of ``block``'s rows, padded to ``batch_size`` like ``Block.to_batch``.

    Example::

        gb = grouped_batch(block.slice(0, 4096), spec, 4096)
        logits, ortho = forward_batch(model, gb)[1:]
    """
    keys = spec.history_keys  # with the event features: rows share an encoding only if those match too
    groups = group_histories(block, keys)
    n, u = len(block), groups.num_groups
    jagged = dict(block.jagged)
    for key in keys:  # the distinct histories in rows 0..U-1, then empty rows
        lengths, values = jagged_take(*block.jagged[key], groups.first)
        jagged[key] = (np.concatenate([lengths, np.zeros(n - u, lengths.dtype)]), values)
    rows = dataclasses.replace(block, jagged=jagged).to_batch(
        spec.pooled_keys, spec.sequence_keys, batch_size
    )
    pad = batch_size - n
    # Padding rows read row U, which is empty (U <= n < batch_size), or need no group when there are none.
    group = np.concatenate([groups.group, np.full(pad, u, np.int64)])
    return GroupedBatch(rows, torch.from_numpy(group), u + (1 if pad else 0))


def grouped_batches(reader: ParquetBatchReader, num_batches: int) -> Iterator[GroupedBatch]:
    """Exactly ``num_batches`` grouped batches of the reader's rows (cut as ``reader.batches`` cuts them),
    then batches of padding only."""
    spec, size = reader.spec, reader.batch_size
    emitted = 0
    for rows in reader.row_slices():
        if emitted == num_batches:
            return
        yield grouped_batch(rows, spec, size)
        emitted += 1
    empty = Block.empty(0, max(1, len(spec.dense_features)), [*spec.sequence_keys, *spec.pooled_keys])
    for _ in range(emitted, num_batches):
        yield grouped_batch(empty, spec, size)


def ranker_of(model: torch.nn.Module) -> CrossDomainRanker:
    """The :class:`CrossDomainRanker` inside ``model`` (itself, ``RankerTrain``, DMP or DDP wrappers)."""
    for module in model.modules():
        if isinstance(module, CrossDomainRanker):
            return module
    raise TypeError(f"no CrossDomainRanker in {type(model).__name__}")


def forward_batch(
    model: torch.nn.Module, batch: Batch | GroupedBatch
) -> tuple[Batch, torch.Tensor, torch.Tensor]:
    """Inference on either kind of batch: ``(rows, logits [B], ortho [B, N])``, where ``rows`` holds the
    labels, weights, domains and row ids. A :class:`Batch` goes through ``model`` (``RankerTrain``, maybe
    sharded); a :class:`GroupedBatch` through its ranker's ``forward_grouped``. Call under ``no_grad``."""
    if isinstance(batch, Batch):
        _, (_, logits, *_, ortho) = model(batch)
        return batch, logits, ortho
    rows = batch.rows
    logits, ortho = ranker_of(model).forward_grouped(
        rows.dense, rows.pooled, rows.sequences, batch.history_group, batch.num_histories
    )
    return rows, logits, ortho
