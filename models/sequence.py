"""Sequence encoders by name: a domain's jagged history -> K interest vectors [B, K, D].

Every encoder takes the history embeddings as jagged values (no padding to the longest history unless it
is the quadratic reference), the lengths and the candidate embedding, and returns a fixed number of
interests per user, so the ranker is indifferent to which one it gets.
"""

from __future__ import annotations

import torch
from torch import nn

from models.baselines import DinEncoder, MeanSequenceEncoder, SelfAttentionEncoder
from models.elastic import ElasticConfig, ElasticEncoder

SEQUENCE_ENCODERS: tuple[str, ...] = ("elastic", "self_attention", "din", "mean")


def build_sequence_encoder(
    name: str, dim: int, config: ElasticConfig, domain: str, device: torch.device | None = None
) -> nn.Module:
    """The encoder named by ``model.sequence_encoder`` for one domain (``device`` places its tables)."""
    if name == "elastic":
        return ElasticEncoder(dim, config, name=domain, device=device)
    if name == "self_attention":
        return SelfAttentionEncoder(dim, config)
    if name == "din":
        return DinEncoder(dim, config)
    if name == "mean":
        return MeanSequenceEncoder(dim)
    raise ValueError(f"unknown sequence_encoder {name!r}; known: {list(SEQUENCE_ENCODERS)}")
