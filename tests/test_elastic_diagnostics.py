"""ELASTIC diagnostics: the statistics on distributions whose answers are known, the probe's attention equal
to what the dispatcher really pools with, and the probe's summary on a ranker."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from crossrank.features.spec import load_spec
from crossrank.models.attention import segment_ids
from crossrank.models.diagnostics import ElasticProbe, dispatch_stats, dispatch_weights, slot_similarity
from crossrank.models.elastic import ElasticConfig, LinearDispatcher
from crossrank.models.ranker import CrossDomainRanker, RankerConfig, RankerTrain
from crossrank.pipeline.reading.reader import ParquetBatchReader

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"


def test_dispatch_stats_of_known_distributions() -> None:
    lengths = torch.tensor([4, 1, 4])  # the 1-event user is left out (its entropy is undefined)
    weights = torch.zeros(9, 2, 1)
    weights[:4, 0, 0] = 0.25  # user 0, slot 0: uniform; slot 1: all on the most recent event
    weights[3, 1, 0] = 1.0
    weights[4] = 1.0
    weights[5:, :, 0] = 0.25  # user 2: both slots uniform (no spread)
    stats = dispatch_stats(weights, lengths, recent=1)
    torch.testing.assert_close(stats["entropy"], torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(stats["recent_mass"], torch.tensor([(0.25 + 1.0) / 2, 0.25]))
    torch.testing.assert_close(stats["recent_uniform"], torch.tensor([0.25, 0.25]))
    torch.testing.assert_close(stats["slot_spread"], torch.tensor([0.75, 0.0]))


def test_slot_similarity_tells_collapsed_from_orthogonal_slots() -> None:
    collapsed = torch.tensor([[1.0, 2.0], [-2.0, -4.0]]).unsqueeze(0)
    orthogonal = torch.eye(2).unsqueeze(0)
    torch.testing.assert_close(slot_similarity(torch.cat([collapsed, orthogonal])), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("residual", [False, True])
def test_dispatch_weights_are_the_ones_the_dispatcher_pools_with(residual: bool) -> None:
    torch.manual_seed(0)
    disp = LinearDispatcher(16, ElasticConfig(num_slots=4, num_heads=2, event_residual=residual))
    with torch.no_grad():
        disp.queries[0].mul_(50)  # far from uniform, so that a wrong weighting shows
    disp.jagged_kernels = "fbgemm"
    lengths = torch.tensor([5, 0, 3, 7])
    values = torch.randn(int(lengths.sum()), 16)
    expected = disp.dispatch(0, disp.begin(values, lengths))  # [B, K, D] before mixing
    weights = dispatch_weights(disp, values, lengths)  # [sum L, K, H]
    assert dispatch_stats(weights, lengths, 2)["entropy"].max() < 0.8
    events = disp.begin(values, lengths).events
    seg = segment_ids(lengths)
    v = disp.kv[0](disp.norms[0](events)).chunk(2, dim=-1)[1].reshape(-1, 1, 2, 8)
    pooled = torch.zeros(4, 4, 2, 8).index_add(0, seg, weights.unsqueeze(-1) * v)
    got = disp.out[0](pooled.reshape(4, 4, 16))
    if residual:  # the raw events under the same weights, heads averaged
        got = got + torch.zeros(4, 4, 16).index_add(0, seg, weights.mean(-1, keepdim=True) * events[:, None])
    torch.testing.assert_close(got[lengths > 0], expected[lengths > 0])


@pytest.mark.parametrize("prior", [0.0, 2.0])
def test_probe_summarises_a_rankers_elastic_parts(small_synthetic: Path, prior: float) -> None:
    spec = load_spec(SPEC)
    torch.manual_seed(0)
    enc = ElasticConfig(num_slots=4, memory_size=64, memory_topk=4, recency_prior=prior)
    config = RankerConfig(encoder=enc)
    ranker = CrossDomainRanker(spec, config).eval()
    probe = ElasticProbe(ranker, recent=4)
    batch = next(iter(ParquetBatchReader(spec, small_synthetic / "test", 64).batches()))
    with torch.no_grad():
        RankerTrain(ranker)(batch)
    summary = probe.summary()
    probe.close()
    assert set(summary) == set(spec.domain_names)
    for stats in summary.values():
        if prior == 0:  # fresh queries, no recency bias: near uniform
            assert 0.9 < stats["dispatch_entropy"] <= 1.0 + 1e-6
            assert abs(stats["recent_mass"] - stats["recent_uniform"]) < 0.05
        else:  # the prior's later slots start on the latest events
            assert stats["dispatch_entropy"] < 0.9
            assert stats["recent_mass"] > stats["recent_uniform"] + 0.1
        assert 0.0 <= stats["slot_cos"] <= 1.0 and 0.0 < stats["memory_rows_read"] <= 1.0
        assert 1.0 <= stats["readout_slots_used"] <= 4.0 + 1e-9
        assert stats["memory_read_ratio"] > 0.0 and 0.0 <= stats["memory_score_entropy"] <= 1.0 + 1e-6
    with torch.no_grad():  # closed: a further batch changes nothing
        RankerTrain(ranker)(batch)
    assert probe.summary() == summary
    assert math.isfinite(summary[spec.domain_names[0]]["readout_entropy"])
