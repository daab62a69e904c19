"""The training benchmark's pieces and the prefetcher it measures: batches come in order and complete,
errors surface in the consumer, an early stop ends the thread; the benchmark's data-path split adds up and
counts real rows only."""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType

import pytest

from crossrank.features.errors import InputError
from crossrank.features.spec import load_spec
from crossrank.pipeline.reading.prefetch import Prefetcher
from crossrank.pipeline.reading.reader import ParquetBatchReader
from tests.conftest import load_benchmark

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("train_throughput")


def test_prefetched_batches_equal_the_serial_ones(small_synthetic: Path, synthetic_spec: Path) -> None:
    spec = load_spec(synthetic_spec)
    reader = ParquetBatchReader(spec, small_synthetic / "train", 256, shuffle=True, seed=1)
    steps = reader.num_batches + 2  # two padding batches past the data
    serial = list(reader.batches(epoch=3, num_batches=steps))
    with Prefetcher(reader.batches(epoch=3, num_batches=steps), depth=2) as batches:
        fetched = list(batches)
    assert len(fetched) == len(serial) == steps
    for a, b in zip(serial, fetched, strict=True):
        assert a.row_ids.equal(b.row_ids) and a.sequences.values().equal(b.sequences.values())
        assert a.dense.equal(b.dense) and a.pooled.lengths().equal(b.pooled.lengths())


def test_producer_error_is_raised_in_the_consumer_in_order() -> None:
    def source():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise InputError("bad row group.", where="part-00000.parquet (row group 3)", fix="re-create it.")

    it = Prefetcher(source())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(InputError, match="row group 3"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_close_stops_an_endless_producer() -> None:
    made = []

    def endless():  # type: ignore[no-untyped-def]
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    with Prefetcher(endless(), depth=2) as it:
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        thread = it._thread
    assert not thread.is_alive()
    time.sleep(0.1)
    assert len(made) <= 3 + 2 + 1  # consumed + queued + the one in hand: bounded read-ahead
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([], depth=0)


def test_data_split_adds_up_and_real_rows_exclude_padding(
    bench: ModuleType, small_synthetic: Path, synthetic_spec: Path
) -> None:
    spec = load_spec(synthetic_spec)
    reader = bench.TimedReader(spec, small_synthetic / "train", 512)
    steps = reader.num_batches + 3
    split = bench.data_only(reader, steps, profile=False)
    assert set(split) == {"read", "convert", "cut_kjt"} and min(split.values()) >= 0
    assert split["read"] > 0 and split["convert"] > 0
    counter = [0]
    n = sum(1 for _ in bench.real_rows(reader.batches(num_batches=steps), counter))
    assert n == steps and counter[0] == reader.num_rows < steps * 512


def test_report_rows(bench: ModuleType) -> None:
    res = {"rows": 1000.0, "steps": 4, "memory": 1.0, "serial": 2.0, "prefetch": 1.25}
    res |= {f"ms_{p}": 1.0 for p in ("read", "convert", "cut_kjt", "forward", "backward", "optimizer")}
    throughput, split = bench.report(2, res)
    cells = [c.strip() for c in throughput.strip("|").split("|")]
    assert cells == ["2", "4", "1,000", "1,000", "500", "50.0%", "800", "20.0%"]
    assert split.count("1.00") == 6
