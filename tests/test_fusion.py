"""GCA and its ablations: exactness checks, orthogonality, parameter matching, and a 2-process smoke run
of every ablation config through the real training path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from features.spec import load_spec
from models.fusion import (
    CrossDomainFusion,
    FusionConfig,
    GatedCrossAttention,
    MultiHeadCrossAttention,
    abs_cosine,
)
from models.ranker import RankerConfig, build_ranker, dense_parameters
from pipeline.config import load_config
from pipeline.train import train
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


def test_cross_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    mca = MultiHeadCrossAttention(D, 4)
    ref = nn.MultiheadAttention(D, 4, batch_first=True)
    ref.in_proj_weight.data.copy_(mca.in_proj_weight)
    ref.in_proj_bias.data.copy_(mca.in_proj_bias)
    ref.out_proj.weight.data.copy_(mca.out_proj.weight)
    ref.out_proj.bias.data.copy_(mca.out_proj.bias)
    x, y = torch.randn(4, 8, D), torch.randn(4, 16, D)
    torch.testing.assert_close(mca(x, y), ref(x, y, y, need_weights=False)[0])


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
