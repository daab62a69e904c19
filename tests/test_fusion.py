"""GCA and its ablations: exactness checks, orthogonality, parameter matching, and a 2-process smoke run
of every ablation config through the real training path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from crossrank.features.spec import load_spec
from crossrank.models.fusion import CrossDomainFusion, FusionConfig, GatedCrossAttention, abs_cosine
from crossrank.models.ranker import RankerConfig, build_ranker, dense_parameters
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.conftest import launch

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"
D = 16


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_gca_with_gate_forced_to_zero_returns_x_exactly(act: str) -> None:
    gca = GatedCrossAttention(D, 4, gate_act=act)
    nn.init.zeros_(gca.gate.weight)
    nn.init.constant_(gca.gate.bias, float("-inf") if act == "sigmoid" else 0.0)
    x, y = torch.randn(3, 5, D), torch.randn(3, 7, D)
    out, x_prime = gca(x, y)
    assert torch.equal(out, x)
    assert x_prime.abs().sum() > 0  # the cross-attention itself ran


def test_ungated_cross_attention_adds_x_prime() -> None:
    ca = GatedCrossAttention(D, 4, gated=False)
    x, y = torch.randn(2, 4, D), torch.randn(2, 4, D)
    out, x_prime = ca(x, y)
    torch.testing.assert_close(out, x + x_prime)


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
def test_gca_equals_gated_residual_of_a_separate_multihead_attention(act: str) -> None:
    """out = X + act(W_g [X ; X'] + b_g) * X', X' = MHA(LN X, LN Y, LN Y), rebuilt from copied weights."""
    torch.manual_seed(0)
    gca = GatedCrossAttention(D, 4, gate_act=act)
    mha = nn.MultiheadAttention(D, 4, batch_first=True)
    mha.load_state_dict(gca.attention.state_dict())
    x, y = torch.randn(4, 8, D), torch.randn(4, 16, D)
    ln_x = nn.functional.layer_norm(x, (D,), gca.norm_q.weight, gca.norm_q.bias)
    ln_y = nn.functional.layer_norm(y, (D,), gca.norm_kv.weight, gca.norm_kv.bias)
    x_prime = mha(ln_x, ln_y, ln_y, need_weights=False)[0]
    gate = nn.functional.linear(torch.cat([x, x_prime], dim=-1), gca.gate.weight, gca.gate.bias)
    gate = torch.sigmoid(gate) if act == "sigmoid" else torch.tanh(gate)
    out, got_prime = gca(x, y)
    torch.testing.assert_close(got_prime, x_prime)
    torch.testing.assert_close(out, x + gate * x_prime)


def test_gca_checkpoint_keys_keep_the_multihead_attention_layout() -> None:
    """Checkpoints written before GCA used nn.MultiheadAttention load unchanged: same keys and shapes."""
    shapes = {k: tuple(v.shape) for k, v in GatedCrossAttention(D, 4).state_dict().items()}
    assert {k: v for k, v in shapes.items() if k.startswith("attention.")} == {
        "attention.in_proj_weight": (3 * D, D),
        "attention.in_proj_bias": (3 * D,),
        "attention.out_proj.weight": (D, D),
        "attention.out_proj.bias": (D,),
    }


def test_orthogonality_is_zero_for_orthogonal_and_one_for_parallel() -> None:
    x = torch.zeros(2, 3, 4)
    x[..., 0] = torch.randn(2, 3).abs() + 0.1
    ortho = torch.zeros(2, 3, 4)
    ortho[..., 1] = torch.randn(2, 3)
    assert torch.allclose(abs_cosine(x, ortho), torch.zeros(2))
    assert torch.allclose(abs_cosine(x, 3 * x), torch.ones(2))
    assert torch.allclose(abs_cosine(x, -x), torch.ones(2))  # |cos|: anti-parallel is aligned too


def test_fusion_kinds_shapes_and_directions() -> None:
    interests = [torch.randn(2, 4, D) for _ in range(3)]
    for kind, slots, n_dir in [("gca", 4, 3), ("cross_attention", 4, 3), ("concat", 12, 0), ("none", 4, 0)]:
        fusion = CrossDomainFusion(["A", "B", "C"], D, 4, FusionConfig(kind=kind))
        fused, ortho = fusion(interests)
        assert [f.shape for f in fused] == [torch.Size([2, slots, D])] * 3
        assert ortho.shape == (2, n_dir)
    assert CrossDomainFusion(["A", "B", "C"], D, 4, FusionConfig()).directions == ["A←B+C", "B←A+C", "C←A+B"]


def test_parameter_matched_baseline_is_within_two_percent_of_gca() -> None:
    spec = load_spec(SPEC)
    gca, gca_params = build_ranker(spec, RankerConfig(), device=torch.device("meta"))
    none_cfg = RankerConfig(fusion=FusionConfig(kind="none", param_matched=True))
    matched, report = build_ranker(spec, none_cfg, device=torch.device("meta"))
    plain, _ = build_ranker(spec, RankerConfig(fusion=FusionConfig(kind="none")), device=torch.device("meta"))
    target = dense_parameters(gca)
    assert report["param_matched_target_dense"] == target == gca_params["dense"]
    assert abs(dense_parameters(matched) - target) / target < 0.02
    assert dense_parameters(plain) < 0.98 * target  # the unmatched baseline really is smaller
    first = next(m for m in matched.over_arch.modules() if isinstance(m, nn.Linear))
    assert first.out_features > 128  # widened, not shrunk


ABLATIONS: list[dict[str, object]] = [
    {"kind": "gca"},
    {"kind": "gca", "gate_act": "tanh", "post_norm": True},
    {"kind": "gca", "placement": "stack"},
    {"kind": "cross_attention"},
    {"kind": "concat"},
    {"kind": "none"},
    {"kind": "none", "param_matched": True},
]


def train_every_ablation(data: str, run_root: str) -> list[dict[str, float]]:
    """One rank of the 2-process smoke run: every ablation config trains one step and evaluates."""
    results = []
    for i, fusion in enumerate(ABLATIONS):
        overrides = [f"model.fusion.{k}={v}" for k, v in fusion.items()]
        cfg = load_config(
            None,
            [
                f"data.spec={SPEC}",
                f"data.train={data}/train",
                f"data.test={data}/test",
                "data.batch_size=64",
                "train.epochs=1",
                "train.max_steps=2",
                "model.encoder.num_layers=2",
                "model.encoder.memory_size=256",
                f"run_dir={run_root}/{i}",
                *overrides,
            ],
        )
        results.append(train(cfg).test)
    return results


def test_every_ablation_config_trains_on_two_processes(small_synthetic: Path, tmp_path: Path) -> None:
    out = launch(2, tmp_path, train_every_ablation, str(small_synthetic), str(tmp_path))
    for fusion, metrics in zip(ABLATIONS, out[0], strict=True):
        assert 0.0 < metrics["auc"] < 1.0, fusion
        has_ortho = fusion["kind"] in ("gca", "cross_attention")
        assert ("ortho/A←B" in metrics) == has_ortho and ("ortho/B←A" in metrics) == has_ortho, fusion
        if has_ortho:
            assert 0.0 <= metrics["ortho/A←B"] <= 1.0
    assert out[0] == out[1]  # both ranks computed the same metrics from the gathered predictions


def test_stack_placement_needs_elastic_and_cross_attention() -> None:
    spec = load_spec(SPEC)
    enc = dataclasses.replace(RankerConfig().encoder, num_layers=2)
    with pytest.raises(ValueError, match="placement 'stack'"):
        build_ranker(
            spec, RankerConfig(sequence_encoder="din", encoder=enc, fusion=FusionConfig(placement="stack"))
        )
