"""``crossrank plan``: TorchRec's planner on a simulated CUDA cluster (no GPU, no process group), on the
production example (two 2e9-row item tables, 2^20-row interest memories) for 16 hosts x 8 GPUs."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import pytest

from crossrank.features.errors import InputError
from crossrank.features.spec import load_spec
from crossrank.pipeline.cli import main
from crossrank.pipeline.training.plan import (
    GIB,
    STORAGE_RESERVATION,
    Cluster,
    PlanReport,
    parse_rows,
    plan_cluster,
    planning_config,
    with_rows,
)

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "production_example.yaml"
CONFIG = REPO / "configs" / "production_example.yaml"
ITEM_ROWS, DIM = 2_000_000_000, 128


def _peak_rss() -> int:
    """Peak RSS in bytes since the last reset (VmHWM), or the lifetime peak where it cannot be reset."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


@pytest.fixture(scope="module")
def production() -> tuple[PlanReport, int]:
    """The production example planned on 16 x 8 GPUs of 80 GiB, and the growth of the peak RSS meanwhile."""
    spec, cfg = load_spec(SPEC), planning_config(str(CONFIG))
    assert cfg.model.encoder.memory_size == 2**20
    _reset_peak_rss()
    before = _peak_rss()
    report = plan_cluster(spec, cfg, Cluster(16, 8, hbm_gb=80, batch_size=cfg.data.batch_size))
    return report, _peak_rss() - before


def test_production_example_plan_covers_every_table_within_each_rank_s_hbm(
    production: tuple[PlanReport, int],
) -> None:
    report, _ = production
    names = [t.size.name for t in report.tables]
    assert names == ["user", "item_A", "item_B", "interest_memory_A", "interest_memory_B"]
    planned = {table for module_plan in report.plan.plan.values() for table in module_plan}
    assert planned == set(names)
    assert {t.size.rows for t in report.tables if t.size.name.startswith("interest_memory")} == {2**20}
    usable = 80 * GIB * (1 - STORAGE_RESERVATION)
    assert len(report.rank_hbm) == 128
    assert all(0 < hbm < usable for hbm in report.rank_hbm), [h / GIB for h in report.rank_hbm]
    assert all(ddr <= 128 * GIB for ddr in report.rank_ddr)
    for t in report.tables:
        if t.size.name.startswith("item_"):
            assert t.sharding_type in ("row_wise", "table_row_wise")
            assert len(t.ranks) >= 64
    text = report.format()
    assert "item_A" in text and "2,000,000,000" in text and "ranks 0-7" in text


def test_planning_allocates_no_table_memory(production: tuple[PlanReport, int]) -> None:
    report, rss_growth = production
    assert all(so.tensor.is_meta for so in report.options)
    # One interest memory alone is 512 MiB and an item table 1 TB: planning must stay far below either.
    assert rss_growth < 256 * 2**20, rss_growth / 2**20


def test_planner_estimate_of_an_item_table_matches_the_arithmetic(production: tuple[PlanReport, int]) -> None:
    report, _ = production
    (item_a,) = [so for so in report.options if so.name == "item_A"]
    weights = ITEM_ROWS * DIM * 4  # fp32
    state = ITEM_ROWS * 4  # row-wise Adagrad: one fp32 per row (the planner: weights / dim)
    assert sum(s.size[0] for s in item_a.shards) == ITEM_ROWS
    assert {s.size[1] for s in item_a.shards} == {DIM}
    planned = sum(s.storage.hbm + s.storage.ddr for s in item_a.shards)
    # On top: the planner's input/output buffers per shard, a sliver of the table.
    assert weights + state <= planned < (weights + state) * 1.001
    for s in item_a.shards:
        rows = s.size[0]
        assert (
            rows * DIM * 4 + rows * 4 <= s.storage.hbm + s.storage.ddr < (rows * DIM * 4 + rows * 4) * 1.001
        )
    (size,) = [t.size for t in report.tables if t.size.name == "item_A"]
    assert (size.weights, size.optimizer) == (weights, state)


def test_tables_that_cannot_fit_give_the_input_error_with_sizes_and_fixes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["plan", str(SPEC), "--config", str(CONFIG), "--hosts", "1", "--gpus-per-host", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "do not fit on 1 host(s) x 1 GPU(s)" in err
    assert "item_A 2,000,000,000 x 128 float32 = 953.7 GiB" in err and "1,971.3 GiB in all" in err
    assert "Fix: more hosts or GPUs (about 29 GPUs" in err and "--rows" in err and "uvm_caching" in err


def test_rows_override_plans_a_what_if_size(capsys: pytest.CaptureFixture[str]) -> None:
    spec = REPO / "features" / "specs" / "synthetic.yaml"
    args = ["plan", str(spec), "--hosts", "2", "--gpus-per-host", "4", "--rows", "item_A=3e8", "user=1_000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "300,000,000" in out and "1,000 " in out and "2 host(s) x 4 GPU(s) = 8 rank(s)" in out


def test_rows_parsing_and_unknown_tables() -> None:
    assert parse_rows(["item_A=2e9", "user=2_000", "item_B=4096"]) == {
        "item_A": 2_000_000_000,
        "user": 2000,
        "item_B": 4096,
    }
    for bad in ["item_A", "item_A=", "=5", "item_A=1.5", "item_A=many", "item_A=1"]:
        with pytest.raises(InputError, match="TABLE=N"):
            parse_rows([bad])
    spec = load_spec(SPEC)
    assert with_rows(spec, {"item_B": 10}).table("item_B").num_embeddings == 10
    with pytest.raises(InputError, match="memory_size"):
        with_rows(spec, {"interest_memory_A": 4096})


def test_bad_cluster_sizes_are_input_errors() -> None:
    spec = load_spec(SPEC)
    with pytest.raises(InputError, match="--gpus-per-host must be positive"):
        plan_cluster(spec, planning_config(None), Cluster(2, 0))
