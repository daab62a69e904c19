"""Attention building blocks shared by the encoders: jagged segment helpers (fbgemm's jagged kernels, and
the dense-block layout the CPU runs them in), slot mixing, target attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch
from torch import nn
from torch.nn import functional as F


def complete_offsets(lengths: torch.Tensor) -> torch.Tensor:
    """[B] lengths -> [B + 1] offsets (0, l0, l0 + l1, ...)."""
    return torch.ops.fbgemm.asynchronous_complete_cumsum(lengths.long())


def segment_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Row index of every jagged value: [sum L] int64 (e.g. lengths [2, 0, 1] -> [0, 0, 2])."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long())


def jagged_softmax(logits: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """Softmax over the rows of each segment, per column: [sum L, C] -> [sum L, C] (fbgemm, no padding)."""
    return torch.ops.fbgemm.jagged_softmax(logits, offsets, max(max_len, 1))[0]


def head_segment_offsets(offsets: torch.Tensor, n: int, heads: int) -> torch.Tensor:
    """Offsets of H * B segments, one per (head, user), for head-major values [H * sum L, ...]: folding the
    heads into the segment dimension lets one fbgemm jagged call serve every head."""
    return torch.cat([offsets[:-1] + i * n for i in range(heads)] + [offsets[-1:] + (heads - 1) * n])


def headwise_jagged_pool(
    weights: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, max_len: int
) -> torch.Tensor:
    """Per segment b and head h: ``weights_bh^T @ values_bh``, computed on the jagged values.

    Args:
        weights: [sum L, K, H] attention weights.
        values: [sum L, H, d] per-head values.
        offsets: [B + 1] segment offsets.

    Returns:
        [B, K, H * d].
    """
    n, k, h = weights.shape
    d = values.shape[-1]
    batch = offsets.numel() - 1
    x = weights.permute(2, 0, 1).reshape(h * n, k)
    y = values.permute(1, 0, 2).reshape(h * n, d)
    pooled = torch.ops.fbgemm.jagged_jagged_bmm(x, y, head_segment_offsets(offsets, n, h), max(max_len, 1))
    return pooled.reshape(h, batch, k, d).permute(1, 2, 0, 3).reshape(batch, k, h * d)


@dataclass
class SegmentBuckets:
    """A jagged batch laid out as a few dense blocks of segments of similar length, for the CPU kernels.

    fbgemm's CPU ``jagged_softmax`` / ``jagged_jagged_bmm`` loop over segments; dense ``softmax`` and ``bmm``
    over padded blocks run several times faster. Segments are sorted by length (longest first, stable) and
    grouped by :func:`plan_buckets`, so the padding stays small even when one history is far longer than
    the rest. Each segment is right-aligned in its block (padding first, most recent event last), so a
    block position is the same number of events back for every segment of the block (recency embeddings
    broadcast over the block). Uniform lengths make one block that is a view of the jagged rows (no copy);
    otherwise one ``index_select`` gathers every block's rows, and its backward is another ``index_select``
    (:func:`bucket_blocks`). A batch without events is one empty block of shape (0, 0).

    Attributes:
        shapes: (segments n_b, padded length L_b) per block, in block order.
        masks: [n_b, L_b] bool per block, False at padding; ``None`` for a block without padding.
        rows: [sum n_b L_b] int64 jagged row of every block position, in block order (padding reads the
            segment's first row); ``None`` when the single block is the jagged rows themselves.
        segments: [B] segment of each block row, empty segments last; ``None`` when that is 0..B-1.
        batch: B.
        positions: [sum L] int64 position of every jagged row among the block positions (``None`` with
            ``rows``): the backward of :func:`bucket_blocks` reads the gradient back with it.
    """

    shapes: list[tuple[int, int]]
    masks: list[torch.Tensor | None]
    rows: torch.Tensor | None
    segments: torch.Tensor | None
    batch: int
    positions: torch.Tensor | None = None


# A block may pad up to BUCKET_SLACK x its events + BUCKET_OVERHEAD_ROWS rows (see plan_buckets).
BUCKET_SLACK = 1.125
BUCKET_OVERHEAD_ROWS = 2048


def plan_buckets(
    lengths: list[int], slack: float | None = None, overhead: int | None = None
) -> list[list[int]]:
    """Group the non-empty segments, longest first, into blocks padded to their first (longest) segment.

    A block grows while its padded size stays within ``slack`` x its events + ``overhead`` rows (about what
    one more block's kernel calls cost, in rows; defaults ``BUCKET_SLACK``, ``BUCKET_OVERHEAD_ROWS``), so
    the padding is bounded and the blocks are few.

    Example::

        plan_buckets([3, 4096, 0, 1000, 990])  # [[1], [3, 4, 0]]
    """
    slack = BUCKET_SLACK if slack is None else slack
    overhead = BUCKET_OVERHEAD_ROWS if overhead is None else overhead
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    blocks: list[list[int]] = []
    start = 0
    while start < len(order):
        top, end, events = lengths[order[start]], start + 1, lengths[order[start]]
        while (
            end < len(order) and (end - start + 1) * top <= slack * (events + lengths[order[end]]) + overhead
        ):
            events += lengths[order[end]]
            end += 1
        blocks.append(order[start:end])
        start = end
    return blocks


def segment_buckets(lengths: torch.Tensor) -> SegmentBuckets:
    """Plan the dense blocks of a jagged batch ([B] lengths; one host sync); see :class:`SegmentBuckets`."""
    lens = lengths.long().cpu()
    host = lens.tolist()
    batch, device = len(host), lengths.device
    if batch and host[0] > 0 and lens.eq(host[0]).all():
        return SegmentBuckets([(batch, host[0])], [None], None, None, batch)
    plan = plan_buckets(host)
    if not plan:  # no events: one empty block keeps every caller's graph (and DDP's gradients) intact
        none = torch.zeros(0, dtype=torch.long, device=device)
        return SegmentBuckets([(0, 0)], [None], none, None, batch, none)
    starts = complete_offsets(lens)[:-1]
    shapes, masks, rows, keeps = [], [], [], []
    for segs in plan:
        top, idx = host[segs[0]], torch.tensor(segs)
        shift = top - lens[idx].unsqueeze(1)  # right-aligned: padding first
        keeps.append(torch.arange(top) >= shift)  # [n_b, L_b]
        first = starts[idx].unsqueeze(1)
        rows.append(torch.where(keeps[-1], first + torch.arange(top) - shift, first).reshape(-1))
        shapes.append((len(segs), top))
        masks.append(None if bool(keeps[-1].all()) else keeps[-1].to(device))
    order = [i for segs in plan for i in segs] + [i for i, n in enumerate(host) if n == 0]
    rows_all, keep_all = torch.cat(rows), torch.cat([k.reshape(-1) for k in keeps])
    positions = torch.empty(sum(host), dtype=torch.long)
    positions[rows_all[keep_all]] = torch.arange(rows_all.numel())[keep_all]
    return SegmentBuckets(
        shapes=shapes,
        masks=masks,
        rows=rows_all.to(device),
        segments=None if order == list(range(batch)) else torch.tensor(order, device=device),
        batch=batch,
        positions=positions.to(device),
    )


class _GatherBlockRows(torch.autograd.Function):
    """``x.index_select(0, rows)`` whose backward reads the gradient back with ``positions`` (a gather, not
    ``index_select``'s scatter-add): exact when nothing depends on the padding positions, whose gradient is
    dropped (every caller masks them)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(positions)
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (positions,) = ctx.saved_tensors
        return grad.index_select(0, positions), None, None


def bucket_blocks(x: torch.Tensor, buckets: SegmentBuckets) -> list[torch.Tensor]:
    """Jagged rows [sum L, C] -> one [n_b, L_b, C] block per bucket. Padding positions hold rows of ``x`` and
    get no gradient: mask them (``buckets.masks``) so that no result depends on them."""
    if buckets.rows is None:
        return [x.view(*buckets.shapes[0], x.shape[1])]
    assert buckets.positions is not None
    flat = cast(torch.Tensor, _GatherBlockRows.apply(x, buckets.rows, buckets.positions))
    parts = flat.split([nb * lb for nb, lb in buckets.shapes])
    return [f.view(nb, lb, x.shape[1]) for f, (nb, lb) in zip(parts, buckets.shapes, strict=True)]


def segment_blocks(x: torch.Tensor, buckets: SegmentBuckets) -> list[torch.Tensor]:
    """Per-segment rows [B, ...] -> the rows of each block's segments, [n_b, ...] per block."""
    rows = x if buckets.segments is None else x.index_select(0, buckets.segments)
    sizes = [nb for nb, _ in buckets.shapes]
    return list(rows.split([*sizes, rows.shape[0] - sum(sizes)]))[: len(sizes)]


def unbucket_segments(blocks: list[torch.Tensor], buckets: SegmentBuckets) -> torch.Tensor:
    """Per-block results [n_b, ...] (at least one block) -> [B, ...] in batch order; empty segments get 0."""
    rows = sum(b.shape[0] for b in blocks)
    tail = [blocks[0].new_zeros(buckets.batch - rows, *blocks[0].shape[1:])] if rows < buckets.batch else []
    out = torch.cat([*blocks, *tail]) if len(blocks) + len(tail) > 1 else blocks[0]
    if buckets.segments is None:
        return out
    return out.new_empty(out.shape).index_copy(0, buckets.segments, out)


def padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[n_b, L_b] bool (False at padding) -> [n_b, L_b, 1] additive bias: 0 at events, -inf at padding.

    Added to logits before a softmax over positions it masks the padding like ``masked_fill``, and its
    backward is the identity (the softmax already gives the padding exact zero gradients)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))[
        ..., None
    ]


def headwise_pool(weights: torch.Tensor, values: torch.Tensor, heads: int) -> torch.Tensor:
    """Per segment and head: ``weights_h^T @ values_h``.

    One ``bmm`` computes every (head, head') pair ([n, H * K, H * d]) and the H diagonal blocks are kept:
    H x the arithmetic of one ``bmm`` per head, but one kernel call over contiguous operands instead of H
    calls on strided slices and a ``cat``, which is faster at small head sizes (d = 8 to 16).

    Args:
        weights: [n, L, H * K] (head-major columns). values: [n, L, H * d]. heads: H.

    Returns:
        [n, K, H * d].
    """
    pooled = torch.bmm(weights.transpose(1, 2), values)  # [n, H * K, H * d]
    if heads == 1:
        return pooled
    n, hk, hd = pooled.shape
    diag = pooled.view(n, heads, hk // heads, heads, hd // heads).diagonal(dim1=1, dim2=3)  # [n, K, d, H]
    return diag.permute(0, 1, 3, 2).reshape(n, hk // heads, hd)


def block_softmax_pool(
    logits: torch.Tensor, values: torch.Tensor, heads: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Per segment and head: softmax over positions of the logits, then the weighted sum of the values.

    Args:
        logits: [n_b, L_b, H * K] (head-major columns). values: [n_b, L_b, H * d]. heads: H.
        mask: [n_b, L_b] bool (False at padding) or ``None``.

    Returns:
        [n_b, K, H * d].
    """
    if mask is not None:
        logits = logits + padding_bias(mask, logits.dtype)
    return headwise_pool(torch.softmax(logits, dim=1), values, heads)


def bucketed_softmax_pool(
    logits: torch.Tensor, values: torch.Tensor, heads: int, buckets: SegmentBuckets
) -> torch.Tensor:
    """:func:`jagged_softmax` over positions then :func:`headwise_jagged_pool`, on dense padded blocks.

    Args:
        logits: [sum L, H * K] (head-major columns). values: [sum L, H * d]. heads: H.
        buckets: the batch's :class:`SegmentBuckets`.

    Returns:
        [B, K, H * d] (zeros for empty segments).
    """
    blocks = zip(bucket_blocks(logits, buckets), bucket_blocks(values, buckets), buckets.masks, strict=True)
    return unbucket_segments([block_softmax_pool(lg, v, heads, m) for lg, v, m in blocks], buckets)


def events_back(lengths: torch.Tensor) -> torch.Tensor:
    """How many events before its user's most recent one every jagged event is: [B] -> [sum L] int64
    (e.g. lengths [2, 0, 1] -> [1, 0, 0]; histories are row-major by user, most recent last)."""
    seg = segment_ids(lengths)
    return complete_offsets(lengths)[1:][seg] - 1 - torch.arange(seg.numel(), device=lengths.device)


def back_buckets(back: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-scale bucket of events ``back`` events before the most recent: floor(log2(back)) + 1, 0 for the
    most recent (the binary exponent ``frexp`` returns, exact in float64), capped at ``num_buckets - 1``."""
    return torch.frexp(back.double()).exponent.long().clamp(max=num_buckets - 1)


def recency_buckets(lengths: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-scale recency bucket of every jagged event: 0 = most recent, then 1, 2-3, 4-7, ... events back.

    Log buckets keep the table small while telling recent from old events at any history length.

    Shapes:
        lengths: [B] -> [sum L] int64.
    """
    return back_buckets(events_back(lengths), num_buckets)


class SlotMixer(nn.Module):
    """Pre-LayerNorm transformer block over the K interest slots: I + MHA(LN(I)), then + FFN(LN(.)).

    Cost O(K^2 D) per user, independent of history length.

    Args:
        dim: D. num_heads: H. ffn_mult: FFN hidden size = ffn_mult * D.

    Example::

        mixer = SlotMixer(64, 4)
        out = mixer(torch.rand(32, 16, 64))  # [B, K, D]
    """

    def __init__(self, dim: int, num_heads: int, ffn_mult: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        h = self.norm1(slots)
        slots = slots + self.attn(h, h, h, need_weights=False)[0]
        return slots + self.ffn(self.norm2(slots))


class TargetAttention(nn.Module):
    """DIN-style target attention: the candidate scores each key with an MLP over [c, k, c*k, c-k] (no
    pairwise interaction among the keys), softmax-normalised, and reads the weighted sum of the keys.

    Args:
        dim: D. hidden: MLP hidden size.

    Shapes:
        ``dense``: candidate [B, D], keys [B, K, D] -> [B, D].
        ``jagged``: candidate [B, D], keys [sum L, D] with lengths [B] -> [B, D] (0 for empty rows).

    Example::

        ta = TargetAttention(32)
        vec = ta(torch.rand(8, 32), torch.rand(8, 16, 32))  # [8, 32]
    """

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def score(self, cand: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """MLP([c, k, c*k, c-k]) -> [...] logits; ``cand`` broadcasts against ``keys`` ([..., D]).

        The first layer is split by input block, W [c, k, c*k, c-k] = (W_c + W_d) c + (W_k - W_d) k +
        W_p (c*k): no [..., 4D] concatenation, and a candidate shared by K keys is projected once.
        """
        first, act, last = cast(nn.Linear, self.mlp[0]), self.mlp[1], self.mlp[2]
        w_c, w_k, w_p, w_d = first.weight.split(keys.shape[-1], dim=1)
        hidden = (
            F.linear(cand, w_c + w_d, first.bias) + F.linear(keys, w_k - w_d) + F.linear(cand * keys, w_p)
        )
        return last(act(hidden)).squeeze(-1)

    def forward(self, candidate: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(candidate.unsqueeze(1), keys), dim=1)  # [B, K]
        return (weights.unsqueeze(-1) * keys).sum(1)

    def jagged(self, candidate: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Jagged keys [sum L, D] with lengths [B] -> [B, D] (dense blocks on CPU, fbgemm elsewhere)."""
        logits = self.score(candidate[segment_ids(lengths)], keys).unsqueeze(-1)  # [sum L, 1]
        if keys.device.type == "cpu":
            return bucketed_softmax_pool(logits, keys, 1, segment_buckets(lengths)).squeeze(1)
        offsets = complete_offsets(lengths)
        max_len = int(lengths.max()) if lengths.numel() else 0
        weights = jagged_softmax(logits, offsets, max_len)
        return headwise_jagged_pool(weights.unsqueeze(-1), keys.unsqueeze(1), offsets, max_len).squeeze(1)
