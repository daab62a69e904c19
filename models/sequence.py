"""Sequence encoders by name: a domain's jagged history -> K interest vectors [B, K, D].

Every encoder takes the history embeddings as jagged values (no padding to the longest history unless it
is the quadratic reference), the lengths and the candidate embedding, and returns a fixed number of
interests per user, so the ranker is indifferent to which one it gets.
"""

from __future__ import annotations

import torch
from torch import nn

from crossrank.models.baselines import DinEncoder, MeanSequenceEncoder, SelfAttentionEncoder
from crossrank.models.elastic import ElasticConfig, ElasticEncoder, LinearDispatcher

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
        return MeanSequenceEncoder(dim, config.mean_windows)
    raise ValueError(f"unknown sequence_encoder {name!r}; known: {list(SEQUENCE_ENCODERS)}")


class SequenceEncoders(nn.ModuleDict):
    """One sequence encoder per domain (keys: domain names, in order), called as one module.

    Why one call: TorchRec's pipeline tracer (``_rewrite_model`` -> ``Tracer`` with
    ``_get_leaf_module_names``) makes a leaf of every child without a sharded table, by its FQN, and
    traces everything else. Indexed as ``sequence_encoders[d](...)``, an encoder runs under
    ``sequence_encoders.<d>``, a name not in that list, so the tracer steps into its data-dependent code
    (``int(lengths.max())`` in DIN and self-attention) and fails. Called whole, this dict is the leaf
    whenever no encoder holds a table (``self_attention``, ``din``, ``mean``, ``elastic`` without memory);
    with ELASTIC's memory tables it is traced through, and each dispatcher (no table) is the leaf.
    Subclassing ``nn.ModuleDict`` keeps the state-dict keys ``sequence_encoders.<domain>.*``.

    Shapes:
        values: list of N [sum L_d, D]; lengths: list of N [B]; candidate: [B, D] -> list of N [B, K, D].

    Example::

        encoders = SequenceEncoders({d: build_sequence_encoder("din", 32, ElasticConfig(), d) for d in "AB"})
        interests = encoders([torch.rand(5, 32)] * 2, [torch.tensor([2, 3])] * 2, torch.rand(2, 32))
    """

    def forward(
        self, values: list[torch.Tensor], lengths: list[torch.Tensor], candidate: torch.Tensor
    ) -> list[torch.Tensor]:
        # Index the inputs, never zip them: under the tracer they may be proxies of a leaf's output.
        return [enc(values[i], lengths[i], candidate) for i, enc in enumerate(self.values())]

    def dispatchers(self) -> list[LinearDispatcher]:
        """Every domain's ELASTIC dispatcher (for ``placement: stack``); raises for other encoders."""
        return [self._elastic(d).dispatcher for d in self]

    def read_memory(self, slots: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every domain's ELASTIC memory read of its slots [B, K, D] (identity without a memory)."""
        return [self._elastic(d).read_memory(slots[i]) for i, d in enumerate(self)]

    def _elastic(self, domain: str) -> ElasticEncoder:
        enc = self[domain]
        if not isinstance(enc, ElasticEncoder):
            raise ValueError(f"domain {domain!r} has a {type(enc).__name__}, not an ELASTIC encoder")
        return enc
