"""What a trained ELASTIC model does with its parts, measured on real batches: where the dispatcher's
attention goes (entropy over positions, mass on the most recent events, how much the K slots differ),
how the readout uses the slots, and how much of the interest memory bank is read.

These answer "why does ELASTIC not beat the mean?": a dispatcher whose softmax over positions is flat
(normalised entropy ~1, recent mass ~ the uniform share) is a mean of the history; slots that attend to
the same events (small spread) or end up parallel (|cos| ~1) are one slot; a readout that puts its weight
on one slot ignores the rest; a memory whose reads are small against the slots, or that reads few rows,
adds little. ``benchmarks/elastic_diagnostics.py`` runs a checkpoint through :class:`ElasticProbe`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crossrank.models.attention import (
    TargetAttention,
    complete_offsets,
    events_back,
    jagged_softmax,
    recency_buckets,
    segment_ids,
)
from crossrank.models.elastic import ElasticEncoder, LinearDispatcher, ProductKeyMemory
from crossrank.models.ranker import CrossDomainRanker

# A hook's handler: (domain, module, forward args, forward output).
Handler = Callable[[str, Any, tuple[torch.Tensor, ...], torch.Tensor], None]


def dispatch_weights(disp: LinearDispatcher, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The first layer's softmax over each user's positions: values [sum L, D], lengths [B] ->
    a [sum L, K, H] (for every slot k and head h, a[:, k, h] sums to 1 over a user's events)."""
    recency = recency_buckets(lengths, disp.num_buckets)
    events = values + disp.recency(recency)
    logits = disp.dispatch_logits(0, disp.norms[0](events), recency)  # [sum L, K * H], slot-major
    max_len = int(lengths.max()) if lengths.numel() else 0
    weights = jagged_softmax(logits, complete_offsets(lengths), max_len)
    return weights.reshape(-1, disp.slots, disp.heads)


def dispatch_stats(weights: torch.Tensor, lengths: torch.Tensor, recent: int) -> dict[str, torch.Tensor]:
    """Per user with at least 2 events, averaged over slots and heads (each [U]):

    - ``entropy``: H(a) / log L (1: uniform over the history, i.e. a mean; 0: one event);
    - ``recent_mass``: the weight on the ``recent`` most recent events, and ``recent_uniform``: min(recent,
      L) / L, what a mean puts there;
    - ``slot_spread``: the total-variation distance between two slots' distributions, averaged over the
      pairs (0: every slot reads the same events).
    """
    lengths = lengths.long()
    seg = segment_ids(lengths)
    users, (_, k, h) = lengths.numel(), weights.shape
    entropy = weights.new_zeros(users, k, h).index_add(0, seg, torch.special.entr(weights))
    near = (events_back(lengths) < recent).to(weights.dtype)[:, None, None]
    mass = weights.new_zeros(users, k, h).index_add(0, seg, weights * near)
    # One slot pair at a time: all K(K-1)/2 pairs at once hold [sum L, pairs, H] (~220 MB at 512 x 1k, K 8).
    spread = weights.new_zeros(users, h)
    for first, second in torch.triu_indices(k, k, offset=1).t().tolist():
        spread.index_add_(0, seg, (weights[:, first] - weights[:, second]).abs())
    spread = spread / max(k * (k - 1), 1)  # TV = half the L1 distance, averaged over the K(K-1)/2 pairs
    keep = lengths >= 2
    log_len = lengths[keep].to(weights.dtype).log()
    return {
        "entropy": entropy[keep].mean(dim=(1, 2)) / log_len,
        "recent_mass": mass[keep].mean(dim=(1, 2)),
        "recent_uniform": lengths[keep].clamp(max=recent).to(weights.dtype) / lengths[keep],
        "slot_spread": spread[keep].mean(dim=1),
    }


def slot_similarity(slots: torch.Tensor) -> torch.Tensor:
    """Mean |cos| between two different slots of a user: [B, K, D] -> [B] (1: the slots collapsed)."""
    unit = nn.functional.normalize(slots, dim=-1)
    cos = (unit @ unit.transpose(1, 2)).abs()
    k = slots.shape[1]
    return (cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)) / max(k * (k - 1), 1)


class ElasticProbe:
    """Forward hooks on a ranker's ELASTIC dispatchers, interest memories and readouts that accumulate the
    statistics above per domain over every batch the ranker runs (use it in eval mode, under ``no_grad``).

    Per domain, :meth:`summary` gives (means over users, or rows for the readout):

    - ``dispatch_entropy``, ``recent_mass``, ``recent_uniform``, ``slot_spread``: :func:`dispatch_stats`
      of the first dispatcher layer (``placement: stack`` runs the layers itself: not probed);
    - ``slot_cos``: :func:`slot_similarity` of the dispatcher's output slots;
    - ``readout_entropy`` (H / log K of the readout's softmax over the slots), ``readout_top_weight``,
      ``readout_slots_used`` (exp of the entropy of which slot gets the top weight: 1 to K);
    - ``memory_read_ratio`` (|memory read| / |slot|), ``memory_score_entropy`` (H / log m of the m rows'
      weights), ``memory_rows_read`` (the share of the memory's rows ever read).

    Args:
        ranker: a :class:`~crossrank.models.ranker.CrossDomainRanker` (``ranker_of`` unwraps DMP).
        recent: how many of the most recent events count as recent.

    Example::

        probe = ElasticProbe(ranker)
        with torch.no_grad():
            ranker(dense, pooled, sequences)
        print(probe.summary()["A"]["dispatch_entropy"])
        probe.close()
    """

    def __init__(self, ranker: CrossDomainRanker, recent: int = 16) -> None:
        self.recent = recent
        self.sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.top_slot: dict[str, torch.Tensor] = {}
        self.rows_read: dict[str, torch.Tensor] = {}
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        for domain in ranker.domains:
            enc = ranker.sequence_encoders[domain]
            if isinstance(enc, ElasticEncoder):
                self._hook(enc.dispatcher, domain, self._on_dispatcher)
                if enc.memory is not None:
                    self._hook(enc.memory, domain, self._on_memory)
            self._hook(ranker.readouts[domain], domain, self._on_readout)

    def _hook(self, module: nn.Module, domain: str, fn: Handler) -> None:
        def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            fn(domain, mod, args, out)

        self.handles.append(module.register_forward_hook(hook))

    def _add(self, domain: str, name: str, values: torch.Tensor) -> None:
        self.sums[domain][name] += float(values.double().sum())
        self.counts[domain][name] += values.numel()

    def _on_dispatcher(
        self, domain: str, disp: LinearDispatcher, args: tuple[torch.Tensor, ...], slots: torch.Tensor
    ) -> None:
        values, lengths = args
        stats = dispatch_stats(dispatch_weights(disp, values, lengths), lengths, self.recent)
        for name, per_user in stats.items():
            self._add(domain, "dispatch_entropy" if name == "entropy" else name, per_user)
        self._add(domain, "slot_cos", slot_similarity(slots[lengths > 0]))

    def _on_memory(
        self, domain: str, mem: ProductKeyMemory, args: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> None:
        (interests,) = args
        ids, scores = mem.retrieve(interests)
        read = (out - interests).norm(dim=-1)
        self._add(domain, "memory_read_ratio", read / interests.norm(dim=-1).clamp_min(1e-12))
        weights = torch.softmax(scores, dim=-1)
        entropy = torch.special.entr(weights).sum(-1) / math.log(mem.topk)
        self._add(domain, "memory_score_entropy", entropy)
        seen = self.rows_read.setdefault(domain, torch.zeros(mem.n * mem.n, dtype=torch.bool))
        seen[ids.reshape(-1).cpu()] = True

    def _on_readout(
        self, domain: str, readout: TargetAttention, args: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> None:
        candidate, keys = args
        k = keys.shape[1]
        if k < 2:
            return
        weights = torch.softmax(readout.score(candidate.unsqueeze(1), keys), dim=1)  # [B, K]
        entropy = torch.special.entr(weights).sum(-1) / math.log(k)
        self._add(domain, "readout_entropy", entropy)
        self._add(domain, "readout_top_weight", weights.max(dim=-1).values)
        counts = torch.bincount(weights.argmax(dim=-1).cpu(), minlength=k)
        self.top_slot[domain] = self.top_slot.get(domain, torch.zeros(k, dtype=torch.long)) + counts

    def summary(self) -> dict[str, dict[str, float]]:
        """Per domain, every statistic's mean over what the probe saw (see the class docstring)."""
        out: dict[str, dict[str, float]] = {}
        for domain in sorted({*self.sums, *self.top_slot, *self.rows_read}):
            stats = {n: s / max(self.counts[domain][n], 1) for n, s in self.sums[domain].items()}
            if domain in self.top_slot:
                share = self.top_slot[domain].double() / self.top_slot[domain].sum().clamp_min(1)
                stats["readout_slots_used"] = math.exp(float(torch.special.entr(share).sum()))
            if domain in self.rows_read:
                stats["memory_rows_read"] = float(self.rows_read[domain].double().mean())
            out[domain] = stats
        return out

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
