"""Sequence encoders: a domain's jagged behaviour history -> K interest vectors [B, K, D].

Every encoder takes the history embeddings as jagged values (no padding to the longest history) and returns
a fixed number of interests per user, so the ranker is indifferent to which one it gets.
"""

from __future__ import annotations

import torch
from torch import nn


def segment_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Row index of every jagged value: [sum L] int64 (e.g. lengths [2, 0, 1] -> [0, 0, 2])."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long())


class MeanSequenceEncoder(nn.Module):
    """The mean of a user's history embeddings; a learned vector for users with no history in the domain.

    Args:
        embedding_dim: D.

    Shapes:
        values: [sum L, D] history embeddings, row-major by user; lengths: [B].
        returns: [B, 1, D] (K = 1).

    Example::

        enc = MeanSequenceEncoder(embedding_dim=8)
        interests = enc(torch.rand(5, 8), torch.tensor([2, 0, 3]))  # [3, 1, 8]; row 1 = enc.empty
    """

    num_slots: int = 1

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        # Not zeros: an empty history must still be distinguishable from a history that averages to ~0.
        self.empty = nn.Parameter(torch.randn(embedding_dim) * 0.01)

    def forward(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, dim = lengths.numel(), values.shape[-1]
        sums = values.new_zeros(batch, dim).index_add(0, segment_ids(lengths), values)
        mean = sums / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)
        out = torch.where((lengths > 0).unsqueeze(1), mean, self.empty.expand(batch, dim))
        return out.unsqueeze(1)


SEQUENCE_ENCODERS: dict[str, type[nn.Module]] = {"mean": MeanSequenceEncoder}


def build_sequence_encoder(name: str, embedding_dim: int) -> nn.Module:
    """The encoder named by ``model.sequence_encoder`` in the config."""
    if name not in SEQUENCE_ENCODERS:
        raise ValueError(f"unknown sequence_encoder {name!r}; known: {sorted(SEQUENCE_ENCODERS)}")
    return SEQUENCE_ENCODERS[name](embedding_dim)
