"""The DLRM-style cross-domain ranker: sparse arch, dense arch, per-domain sequence encoders, interaction,
over arch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.models.dlrm import DenseArch, InteractionArch, OverArch, SparseArch
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from crossrank.features.spec import FeatureSpec
from crossrank.models.attention import TargetAttention, complete_offsets, segment_ids
from crossrank.models.baselines import MeanSequenceEncoder, SelfAttentionEncoder
from crossrank.models.elastic import ElasticConfig, ElasticEncoder
from crossrank.models.fusion import CrossDomainFusion, FusionConfig, StackedElasticFusion
from crossrank.models.sequence import SequenceEncoders, build_sequence_encoder

# Encoders whose interests ignore the candidate (tests/test_grouped_scoring.py checks each one): rows that
# share a history share its interests. DIN's target attention is not one of them.
TARGET_FREE_ENCODERS = (ElasticEncoder, SelfAttentionEncoder, MeanSequenceEncoder)


@dataclass
class RankerConfig:
    """Model hyper-parameters (the ``model:`` section of a job config).

    Args:
        dense_arch_layer_sizes: hidden sizes of the dense MLP; a last layer of size D is appended.
        over_arch_layer_sizes: sizes of the over arch MLP; must end with 1 (the logit).
        sequence_encoder: the per-domain history encoder: ``elastic`` (default), ``self_attention``, ``din``
            or ``mean`` (``crossrank.models.sequence.SEQUENCE_ENCODERS``).
        encoder: the encoders' hyper-parameters (slots, heads, layers, memory bank).
        fusion: cross-domain fusion of the interests (GCA and its ablations).
    """

    dense_arch_layer_sizes: list[int] = field(default_factory=lambda: [64])
    over_arch_layer_sizes: list[int] = field(default_factory=lambda: [128, 64, 1])
    sequence_encoder: str = "elastic"
    encoder: ElasticConfig = field(default_factory=ElasticConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


class CrossDomainRanker(nn.Module):
    """Predicts the click logit of a candidate from pooled ids, dense features and every domain's history.

    Pooled features go through an ``EmbeddingBagCollection`` (TorchRec ``SparseArch``) -> [B, F, D]. Each
    domain's history and the candidate share that domain's item table in one ``EmbeddingCollection``:
    the history is jagged [sum L_d, D], the candidate slot has length 1 in its own domain and 0 in the
    others. A sequence encoder per domain turns the jagged history into [B, K, D] interests; GCA fuses
    each domain's interests with the others' (``fusion``); target attention from the candidate reads the
    fused interests out to one vector per domain. ``InteractionArch`` dots
    [dense, F pooled, candidate, N domain vectors] pairwise and ``OverArch`` maps the result to a logit.

    Args:
        spec: the feature spec (keys, tables, domains).
        config: model hyper-parameters.
        device: where to build the embedding tables (``meta`` before sharding).

    Example::

        spec = load_spec("features/specs/synthetic.yaml")
        model = CrossDomainRanker(spec, RankerConfig())
        logits, ortho = model(batch.dense, batch.pooled, batch.sequences)  # [B], [B, N] |cos(X, X')|
    """

    def __init__(self, spec: FeatureSpec, config: RankerConfig, device: torch.device | None = None) -> None:
        super().__init__()
        dim = spec.embedding_dim
        self.domains = spec.domain_names
        self.history_keys = [spec.sequence_for(d).name for d in self.domains]
        # Per domain, the event feature whose embedding scales each history event's (or None).
        self.event_keys = [event.name if (event := spec.event_for(d)) else None for d in self.domains]
        self.candidate_keys = [spec.candidate_key(d) for d in self.domains]
        self.sparse_arch = SparseArch(
            EmbeddingBagCollection(tables=spec.embedding_bag_configs(), device=device)
        )
        self.embedding_collection = EmbeddingCollection(tables=spec.embedding_configs(), device=device)
        n_dense = max(1, len(spec.dense_features))
        self.dense_arch = DenseArch(n_dense, [*config.dense_arch_layer_sizes, dim])
        self.sequence_encoders = SequenceEncoders(
            {
                d: build_sequence_encoder(config.sequence_encoder, dim, config.encoder, d, device)
                for d in self.domains
            }
        )
        heads = config.encoder.num_heads
        self.fusion = CrossDomainFusion(self.domains, dim, heads, config.fusion)
        self.stacked = None
        if config.fusion.placement == "stack" and config.encoder.num_layers > 1:
            if config.sequence_encoder != "elastic" or config.fusion.kind not in ("gca", "cross_attention"):
                raise ValueError(
                    "fusion.placement 'stack' needs sequence_encoder 'elastic' and fusion gca/cross_attention"
                )
            inner = [
                CrossDomainFusion(self.domains, dim, heads, config.fusion)
                for _ in range(config.encoder.num_layers - 1)
            ]
            self.stacked = StackedElasticFusion(self.sequence_encoders.dispatchers(), inner)
        self.readouts = nn.ModuleDict({d: TargetAttention(dim) for d in self.domains})
        num_sparse = self.sparse_arch.F + 1 + len(self.domains)
        self.interaction = InteractionArch(num_sparse_features=num_sparse)
        self.over_in = dim + (num_sparse + 1) * num_sparse // 2
        self.over_arch = OverArch(self.over_in, config.over_arch_layer_sizes)

    @property
    def orthogonality_directions(self) -> list[str]:
        """Names of the columns of the ``ortho`` output, e.g. ``["A←B", "B←A"]``."""
        return self.fusion.directions

    def forward(
        self, dense: torch.Tensor, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            dense: [B, F_dense].
            pooled: KJT of the pooled features.
            sequences: KJT of histories and candidate slots.

        Returns:
            [B] logits and [B, N] orthogonality |cos(X, X')| per fusion direction ([B, 0] without
            cross-attention).
        """
        pooled_emb, candidate, values, lengths = self._lookup(pooled, sequences)
        fused, ortho = self._interests(values, lengths, candidate)
        return self._head(dense, pooled_emb, candidate, fused), ortho

    @property
    def target_free(self) -> bool:
        """Whether the interests and their fusion ignore the candidate (every encoder but DIN), so that rows
        sharing a history can share their encoding exactly (:meth:`forward_grouped`)."""
        return self.stacked is not None or all(
            isinstance(enc, TARGET_FREE_ENCODERS) for enc in self.sequence_encoders.values()
        )

    def forward_grouped(
        self,
        dense: torch.Tensor,
        pooled: KeyedJaggedTensor,
        sequences: KeyedJaggedTensor,
        history_group: torch.Tensor,
        num_histories: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` for rows that share histories, each distinct history looked up and encoded once
        (inference: scoring and evaluation; training keeps :meth:`forward`).

        With a target-free model (:attr:`target_free`) the interests and the fusion run once per distinct
        history and are copied to its rows; the readouts, the interaction and the over arch run per row.
        DIN's encoder needs the candidate: there only the history lookup is shared, and the encoder runs
        on every row's copy of its history. The logits equal :meth:`forward` on the rows' own histories
        (to float rounding).

        Args:
            dense: [B, F_dense].
            pooled: KJT of the pooled features, stride B.
            sequences: KJT, stride B: row u < ``num_histories`` of every history key holds distinct history
                u (the other rows are empty); every row's candidate slot as in :meth:`forward`.
            history_group: [B] int64, the distinct history of each row (< ``num_histories``).
            num_histories: U, the number of distinct histories.

        Returns:
            [B] logits and [B, N] orthogonality, as :meth:`forward`.

        Example::

            logits, ortho = model.forward_grouped(dense, pooled, compact_sequences, torch.tensor([0, 0, 1]), 2)
        """
        pooled_emb, candidate, values, lengths = self._lookup(pooled, sequences)
        lengths = [n[:num_histories] for n in lengths]
        if self.target_free:  # the encoders never read the candidate: zeros stand in for it
            shared = candidate.new_zeros(num_histories, candidate.shape[1])
            fused, ortho = self._interests(values, lengths, shared)
            fused = [f.index_select(0, history_group) for f in fused]
            ortho = ortho.index_select(0, history_group)
        else:
            rows = [jagged_rows(v, n, history_group) for v, n in zip(values, lengths, strict=True)]
            fused, ortho = self._interests([r[0] for r in rows], [r[1] for r in rows], candidate)
        return self._head(dense, pooled_emb, candidate, fused), ortho

    def _lookup(
        self, pooled: KeyedJaggedTensor, sequences: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The embedding lookups: pooled [B, F, D], candidate [B, D], and each domain's history values
        [sum L_d, D] and lengths [B]."""
        pooled_emb = self.sparse_arch(pooled)  # [B, F, D]
        jagged = self.embedding_collection(sequences)
        batch, dim = pooled_emb.shape[0], pooled_emb.shape[2]
        candidate = pooled_emb.new_zeros(batch, dim)
        for cand_key in self.candidate_keys:  # length 1 in the row's own domain, 0 elsewhere
            cand = jagged[cand_key]
            candidate = candidate.index_add(0, segment_ids(cand.lengths()), cand.values())
        hists = [jagged[key] for key in self.history_keys]
        values = [h.values() for h in hists]
        # An event scales its item's embedding, x_t = item_t * (1 + event_t) (same lengths: checked by the
        # reader): unlike a sum, a mean or attention over the events can then tell liked items from disliked
        # ones (e.g. add one set and subtract the other); a sum only shifts every event alike.
        for i, key in enumerate(self.event_keys):
            if key is not None:
                values[i] = values[i] * (1.0 + jagged[key].values())
        return pooled_emb, candidate, values, [h.lengths() for h in hists]

    def _interests(
        self, values: list[torch.Tensor], lengths: list[torch.Tensor], candidate: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each domain's fused interests [B, K, D] and the orthogonality [B, N] of the histories."""
        # Outputs of leaf modules are fx proxies under TorchRec's pipeline tracer: index them, never unpack.
        # The encoders are called as one module so that the tracer keeps them a leaf (SequenceEncoders).
        if self.stacked is None:
            interests = self.sequence_encoders(values, lengths, candidate)
        else:  # layer-wise cross-domain fusion, then each domain's memory bank
            interests = self.sequence_encoders.read_memory(self.stacked(values, lengths))
        fusion = self.fusion(interests)
        return fusion[0], fusion[1]

    def _head(
        self,
        dense: torch.Tensor,
        pooled_emb: torch.Tensor,
        candidate: torch.Tensor,
        fused: list[torch.Tensor],
    ) -> torch.Tensor:
        """Per row: the readouts of the fused interests, the interaction and the over arch -> [B] logits."""
        per_domain = [self.readouts[d](candidate, fused[i]) for i, d in enumerate(self.domains)]
        sparse = torch.cat([pooled_emb, candidate.unsqueeze(1), torch.stack(per_domain, dim=1)], dim=1)
        return self.over_arch(self.interaction(self.dense_arch(dense), sparse)).squeeze(-1)


def jagged_rows(
    values: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of a jagged tensor (repeats allowed): values [sum L, D], lengths [U], rows [B] ->
    (values [sum L_rows, D], lengths [B]).

    Example::

        jagged_rows(torch.arange(3.0)[:, None], torch.tensor([2, 1]), torch.tensor([1, 0, 1]))  # [[2], [0], [1], [2]]
    """
    offsets = complete_offsets(lengths)
    new_lengths = lengths.index_select(0, rows)
    new_offsets = complete_offsets(new_lengths)
    shift = offsets.index_select(0, rows) - new_offsets[:-1]  # source start minus target start, per row
    total = int(new_offsets[-1])
    gather = torch.arange(total, device=values.device) + torch.repeat_interleave(
        shift, new_lengths.long(), output_size=total
    )
    return values.index_select(0, gather), new_lengths


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """Every TorchRec embedding collection in the model: feature tables and interest memories alike."""
    return [m for m in model.modules() if isinstance(m, EmbeddingBagCollection | EmbeddingCollection)]


def dense_parameters(model: nn.Module) -> int:
    """Parameters outside TorchRec's embedding collections (what the parameter-matched baseline matches)."""
    tables = embedding_modules(model)
    return sum(p.numel() for p in model.parameters()) - sum(p.numel() for m in tables for p in m.parameters())


def param_matched_over_arch(spec: FeatureSpec, config: RankerConfig) -> tuple[list[int], int, int]:
    """Over-arch sizes that give the ``none``-fusion model the dense parameter count of the GCA model.

    Scales every hidden layer of the over arch by one factor (bisection). Returns (sizes, target count,
    matched count).
    """
    meta = torch.device("meta")
    gca = dataclasses.replace(
        config, fusion=dataclasses.replace(config.fusion, kind="gca", param_matched=False)
    )
    target = dense_parameters(CrossDomainRanker(spec, gca, device=meta))
    base = dataclasses.replace(
        config, fusion=dataclasses.replace(config.fusion, kind="none", param_matched=False)
    )
    hidden = config.over_arch_layer_sizes[:-1]

    def count(scale: float) -> tuple[list[int], int]:
        sizes = [max(1, round(h * scale)) for h in hidden] + [1]
        return sizes, dense_parameters(
            CrossDomainRanker(spec, dataclasses.replace(base, over_arch_layer_sizes=sizes), device=meta)
        )

    lo, hi = 1.0, 2.0
    while count(hi)[1] < target:
        hi *= 2
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid)[1] < target else (lo, mid)
    sizes, got = min((count(lo), count(hi)), key=lambda sc: abs(sc[1] - target))
    return sizes, target, got


class RankerTrain(nn.Module):
    """Wraps the ranker for ``TrainPipelineSparseDist``: batch in, ``(loss, (loss, logits, labels, weights,
    domains, ortho))`` out. The loss is the BCE summed over real rows (padding rows have weight 0) times
    ``batch.loss_scale``: the batch's mean by default, the step's global mean over all ranks' real rows when
    the trainer sets the scale (see ``Batch``); ``ortho`` [B, N] is |cos(X, X')| per fusion direction
    (measured, never a loss term).

    Example::

        loss, (_, logits, labels, weights, domains, ortho) = RankerTrain(model)(batch)
    """

    def __init__(self, model: CrossDomainRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):  # type: ignore[no-untyped-def]  # fx tracing needs an unannotated batch
        logits, ortho = self.model(batch.dense, batch.pooled, batch.sequences)
        per_row = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
        loss = (per_row * batch.weights).sum() * batch.loss_scale.sum()
        return loss, (
            loss.detach(),
            logits.detach(),
            batch.labels,
            batch.weights,
            batch.domains,
            ortho.detach(),
        )


def build_ranker(
    spec: FeatureSpec, config: RankerConfig, device: torch.device | None = None
) -> tuple[CrossDomainRanker, dict[str, int]]:
    """The ranker a config asks for, resolving ``fusion.param_matched`` (the ``none`` model widened to the
    GCA model's dense parameter count). Returns the model and its parameter report."""
    report: dict[str, int] = {}
    if config.fusion.param_matched:
        if config.fusion.kind != "none":
            raise ValueError("fusion.param_matched applies to fusion.kind 'none' (the baseline to widen)")
        sizes, target, got = param_matched_over_arch(spec, config)
        config = dataclasses.replace(config, over_arch_layer_sizes=sizes)
        report = {"param_matched_target_dense": target, "param_matched_dense": got}
    model = CrossDomainRanker(spec, config, device=device)
    dense = dense_parameters(model)
    return model, {"dense": dense, "embedding": sum(p.numel() for p in model.parameters()) - dense, **report}
