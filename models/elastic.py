"""ELASTIC long-sequence compression: linear dispatcher attention from a jagged history into K interest
slots, slot mixing, optional dispatch-back for stacked layers, and a product-key interest memory bank whose
values live in a (shardable) TorchRec embedding table.

Cost is O(sum L * K * D) in the history length (no [L, L] tensors); see SPEC §4.3 and
``benchmarks/encoder_scaling.py``. On CPU the jagged softmax and pooling run as dense kernels on blocks of
similar-length histories (views for uniform lengths, bounded padding otherwise: :class:`SegmentBuckets`);
elsewhere fbgemm's jagged kernels run on the jagged rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import torch
from torch import nn
from torch.nn import functional as F
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from crossrank.models.attention import (
    SegmentBuckets,
    SlotMixer,
    back_buckets,
    bucket_blocks,
    complete_offsets,
    head_segment_offsets,
    headwise_jagged_pool,
    jagged_softmax,
    padding_bias,
    recency_buckets,
    segment_blocks,
    segment_buckets,
    unbucket_segments,
)


@dataclass
class ElasticConfig:
    """Hyper-parameters of the ELASTIC encoder (and of the baselines' shared parts).

    Args:
        num_slots: K interest slots.
        num_heads: H attention heads (D must divide by H).
        num_layers: dispatcher layers; layers after the first see events updated by dispatch-back.
        recency_buckets: log-scale recency embedding buckets (16 covers 2^15 events).
        memory_size: rows of the interest memory bank (a perfect square n^2; 0 disables it).
        memory_topk: m, sub-keys kept per half and memory rows read per slot.
        memory_key_dim: query / product-key dimension (split in two halves).
        ffn_mult: slot FFN hidden size = ffn_mult * D.
        event_residual: each slot also carries the dispatch-weighted sum of the raw event embeddings
            (heads averaged), in the item embedding space the interaction dots with the candidate. With a
            uniform dispatch that is the ``mean`` encoder's output: ELASTIC starts from the mean and learns
            where to depart from it.
        query_init_std: standard deviation of the slot queries at initialisation, a query's scale by
            default. Small queries (the old 0.02) give logits ~0: every slot starts as the history's mean,
            all slots alike, and training never pulled them apart (``benchmarks/elastic_diagnostics.py``).
        recency_prior: a learned dispatch-logit bias per recency bucket, slot and head, initialised as a
            multi-scale decay: slot k starts weighting an event ``b`` buckets back by 2^(-c_k b), with c_k
            spread evenly from 0 (uniform: a mean of the history) to ``recency_prior`` (a few latest
            events). Content logits alone start near-uniform over positions and never learned recency
            (``benchmarks/elastic_diagnostics.py``); 0 disables the bias (no parameter).
        mean_windows: the ``mean`` encoder's recent windows: besides the whole history's mean, the mean of
            the latest w events for each w (K = 1 + len); empty: the plain mean (K = 1).
    """

    num_slots: int = 8
    num_heads: int = 4
    num_layers: int = 1
    recency_buckets: int = 16
    memory_size: int = 4096
    memory_topk: int = 8
    memory_key_dim: int = 32
    ffn_mult: int = 2
    event_residual: bool = True
    query_init_std: float = 1.0
    recency_prior: float = 2.0
    mean_windows: list[int] = field(default_factory=list)


def recency_prior(config: ElasticConfig) -> torch.Tensor:
    """Initial dispatch-logit biases [recency_buckets, K * H] (slot-major columns k * H + h): slot k's
    bias at bucket b is -ln(2) c_k b with c_k = recency_prior * k / (K - 1) (0 for a single slot). A bucket
    b >= 1 holds 2^(b-1) events, so c_k < 1 leaves most of the mass on old events, c_k = 1 gives every octave
    of the history the same mass and c_k > 1 puts it on the latest events."""
    decay = torch.linspace(0.0, config.recency_prior, config.num_slots)
    bias = -math.log(2.0) * torch.arange(config.recency_buckets).unsqueeze(1) * decay  # [buckets, K]
    return bias.repeat_interleave(config.num_heads, dim=1)


@dataclass
class JaggedEvents:
    """One domain's events between dispatcher layers, in the layout of the device's kernels.

    fbgemm kernels (``buckets`` is ``None``): ``events`` [sum L, D] jagged rows. Dense-block kernels:
    ``blocks``, one [n_b, L_b, D] block per bucket of ``buckets`` (right-aligned, padding first; see
    :class:`~crossrank.models.attention.SegmentBuckets`), and ``events`` is ``None``. Both: [B + 1]
    ``offsets``, the longest history ``max_len``, the [B, 1, 1] mask of users without events, and (fbgemm)
    every event's [sum L] recency bucket ``recency``."""

    events: torch.Tensor | None
    offsets: torch.Tensor
    max_len: int
    empty: torch.Tensor
    buckets: SegmentBuckets | None = None
    blocks: list[torch.Tensor] = field(default_factory=list)
    recency: torch.Tensor | None = None


class LinearDispatcher(nn.Module):
    """Jagged history -> K interest slots with per-user softmax over positions (linear cost).

    a_{t,k,h} = softmax_t(<W_K e_t, q_{k,h}> / sqrt(D/H) + r_{b(t),k,h}) over one user's events (r: the
    ``recency_prior`` bias of event t's recency bucket, if any); I_k = sum_t a_{t,k} W_V e_t
    (per head), then ``W_O``, plus (``event_residual``) mean_h sum_t a_{t,k,h} e_t, then slot mixing
    (:class:`SlotMixer`). With ``num_layers > 1`` each layer but
    the last dispatches the slots back to the events (e'_t = e_t + sum_k softmax_k(<W_Q' e_t, W_K' I_k>)
    W_V' I_k) so the next layer compresses refined events. Users with no events get learned interests.

    Kernels (``jagged_kernels``): on CPU (``"auto"``) the events are gathered once into right-aligned
    blocks of similar-length segments (:class:`SegmentBuckets`: a view for uniform lengths, small padding
    for skewed ones), where the recency embedding is one [L_b, D] row set broadcast over the block; the
    queries are folded into the key projection (one [D, K * H] GEMM per event gives the logits); the
    softmax over positions is a dense ``softmax``; one ``bmm`` per block pools the normalised events, and
    the value projection and ``W_O`` run once per slot on the pooled events (:meth:`pool_events`,
    :meth:`slots_from_pooled`). On other devices (``"auto"``) and with ``"fbgemm"``, fbgemm's
    ``jagged_softmax`` / ``jagged_jagged_bmm`` / ``jagged_dense_bmm`` run on the jagged rows. Both compute
    the same function (``tests/test_elastic.py`` holds them equal, outputs and gradients, to 1e-5).

    Args:
        dim: D. config: :class:`ElasticConfig`.

    Shapes:
        values: [sum L, D] history embeddings (row-major by user, most recent last); lengths: [B].
        returns: [B, K, D].

    Example::

        disp = LinearDispatcher(64, ElasticConfig(num_slots=16))
        interests = disp(torch.rand(100, 64), torch.tensor([60, 0, 40]))  # [3, 16, 64]
    """

    jagged_kernels: str = "auto"  # "auto" (dense blocks on CPU, fbgemm elsewhere), "dense" or "fbgemm"

    def __init__(self, dim: int, config: ElasticConfig) -> None:
        super().__init__()
        if dim % config.num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {config.num_heads}")
        self.dim, self.heads, self.slots = dim, config.num_heads, config.num_slots
        self.head_dim = dim // config.num_heads
        self.num_layers = config.num_layers
        self.event_residual = config.event_residual
        self.recency = nn.Embedding(config.recency_buckets, dim)
        nn.init.normal_(self.recency.weight, std=0.02)
        self.num_buckets = config.recency_buckets
        self.queries = nn.ParameterList(
            [
                nn.Parameter(torch.randn(config.num_slots, dim) * config.query_init_std)
                for _ in range(config.num_layers)
            ]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(config.num_layers)])
        self.kv = nn.ModuleList([nn.Linear(dim, 2 * dim) for _ in range(config.num_layers)])
        self.out = nn.ModuleList([nn.Linear(dim, dim) for _ in range(config.num_layers)])
        self.mixers = nn.ModuleList(
            [SlotMixer(dim, config.num_heads, config.ffn_mult) for _ in range(config.num_layers)]
        )
        # Dispatch-back (slots -> events) between layers.
        self.back_q = nn.ModuleList([nn.Linear(dim, dim) for _ in range(config.num_layers - 1)])
        self.back_kv = nn.ModuleList([nn.Linear(dim, 2 * dim) for _ in range(config.num_layers - 1)])
        self.empty = nn.Parameter(torch.randn(config.num_slots, dim) * 0.02)
        self.recency_bias = (
            nn.ParameterList([nn.Parameter(recency_prior(config)) for _ in range(config.num_layers)])
            if config.recency_prior > 0
            else None
        )

    def uses_dense_blocks(self, device: torch.device) -> bool:
        """Whether this device runs the dense-block kernels (CPU under ``"auto"``) or fbgemm's."""
        if self.jagged_kernels not in ("auto", "dense", "fbgemm"):
            raise ValueError(f"jagged_kernels must be auto, dense or fbgemm, got {self.jagged_kernels!r}")
        return self.jagged_kernels == "dense" or (self.jagged_kernels == "auto" and device.type == "cpu")

    def dispatch_logits(self, layer: int, x: torch.Tensor, recency: torch.Tensor) -> torch.Tensor:
        """Dispatch logits [..., K * H] (slot-major columns: k * H + h) of normalised events x [..., D] whose
        recency buckets are ``recency`` (x's leading shape, or broadcastable to it: [L] for a block).

        The slot queries (and 1 / sqrt(d)) are folded into the key projection: <W_K,h x + b_K,h, q_kh> /
        sqrt(d) = (q_kh^T W_K,h / sqrt(d)) x + q_kh . b_K,h / sqrt(d), one [D, K * H] GEMM per event.
        """
        kv = cast(nn.Linear, self.kv[layer])  # nn.ModuleList items are typed as plain Modules
        w_k, b_k = kv.weight[: self.dim], kv.bias[: self.dim]
        q = self.queries[layer].reshape(self.slots, self.heads, self.head_dim) / math.sqrt(self.head_dim)
        w_l = torch.einsum("khj,hjc->khc", q, w_k.reshape(self.heads, self.head_dim, self.dim))
        b_l = torch.einsum("khj,hj->kh", q, b_k.reshape(self.heads, self.head_dim))
        logits = F.linear(x, w_l.reshape(-1, self.dim), b_l.reshape(-1))
        if self.recency_bias is None:
            return logits
        return logits + self.recency_bias[layer][recency]

    def pool_events(
        self, layer: int, events: torch.Tensor, mask: torch.Tensor | None, recency: torch.Tensor
    ) -> torch.Tensor:
        """A dense block of events [n, L, D] -> the dispatch-weighted sums of its normalised events,
        [n, K, H * D] (block h of slot k: head h's softmax over positions for slot k), followed with
        ``event_residual`` by the raw events' sums averaged over the heads ([n, K, H * D + D]).

        The value projection is linear and each softmax sums to 1, so sum_t a_t (W_V x_t + b_V) = W_V
        (sum_t a_t x_t) + b_V: the events are pooled first and projected per slot afterwards
        (:meth:`slots_from_pooled`), which removes the per-event value GEMM.

        Args:
            mask: [n, L] bool, False at padding, or ``None`` (no padding). recency: [L] the positions'
                recency buckets (:meth:`block_buckets`).
        """
        x = self.norms[layer](events)
        logits = self.dispatch_logits(layer, x, recency)
        if mask is not None:
            logits = logits + padding_bias(mask, logits.dtype)
        weights = torch.softmax(logits, dim=1)  # [n, L, K * H]
        # x^T a, not a^T x: both backward products then come out contiguous, as the softmax backward needs.
        pooled = torch.bmm(x.transpose(1, 2), weights)  # [n, D, K * H]
        n = x.shape[0]
        pooled = pooled.view(n, self.dim, self.slots, self.heads).permute(0, 2, 3, 1)
        normed = pooled.reshape(n, self.slots, self.heads * self.dim)
        if not self.event_residual:
            return normed
        # mean_h sum_t a_tkh e_t = sum_t (mean_h a_tkh) e_t: one [D, L] x [L, K] product, not K * H columns.
        head_mean = weights.view(n, events.shape[1], self.slots, self.heads).mean(dim=-1)  # [n, L, K]
        raw = torch.bmm(events.transpose(1, 2), head_mean).transpose(1, 2)  # [n, K, D]
        return torch.cat([normed, raw], dim=-1)

    def slots_from_pooled(self, layer: int, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled events [B, K, H * D] -> slots [B, K, D]: each head's value projection then ``W_O``, folded
        into one [H * D, D] map: W_O blockdiag(W_V,1 .. W_V,H) (and bias W_O b_V + b_O); with
        ``event_residual``, plus the pooled raw events (the last D columns, [B, K, H * D + D])."""
        kv, out = cast(nn.Linear, self.kv[layer]), cast(nn.Linear, self.out[layer])
        w_v = kv.weight[self.dim :].reshape(self.heads, self.head_dim, self.dim)
        weight = out.weight @ torch.block_diag(*w_v.unbind(0))  # [D, H * D]
        width = self.heads * self.dim
        slots = F.linear(pooled[..., :width], weight, out.weight @ kv.bias[self.dim :] + out.bias)
        return slots + pooled[..., width:] if self.event_residual else slots

    def dispatch(self, layer: int, state: JaggedEvents) -> torch.Tensor:
        """One layer's events -> slots [B, K, D] (before mixing), with the device's kernels."""
        if state.buckets is None:
            assert state.events is not None and state.recency is not None
            return self.dispatch_fbgemm(layer, state.events, state.recency, state.offsets, state.max_len)
        pooled = [
            self.pool_events(layer, events, mask, self.block_buckets(events.shape[1], events.device))
            for events, mask in zip(state.blocks, state.buckets.masks, strict=True)
        ]
        return self.slots_from_pooled(layer, unbucket_segments(pooled, state.buckets))

    def dispatch_fbgemm(
        self, layer: int, events: torch.Tensor, recency: torch.Tensor, offsets: torch.Tensor, max_len: int
    ) -> torch.Tensor:
        """:meth:`dispatch` with fbgemm's jagged kernels: events [sum L, D] whose recency buckets are
        ``recency`` [sum L] -> slots [B, K, D]."""
        n = events.shape[0]
        k, v = self.kv[layer](self.norms[layer](events)).chunk(2, dim=-1)
        k = k.reshape(n, self.heads, self.head_dim)
        v = v.reshape(n, self.heads, self.head_dim)
        q = self.queries[layer].reshape(self.slots, self.heads, self.head_dim)
        logits = torch.einsum("nhd,khd->nkh", k, q).reshape(n, self.slots * self.heads) / math.sqrt(
            self.head_dim
        )
        if self.recency_bias is not None:
            logits = logits + self.recency_bias[layer][recency]
        weights = jagged_softmax(logits, offsets, max_len)
        weights = weights.reshape(n, self.slots, self.heads)
        slots = self.out[layer](headwise_jagged_pool(weights, v, offsets, max_len))
        if not self.event_residual:
            return slots
        # As on the dense blocks: the head-averaged weights pool the raw events once, not once per head.
        head_mean = weights.mean(dim=-1, keepdim=True)  # [sum L, K, 1]
        return slots + headwise_jagged_pool(head_mean, events.unsqueeze(1), offsets, max_len)

    def head_diagonal_slots(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dispatch-back keys and values of the slots [B, K, D] as head-block-diagonal matrices, so that one
        ``bmm`` serves every head: keys [B, D, H * K] (block h: k_h^T / sqrt(d)), values [B, H * K, D]
        (block h: v_h); the zeros elsewhere add exact zeros."""
        b, k, h, d = slots.shape[0], self.slots, self.heads, self.head_dim
        keys, values = self.back_kv[layer](slots).chunk(2, dim=-1)
        eye = torch.eye(h, dtype=slots.dtype, device=slots.device)
        keys = torch.einsum("bkhj,hg->bhjgk", keys.reshape(b, k, h, d) / math.sqrt(d), eye)
        values = torch.einsum("bkhj,hg->bhkgj", values.reshape(b, k, h, d), eye)
        return keys.reshape(b, self.dim, h * k), values.reshape(b, h * k, self.dim)

    def dispatch_back_dense(self, layer: int, state: JaggedEvents, slots: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`dispatch_back` on the dense blocks: each block [n_b, L_b, D] -> its refined events. Padding
        positions get updates too (finite, never read: the next layer masks them)."""
        assert state.buckets is not None
        keys, values = self.head_diagonal_slots(layer, slots)
        blocks = zip(
            state.blocks,
            segment_blocks(keys, state.buckets),
            segment_blocks(values, state.buckets),
            strict=True,
        )
        out = []
        for events, kb, vb in blocks:
            att = (
                torch.bmm(self.back_q[layer](events), kb).unflatten(-1, (self.heads, self.slots)).softmax(-1)
            )
            out.append(events + torch.bmm(att.flatten(-2), vb))
        return out

    def dispatch_back(
        self, layer: int, events: torch.Tensor, slots: torch.Tensor, offsets: torch.Tensor, max_len: int
    ) -> torch.Tensor:
        """e'_t = e_t + attention of each event over its own user's K slots (softmax over k), jagged (fbgemm)."""
        n, b = events.shape[0], slots.shape[0]
        q = self.back_q[layer](events).reshape(n, self.heads, self.head_dim)
        k, v = self.back_kv[layer](slots).chunk(2, dim=-1)
        # Heads folded into segments: H * B users, each [L_b, d] @ [d, K].
        head_offsets = head_segment_offsets(offsets, n, self.heads)
        qh = q.permute(1, 0, 2).reshape(self.heads * n, self.head_dim)
        kh = (
            k.reshape(b, self.slots, self.heads, self.head_dim)
            .permute(2, 0, 3, 1)
            .reshape(self.heads * b, self.head_dim, self.slots)
        )
        vh = (
            v.reshape(b, self.slots, self.heads, self.head_dim)
            .permute(2, 0, 1, 3)
            .reshape(self.heads * b, self.slots, self.head_dim)
        )
        att = torch.ops.fbgemm.jagged_dense_bmm(qh, head_offsets, kh, max(max_len, 1))[0] / math.sqrt(
            self.head_dim
        )
        upd = torch.ops.fbgemm.jagged_dense_bmm(
            torch.softmax(att, dim=-1), head_offsets, vh, max(max_len, 1)
        )[0]
        return events + upd.reshape(self.heads, n, self.head_dim).permute(1, 0, 2).reshape(n, self.dim)

    def begin(self, values: torch.Tensor, lengths: torch.Tensor) -> JaggedEvents:
        """Events with their recency embedding, and the segment bookkeeping every layer reuses."""
        offsets = complete_offsets(lengths)
        max_len = int(lengths.max()) if lengths.numel() else 0
        empty = (lengths == 0).reshape(-1, 1, 1)
        if not self.uses_dense_blocks(values.device):
            recency = recency_buckets(lengths, self.num_buckets)
            return JaggedEvents(values + self.recency(recency), offsets, max_len, empty, recency=recency)
        buckets = segment_buckets(lengths)
        blocks = [
            b + self.recency(self.block_buckets(b.shape[1], b.device)) for b in bucket_blocks(values, buckets)
        ]
        return JaggedEvents(None, offsets, max_len, empty, buckets, blocks)

    def block_buckets(self, width: int, device: torch.device) -> torch.Tensor:
        """Recency buckets [L_b] of the positions of a right-aligned block of width L_b (position p is
        L_b - 1 - p events back for every segment of the block): one row set broadcast over the block."""
        return back_buckets(torch.arange(width - 1, -1, -1, device=device), self.num_buckets)

    def compress(self, layer: int, state: JaggedEvents) -> torch.Tensor:
        """Layer ``layer``: events -> mixed slots [B, K, D] (learned interests for users with no events)."""
        slots = self.dispatch(layer, state)
        return self.mixers[layer](torch.where(state.empty, self.empty.unsqueeze(0), slots))

    def refine(self, layer: int, state: JaggedEvents, slots: torch.Tensor) -> JaggedEvents:
        """Dispatch the slots back to the events for the next layer."""
        if state.buckets is not None:
            blocks = self.dispatch_back_dense(layer, state, slots)
            return replace(state, blocks=blocks)
        assert state.events is not None
        return replace(
            state, events=self.dispatch_back(layer, state.events, slots, state.offsets, state.max_len)
        )

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        state = self.begin(values, lengths)
        slots = self.compress(0, state)
        for layer in range(1, self.num_layers):
            state = self.refine(layer - 1, state, slots)
            slots = self.compress(layer, state)
        return slots


class ProductKeyMemory(nn.Module):
    """A large interest memory read sparsely with product keys (Lample et al. 2019).

    The query W_q LN(I_k) is split in two halves; each half scores its n sub-keys and keeps its top m; the
    m^2 sums of kept pairs hold the exact top m of all n^2 rows, whose values (rows of a TorchRec
    ``EmbeddingCollection`` table, so the planner shards them like any table) are averaged with softmax
    weights and added to the slot. The weighting is done on the looked-up rows in PyTorch so gradients
    reach both the table rows (through TorchRec's backward) and the query and sub-keys.

    Args:
        dim: D. size: n^2 memory rows. topk: m. key_dim: query dimension. name: table name (unique per
        model). device: where to build the value table (``meta`` before sharding).

    Shapes:
        interests: [B, K, D] -> [B, K, D].

    Example::

        mem = ProductKeyMemory(64, size=4096, topk=8, key_dim=32, name="memory_A")
        out = mem(torch.rand(4, 16, 64))
    """

    def __init__(
        self, dim: int, size: int, topk: int, key_dim: int, name: str, device: torch.device | None = None
    ) -> None:
        super().__init__()
        n = math.isqrt(size)
        if n * n != size or n < topk:
            raise ValueError(f"memory_size must be a perfect square n^2 with n >= memory_topk, got {size}")
        if key_dim % 2:
            raise ValueError(f"memory_key_dim must be even, got {key_dim}")
        self.n, self.topk, self.dim = n, topk, dim
        self.key = f"{name}@rows"
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, key_dim)
        self.sub_keys = nn.Parameter(torch.randn(2, n, key_dim // 2) / math.sqrt(key_dim // 2))
        self.values = EmbeddingCollection(
            tables=[
                EmbeddingConfig(name=name, embedding_dim=dim, num_embeddings=size, feature_names=[self.key])
            ],
            device=device,
        )

    def retrieve(self, interests: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-m memory rows and their scores per slot: ([B*K, m] int64 ids, [B*K, m] scores)."""
        m, n = self.topk, self.n
        q = self.query(self.norm(interests)).reshape(-1, 2, self.sub_keys.shape[-1])
        s1 = q[:, 0] @ self.sub_keys[0].t()  # [B*K, n]
        s2 = q[:, 1] @ self.sub_keys[1].t()
        v1, i1 = s1.topk(m, dim=-1)  # sorted, best first
        v2, i2 = s2.topk(m, dim=-1)
        # Pair (a, b) of ranks is beaten by the (a+1)(b+1) - 1 pairs of better ranks on both sides, so only
        # pairs with (a+1)(b+1) <= m can be among the top m: 20 candidates instead of 64 for m = 8.
        a, b = self.candidate_pairs(m, s1.device)
        pair = v1.index_select(1, a) + v2.index_select(1, b)
        scores, best = pair.topk(m, dim=-1)
        ids = i1.gather(1, a[best]) * n + i2.gather(1, b[best])
        return ids, scores

    @staticmethod
    def candidate_pairs(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rank pairs (a, b), 0-based, with (a + 1)(b + 1) <= m: the only ones that can reach the top m."""
        pairs = [(a, b) for a in range(m) for b in range(m // (a + 1))]
        return torch.tensor([p[0] for p in pairs], device=device), torch.tensor(
            [p[1] for p in pairs], device=device
        )

    def forward(self, interests: torch.Tensor) -> torch.Tensor:
        ids, scores = self.retrieve(interests)
        kjt = KeyedJaggedTensor(
            keys=[self.key],
            values=ids.reshape(-1),
            lengths=torch.full_like(ids[:, 0], self.topk, dtype=torch.int32),
        )
        rows = self.values(kjt)[self.key].values().reshape(-1, self.topk, self.dim)
        read = (torch.softmax(scores, dim=-1).unsqueeze(-1) * rows).sum(1)  # not bmm: slow at [m, 1] on CPU
        return interests + read.reshape(interests.shape)


class ElasticEncoder(nn.Module):
    """The ELASTIC sequence encoder: :class:`LinearDispatcher` then (optionally) :class:`ProductKeyMemory`.

    The dispatcher holds the data-dependent jagged code and no sharded module, so TorchRec's pipeline
    tracer treats it as a leaf; the memory (which holds a sharded table) is fx-traceable.

    Args:
        dim: D. config: :class:`ElasticConfig`. name: unique prefix of the memory table. device: table device.

    Shapes:
        values [sum L, D], lengths [B], candidate [B, D] (unused) -> [B, K, D].

    Example::

        enc = ElasticEncoder(64, ElasticConfig(), name="A")
        interests = enc(torch.rand(100, 64), torch.tensor([60, 0, 40]), torch.rand(3, 64))
    """

    def __init__(
        self, dim: int, config: ElasticConfig, name: str, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.num_slots = config.num_slots
        self.dispatcher = LinearDispatcher(dim, config)
        self.memory = (
            ProductKeyMemory(
                dim,
                config.memory_size,
                config.memory_topk,
                config.memory_key_dim,
                f"interest_memory_{name}",
                device,
            )
            if config.memory_size
            else None
        )

    def read_memory(self, interests: torch.Tensor) -> torch.Tensor:
        """Add the interest memory bank's read to the slots (identity without a memory)."""
        return interests if self.memory is None else self.memory(interests)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.read_memory(self.dispatcher(values, lengths))
