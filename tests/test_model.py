"""The ranker's pieces: the jagged mean encoder, shapes, weighted loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossrank.features.spec import load_spec
from crossrank.models.attention import segment_ids
from crossrank.models.baselines import MeanSequenceEncoder
from crossrank.models.elastic import ElasticConfig
from crossrank.models.ranker import CrossDomainRanker, RankerConfig, RankerTrain
from crossrank.models.sequence import build_sequence_encoder
from crossrank.pipeline.reading.reader import ParquetBatchReader

SPEC = Path(__file__).resolve().parents[1] / "features" / "specs" / "synthetic.yaml"


def test_segment_ids() -> None:
    assert segment_ids(torch.tensor([2, 0, 1, 3])).tolist() == [0, 0, 2, 3, 3, 3]


def test_mean_encoder_matches_padded_reference_and_handles_empty() -> None:
    torch.manual_seed(0)
    enc = MeanSequenceEncoder(6)
    lengths = torch.tensor([3, 0, 1, 5, 0])
    values = torch.randn(int(lengths.sum()), 6)
    out = enc(values, lengths, torch.zeros(5, 6))
    assert out.shape == (5, 1, 6)
    start = 0
    for i, n in enumerate(lengths.tolist()):
        expected = values[start : start + n].mean(0) if n else enc.empty
        torch.testing.assert_close(out[i, 0], expected)
        start += n


def test_mean_encoder_gradient_reaches_empty_vector_only_for_empty_rows() -> None:
    enc = MeanSequenceEncoder(4)
    enc(torch.randn(3, 4), torch.tensor([3]), torch.zeros(1, 4)).sum().backward()
    assert enc.empty.grad is not None and enc.empty.grad.abs().sum() == 0
    enc.zero_grad()
    enc(torch.randn(0, 4), torch.tensor([0]), torch.zeros(1, 4)).sum().backward()
    assert enc.empty.grad.abs().sum() > 0


def test_unknown_encoder_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sequence_encoder 'nope'"):
        build_sequence_encoder("nope", 8, ElasticConfig(), "A")


def test_ranker_forward_and_weighted_loss(small_synthetic: Path) -> None:
    spec = load_spec(SPEC)
    torch.manual_seed(0)
    model = RankerTrain(CrossDomainRanker(spec, RankerConfig()))
    reader = ParquetBatchReader(spec, small_synthetic / "test", 64)
    batch = next(iter(reader.batches()))
    loss, (_, logits, *_) = model(batch)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    assert loss.ndim == 0 and loss.item() > 0
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none")
    torch.testing.assert_close(loss, per_row.mean())  # the default scale: this batch's mean
    # Padding rows (weight 0) never count, and the scale the trainer sets decides the denominator.
    batch.weights[32:] = 0
    batch.loss_scale = torch.tensor([1 / 32])
    loss_half, _ = model(batch)
    torch.testing.assert_close(loss_half, per_row[:32].mean())


def test_candidate_shares_its_domains_table() -> None:
    spec = load_spec(SPEC)
    model = CrossDomainRanker(spec, RankerConfig())
    tables = {n for n, _ in model.embedding_collection.named_parameters()}
    assert tables == {"embeddings.item_A.weight", "embeddings.item_B.weight"}
    assert model.embedding_collection.embedding_configs()[0].feature_names == ["hist_A", "item@A"]
