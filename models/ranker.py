"""The DLRM-style cross-domain ranker: sparse arch, dense arch, per-domain sequence encoders, interaction,
over arch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch, SparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.spec import FeatureSpec
from models.attention import TargetAttention, segment_ids
from models.elastic import ElasticConfig
from models.sequence import build_sequence_encoder


@dataclass
class RankerConfig:
    """Model hyper-parameters (the ``model:`` section of a job config).

    Args:
        dense_arch_layer_sizes: hidden sizes of the dense MLP; a last layer of size D is appended.
        over_arch_layer_sizes: sizes of the over arch MLP; must end with 1 (the logit).
        sequence_encoder: the per-domain history encoder: ``elastic`` (default), ``self_attention``, ``din``
            or ``mean`` (``models.sequence.SEQUENCE_ENCODERS``).
        encoder: the encoders' hyper-parameters (slots, heads, layers, memory bank).
    """

    dense_arch_layer_sizes: list[int] = field(default_factory=lambda: [64])
    over_arch_layer_sizes: list[int] = field(default_factory=lambda: [128, 64, 1])
    sequence_encoder: str = "elastic"
    encoder: ElasticConfig = field(default_factory=ElasticConfig)


class CrossDomainRanker(nn.Module):
    """Predicts the click logit of a candidate from pooled ids, dense features and every domain's history.

    Pooled features go through an ``EmbeddingBagCollection`` (TorchRec ``SparseArch``) -> [B, F, D]. Each
    domain's history and the candidate share that domain's item table in one ``EmbeddingCollection``:
    the history is jagged [sum L_d, D], the candidate slot has length 1 in its own domain and 0 in the
    others. A sequence encoder per domain turns the jagged history into [B, K, D] interests; target
    attention from the candidate reads them out to one vector per domain. ``InteractionArch`` dots
    [dense, F pooled, candidate, N domain vectors] pairwise and ``OverArch`` maps the result to a logit.

    Args:
        spec: the feature spec (keys, tables, domains).
        config: model hyper-parameters.
        device: where to build the embedding tables (``meta`` before sharding).

    Example::

        spec = load_spec("features/specs/synthetic.yaml")
        model = CrossDomainRanker(spec, RankerConfig())
        logits = model(batch.dense, batch.pooled, batch.sequences)  # [B]
    """

    def __init__(self, spec: FeatureSpec, config: RankerConfig, device: torch.device | None = None) -> None:
        super().__init__()
        dim = spec.embedding_dim
        self.domains = spec.domain_names
        self.history_keys = [spec.sequence_for(d).name for d in self.domains]
        self.candidate_keys = [spec.candidate_key(d) for d in self.domains]
        self.sparse_arch = SparseArch(
            EmbeddingBagCollection(tables=spec.embedding_bag_configs(), device=device)
        )
        self.embedding_collection = EmbeddingCollection(tables=spec.embedding_configs(), device=device)
        n_dense = max(1, len(spec.dense_features))
        self.dense_arch = DenseArch(n_dense, [*config.dense_arch_layer_sizes, dim])
        self.sequence_encoders = nn.ModuleDict(
            {
                d: build_sequence_encoder(config.sequence_encoder, dim, config.encoder, d, device)
                for d in self.domains
            }
        )
        self.readouts = nn.ModuleDict({d: TargetAttention(dim) for d in self.domains})
        num_sparse = self.sparse_arch.F + 1 + len(self.domains)
        self.interaction = InteractionArch(num_sparse_features=num_sparse)
        n_inter = dim + (num_sparse + 1) * num_sparse // 2
        self.over_arch = OverArch(n_inter, config.over_arch_layer_sizes)

    def forward(
        self, dense: torch.Tensor, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor
    ) -> torch.Tensor:
        """
        Args:
            dense: [B, F_dense].
            pooled: KJT of the pooled features.
            sequences: KJT of histories and candidate slots.

        Returns:
            [B] logits.
        """
        pooled_emb = self.sparse_arch(pooled)  # [B, F, D]
        jagged = self.embedding_collection(sequences)
        batch, dim = pooled_emb.shape[0], pooled_emb.shape[2]
        candidate = pooled_emb.new_zeros(batch, dim)
        for cand_key in self.candidate_keys:  # length 1 in the row's own domain, 0 elsewhere
            cand = jagged[cand_key]
            candidate = candidate.index_add(0, segment_ids(cand.lengths()), cand.values())
        per_domain = []
        for domain, hist_key in zip(self.domains, self.history_keys, strict=True):
            hist = jagged[hist_key]
            interests = self.sequence_encoders[domain](hist.values(), hist.lengths(), candidate)  # [B, K, D]
            per_domain.append(self.readouts[domain](candidate, interests))
        sparse = torch.cat([pooled_emb, candidate.unsqueeze(1), torch.stack(per_domain, dim=1)], dim=1)
        return self.over_arch(self.interaction(self.dense_arch(dense), sparse)).squeeze(-1)


class RankerTrain(nn.Module):
    """Wraps the ranker for ``TrainPipelineSparseDist``: batch in, ``(loss, (loss, logits, labels, weights,
    domains))`` out. The loss is the weight-averaged BCE, so padding rows (weight 0) contribute nothing.

    Example::

        loss, (_, logits, labels, weights, domains) = RankerTrain(model)(batch)
    """

    def __init__(self, model: CrossDomainRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):  # type: ignore[no-untyped-def]  # fx tracing needs an unannotated batch
        logits = self.model(batch.dense, batch.pooled, batch.sequences)
        per_row = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        loss = (per_row * batch.weights).sum() / batch.weights.sum().clamp(min=1.0)
        return loss, (loss.detach(), logits.detach(), batch.labels, batch.weights, batch.domains)
