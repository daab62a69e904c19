"""Baseline sequence encoders with the ELASTIC interface (values [sum L, D], lengths [B], candidate [B, D]
-> [B, K, D]): the quadratic self-attention reference (fused SDPA), DIN-style target attention, and the
jagged mean."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch
from torch import nn
from torch.nn import functional as F

from crossrank.models.attention import (
    TargetAttention,
    complete_offsets,
    events_back,
    recency_buckets,
    segment_ids,
)
from crossrank.models.elastic import ElasticConfig, LinearDispatcher


class SelfAttentionEncoder(nn.Module):
    """Full softmax multi-head self-attention over the padded history (key padding mask), pre-LayerNorm
    with FFN, then the same slot readout as ELASTIC: the quadratic-time reference ELASTIC is measured
    against (``benchmarks/encoder_scaling.py``).

    The attention is ``F.scaled_dot_product_attention`` with a boolean key mask, which runs a fused kernel
    on CPU (no [B, H, L, L] score maps held): O(B L_max^2 D) time, O(B L_max D) memory, the baseline a user
    would pick. The benchmark keeps a written-out softmax variant as a labelled reference.

    Holds data-dependent code (pads to the longest history, a Python int), so it must be a leaf under
    TorchRec's pipeline tracer; :class:`~crossrank.models.sequence.SequenceEncoders` ensures that.

    Args:
        dim: D. config: :class:`~crossrank.models.elastic.ElasticConfig` (heads, layers, slots, recency buckets).

    Shapes:
        values [sum L, D], lengths [B], candidate [B, D] (unused) -> [B, K, D].

    Example::

        enc = SelfAttentionEncoder(64, ElasticConfig(num_slots=16))
        interests = enc(torch.rand(100, 64), torch.tensor([60, 0, 40]), torch.rand(3, 64))
    """

    def __init__(self, dim: int, config: ElasticConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = config.num_heads, dim // config.num_heads
        self.num_buckets = config.recency_buckets
        self.recency = nn.Embedding(config.recency_buckets, dim)
        nn.init.normal_(self.recency.weight, std=0.02)
        self.norm1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(config.num_layers)])
        self.qkv = nn.ModuleList([nn.Linear(dim, 3 * dim) for _ in range(config.num_layers)])
        self.proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(config.num_layers)])
        self.norm2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(config.num_layers)])
        self.ffn = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(dim, config.ffn_mult * dim), nn.GELU(), nn.Linear(config.ffn_mult * dim, dim)
                )
                for _ in range(config.num_layers)
            ]
        )
        self.readout = LinearDispatcher(dim, dataclasses.replace(config, num_layers=1))

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) over the kept keys) v.

        Args:
            q, k, v: [B, H, L, d]. keep: [B, 1, 1, L] bool, True for the keys each query may attend to.

        Returns:
            [B, H, L, d].
        """
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    def attend(self, layer: int, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """One pre-LN block: x + W_O attention(LN x), then + FFN(LN .).

        Args:
            layer: block index. x: [B, L, D] padded events. pad: [B, L] bool, True for padding keys.

        Returns:
            [B, L, D].
        """
        b, length, d = x.shape
        qkv = self.qkv[layer](self.norm1[layer](x)).reshape(b, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, d]
        out = self.attention(q, k, v, ~pad[:, None, None, :]).transpose(1, 2).reshape(b, length, d)
        x = x + self.proj[layer](out)
        return x + self.ffn[layer](self.norm2[layer](x))

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        offsets = complete_offsets(lengths)
        max_len = max(int(lengths.max()) if lengths.numel() else 0, 1)
        events = values + self.recency(recency_buckets(lengths, self.num_buckets))
        x = torch.ops.fbgemm.jagged_to_padded_dense(events, [offsets], [max_len], 0.0)  # [B, L_max, D]
        pad = torch.arange(max_len, device=values.device).unsqueeze(0) >= lengths.unsqueeze(1)
        # An all-padding row would softmax over nothing (NaN); let it see its zero slot 0, and keep its
        # result out of the readout (its jagged length is 0).
        pad[:, 0] = False
        for layer in range(len(self.qkv)):
            x = self.attend(layer, x, pad)
        attended = torch.ops.fbgemm.dense_to_jagged(x, [offsets])[0]  # back to [sum L, D]
        return self.readout(attended, lengths)


class DinEncoder(nn.Module):
    """DIN-style target attention over every raw history event (linear in L): the candidate scores each
    event with an MLP over [c, e, c*e, c-e]; softmax over the user's events; one interest (K = 1).

    Data-dependent (the jagged kernels take the longest history as a Python int): a leaf under TorchRec's
    pipeline tracer, through :class:`~crossrank.models.sequence.SequenceEncoders`.

    Args:
        dim: D. config: :class:`~crossrank.models.elastic.ElasticConfig` (recency buckets).

    Shapes:
        values [sum L, D], lengths [B], candidate [B, D] -> [B, 1, D].

    Example::

        enc = DinEncoder(64, ElasticConfig())
        interests = enc(torch.rand(100, 64), torch.tensor([60, 0, 40]), torch.rand(3, 64))  # [3, 1, 64]
    """

    num_slots = 1

    def __init__(self, dim: int, config: ElasticConfig) -> None:
        super().__init__()
        self.num_buckets = config.recency_buckets
        self.recency = nn.Embedding(config.recency_buckets, dim)
        nn.init.normal_(self.recency.weight, std=0.02)
        self.attention = TargetAttention(dim)
        self.empty = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        events = values + self.recency(recency_buckets(lengths, self.num_buckets))
        pooled = self.attention.jagged(candidate, events, lengths)
        pooled = torch.where((lengths > 0).unsqueeze(1), pooled, self.empty.expand_as(pooled))
        return pooled.unsqueeze(1)


class MeanSequenceEncoder(nn.Module):
    """The mean of a user's history embeddings, and (``windows``) the means of the latest w events for each
    window w: K = 1 + len(windows) interests, from the long-term taste to the current one, which the
    ranker's target-attention readout weighs per candidate. Learned vectors for users with no history.

    Args:
        dim: D. windows: the recent windows, in events (``model.encoder.mean_windows``; none: K = 1).

    Shapes:
        values: [sum L, D] (row-major by user, most recent last); lengths: [B] -> [B, K, D].

    Example::

        enc = MeanSequenceEncoder(8, windows=[2])
        interests = enc(torch.rand(5, 8), torch.tensor([2, 0, 3]), torch.rand(3, 8))  # [3, 2, 8]
    """

    def __init__(self, dim: int, windows: Sequence[int] = ()) -> None:
        super().__init__()
        self.windows = list(windows)
        self.num_slots = 1 + len(self.windows)
        # Not zeros: an empty history must differ from a history that averages to ~0.
        self.empty = nn.Parameter(torch.randn(dim) * 0.01)
        # Apart from ``empty`` so that a checkpoint of the plain mean keeps its state-dict keys and shapes.
        self.empty_recent = nn.Parameter(torch.randn(len(self.windows), dim) * 0.01) if self.windows else None

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        batch, dim = lengths.numel(), values.shape[-1]
        seg, counts = segment_ids(lengths), lengths.long()
        sums, sizes = [values.new_zeros(batch, dim).index_add(0, seg, values)], [counts]
        if self.windows:
            back = events_back(lengths)
            for w in self.windows:  # sum only each user's latest w events (no masked [sum L, D] copies)
                latest = (back < w).nonzero().squeeze(1)
                sums.append(values.new_zeros(batch, dim).index_add(0, seg[latest], values[latest]))
                sizes.append(counts.clamp(max=w))
        means = torch.stack(sums, 1) / torch.stack(sizes, 1).clamp(min=1).unsqueeze(-1).to(values.dtype)
        empty = self.empty.unsqueeze(0)
        if self.empty_recent is not None:
            empty = torch.cat([empty, self.empty_recent])
        return torch.where((lengths > 0).reshape(-1, 1, 1), means, empty.unsqueeze(0))
