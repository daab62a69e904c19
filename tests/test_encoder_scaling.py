"""benchmarks/encoder_scaling.py: its dense floor computes ELASTIC's function, and its memory probe sees a
step's allocations."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import ModuleType

import pytest
import torch

from crossrank.models.elastic import ElasticConfig, ElasticEncoder
from tests.conftest import load_benchmark

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_scaling.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("encoder_scaling")


@pytest.mark.parametrize("lengths", [[6, 6, 6], [5, 0, 9, 1]])
def test_dense_floor_computes_elastic(bench: ModuleType, lengths: list[int]) -> None:
    """The floor row is the same arithmetic on a padded batch: same outputs as the jagged encoder."""
    torch.manual_seed(0)
    enc = ElasticEncoder(16, ElasticConfig(num_slots=4, num_heads=2, memory_size=64, memory_topk=2), name="A")
    lens = torch.tensor(lengths)
    values = torch.randn(int(lens.sum()), 16)
    offsets = torch.ops.fbgemm.asynchronous_complete_cumsum(lens)
    padded = torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max(lengths)], 0.0)
    mask = torch.arange(max(lengths)) < lens.unsqueeze(1)
    floor = bench.DensePaddedElastic(enc)(padded, lens, mask)
    torch.testing.assert_close(floor, enc(values, lens, torch.zeros(len(lengths), 16)), atol=1e-5, rtol=1e-5)


def test_step_peak_sees_the_step_allocations(bench: ModuleType) -> None:
    """The high-water mark is reset before the step: a step touching 64 MB shows ~64 MB, an idle one ~0,
    even after a larger allocation earlier in the process."""
    big = torch.ones(48 * 2**20)  # 192 MB, freed before the measured steps
    del big
    assert bench.step_peak_mb(lambda: torch.ones(16 * 2**20).sum()) >= 60
    assert bench.step_peak_mb(lambda: None) < 20


def test_worker_reports_median_repeats_and_peak(bench: ModuleType) -> None:
    out = bench.worker("mean", [8, 3], "train", 2, 0)
    assert out.keys() == {"ms", "cpu_ms", "n", "peak_mb"} and out["n"] == 2 and out["ms"] > 0


def test_train_cost_rows_take_their_own_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/encoder_train_cost.py``: a row ``ENC+KEY=VALUE`` is ENC with that override on top of
    ``--set``, and the other rows keep the config's value."""
    cost = load_benchmark("encoder_train_cost")
    args = argparse.Namespace(config=str(PATH.parents[1] / "configs" / "ml1m.yaml"), set=["train.seed=3"])
    plain = cost.job_config(args, "mean")
    row = cost.job_config(args, "elastic+model.encoder.memory_size=0+model.encoder.num_slots=4")
    assert plain.model.sequence_encoder == "mean" and plain.model.encoder.memory_size == 4096
    assert row.model.sequence_encoder == "elastic" and row.train.seed == 3
    assert (row.model.encoder.memory_size, row.model.encoder.num_slots) == (0, 4)
