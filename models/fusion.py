"""Cross-domain fusion of interests: GCA (gated cross-attention), ungated cross-attention, concat, none,
with the orthogonality measure |cos(X, X')| of every direction (SPEC §4.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from crossrank.models.elastic import LinearDispatcher

FUSIONS: tuple[str, ...] = ("gca", "cross_attention", "concat", "none")
GATE_ACTS: tuple[str, ...] = ("sigmoid", "tanh")
PLACEMENTS: tuple[str, ...] = ("early", "stack")


@dataclass
class FusionConfig:
    """How domains' interests are fused (the ``model.fusion`` section).

    Args:
        kind: ``gca`` (X + g * X'), ``cross_attention`` (X + X'), ``concat`` (the readout sees every domain's
            slots), ``none``.
        gate_act: ``sigmoid`` or ``tanh`` for the GCA gate.
        placement: ``early`` (once, after the encoders) or ``stack`` (after every ELASTIC layer).
        post_norm: LayerNorm after the residual.
        param_matched: for ``none``: widen the over arch to the dense parameter count of the GCA model.
    """

    kind: str = "gca"
    gate_act: str = "sigmoid"
    placement: str = "early"
    post_norm: bool = False
    param_matched: bool = False


class GatedCrossAttention(nn.Module):
    """GCA: X' = MHA(LN(X), LN(Y), LN(Y)); g = act(W_g [X ; X'] + b_g) (a vector per slot); out = X + g * X'.

    The cross-attention is ``torch.nn.MultiheadAttention`` (``batch_first``) under the attribute
    ``attention``, so the state-dict keys are ``attention.in_proj_weight`` [3D, D], ``attention.in_proj_bias``
    and ``attention.out_proj.{weight,bias}``. With ``gated=False`` this is the ungated residual cross-attention
    X + X'. No orthogonality loss: |cos(X, X')| is only measured (:func:`abs_cosine`).

    Args:
        dim: D. num_heads: H. gate_act: ``sigmoid`` | ``tanh``. gated: use the gate. post_norm: LayerNorm out.

    Shapes:
        x [B, K, D] (query domain), y [B, M, D] (the other domains) -> (out [B, K, D], x_prime [B, K, D]).

    Example::

        gca = GatedCrossAttention(32, 4)
        out, x_prime = gca(torch.rand(8, 16, 32), torch.rand(8, 16, 32))
    """

    def __init__(
        self, dim: int, num_heads: int, gate_act: str = "sigmoid", gated: bool = True, post_norm: bool = False
    ) -> None:
        super().__init__()
        if gate_act not in GATE_ACTS:
            raise ValueError(f"unknown gate_act {gate_act!r}; known: {list(GATE_ACTS)}")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.gate = nn.Linear(2 * dim, dim) if gated else None
        self.act = torch.sigmoid if gate_act == "sigmoid" else torch.tanh
        self.post_norm = nn.LayerNorm(dim) if post_norm else None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.norm_kv(y)
        x_prime = self.attention(self.norm_q(x), kv, kv, need_weights=False)[0]
        update = (
            x_prime if self.gate is None else self.act(self.gate(torch.cat([x, x_prime], dim=-1))) * x_prime
        )
        out = x + update
        return (out if self.post_norm is None else self.post_norm(out)), x_prime


def abs_cosine(x: torch.Tensor, x_prime: torch.Tensor) -> torch.Tensor:
    """|cos(X_k, X'_k)| averaged over the slots: [B, K, D] x 2 -> [B] (0: orthogonal, 1: parallel)."""
    return nn.functional.cosine_similarity(x, x_prime, dim=-1, eps=1e-8).abs().mean(dim=-1)


class CrossDomainFusion(nn.Module):
    """Fuses every domain's interests with the others'. One GCA per domain: X = that domain's [B, K, D]
    interests as query, Y = the other domains' slots concatenated [B, (N-1) K, D] as keys/values.

    Args:
        domains: domain names (N >= 2). dim: D. num_heads: H. config: :class:`FusionConfig`.

    Shapes:
        interests: list of N [B, K, D] -> (fused: list of N [B, K', D] (K' = N K for ``concat``),
        ortho: [B, N] |cos(X, X')| per direction ``<domain>←<others>``, [B, 0] without cross-attention).

    Example::

        fusion = CrossDomainFusion(["A", "B"], 32, 4, FusionConfig(kind="gca"))
        fused, ortho = fusion([torch.rand(8, 16, 32), torch.rand(8, 16, 32)])
    """

    def __init__(self, domains: list[str], dim: int, num_heads: int, config: FusionConfig) -> None:
        super().__init__()
        if config.kind not in FUSIONS:
            raise ValueError(f"unknown fusion {config.kind!r}; known: {list(FUSIONS)}")
        self.kind = config.kind
        self.domains = list(domains)
        self.blocks = nn.ModuleList(
            [
                GatedCrossAttention(dim, num_heads, config.gate_act, config.kind == "gca", config.post_norm)
                for _ in domains
            ]
            if config.kind in ("gca", "cross_attention")
            else []
        )

    @property
    def directions(self) -> list[str]:
        """Names of the orthogonality directions, ``A←B`` for two domains."""
        if not len(self.blocks):
            return []
        return [f"{d}←{'+'.join(o for o in self.domains if o != d)}" for d in self.domains]

    def forward(self, interests: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        batch = interests[0].shape[0]
        if self.kind == "none":
            return interests, interests[0].new_zeros(batch, 0)
        if self.kind == "concat":
            joined = torch.cat(interests, dim=1)
            return [joined for _ in interests], interests[0].new_zeros(batch, 0)
        fused, ortho = [], []
        for i, block in enumerate(self.blocks):
            others = torch.cat([t for j, t in enumerate(interests) if j != i], dim=1)
            out, x_prime = block(interests[i], others)
            fused.append(out)
            ortho.append(abs_cosine(interests[i], x_prime))
        return fused, torch.stack(ortho, dim=1)


class StackedElasticFusion(nn.Module):
    """``placement: stack``: runs every domain's ELASTIC dispatcher layer by layer in lockstep and fuses the
    domains' slots after every layer but the last (the ranker's :class:`CrossDomainFusion` fuses the last),
    so each domain's next layer refines its events with slots that already carry the other domains.

    Holds no sharded table, so TorchRec's pipeline tracer treats it as one leaf.

    Args:
        dispatchers: each domain's :class:`~crossrank.models.elastic.LinearDispatcher` (shared with its encoder).
        fusions: one :class:`CrossDomainFusion` per inner layer (``num_layers - 1``).

    Shapes:
        values: list of N [sum L_d, D]; lengths: list of N [B] -> list of N [B, K, D].
    """

    def __init__(self, dispatchers: list[LinearDispatcher], fusions: list[CrossDomainFusion]) -> None:
        super().__init__()
        self.dispatchers = nn.ModuleList(dispatchers)
        self.fusions = nn.ModuleList(fusions)

    def _dispatchers(self) -> list[LinearDispatcher]:
        # nn.ModuleList yields plain Modules to the type checker; these are the dispatchers given above.
        return cast(list[LinearDispatcher], list(self.dispatchers))

    def forward(self, values: list[torch.Tensor], lengths: list[torch.Tensor]) -> list[torch.Tensor]:
        dispatchers = self._dispatchers()
        states = [disp.begin(v, n) for disp, v, n in zip(dispatchers, values, lengths, strict=True)]
        slots = [disp.compress(0, st) for disp, st in zip(dispatchers, states, strict=True)]
        for layer, fusion in enumerate(self.fusions, start=1):
            fused, _ = fusion(slots)
            states = [
                disp.refine(layer - 1, st, f) for disp, st, f in zip(dispatchers, states, fused, strict=True)
            ]
            slots = [disp.compress(layer, st) for disp, st in zip(dispatchers, states, strict=True)]
        return slots
