"""Attention building blocks shared by the encoders: jagged segment helpers, slot mixing, target attention."""

from __future__ import annotations

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch
from torch import nn


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


def recency_buckets(lengths: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Log-scale recency bucket of every jagged event: 0 = most recent, then 1, 2-3, 4-7, ... events back.

    Log buckets keep the table small while telling recent from old events at any history length.
    """
    offsets = complete_offsets(lengths)
    seg = segment_ids(lengths)
    pos = torch.arange(seg.numel(), device=lengths.device) - offsets[:-1][seg]
    back = lengths.long()[seg] - 1 - pos  # events between this one and the most recent
    bucket = torch.floor(torch.log2(back.clamp(min=1).double())).long() + (back > 0).long()
    return bucket.clamp(max=num_buckets - 1)


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
        return self.mlp(torch.cat([cand, keys, cand * keys, cand - keys], dim=-1)).squeeze(-1)

    def forward(self, candidate: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        cand = candidate.unsqueeze(1).expand_as(keys)
        weights = torch.softmax(self.score(cand, keys), dim=1)  # [B, K]
        return (weights.unsqueeze(-1) * keys).sum(1)

    def jagged(self, candidate: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        offsets = complete_offsets(lengths)
        max_len = int(lengths.max()) if lengths.numel() else 0
        logits = self.score(candidate[segment_ids(lengths)], keys).unsqueeze(-1)  # [sum L, 1]
        weights = jagged_softmax(logits, offsets, max_len)
        return headwise_jagged_pool(weights.unsqueeze(-1), keys.unsqueeze(1), offsets, max_len).squeeze(1)
