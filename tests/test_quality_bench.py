"""benchmarks/quality.py's cache and tables: a run's key changes with anything that decides its result (so a
cached result is never reused across code, config, data or seed changes), and the paired per-seed
differences are taken seed by seed."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> tuple:  # type: ignore[type-arg]
    sys.path.insert(0, str(BENCH))
    try:
        import quality_report
        import quality_runs
    finally:
        sys.path.remove(str(BENCH))
    return quality_runs, quality_report


def test_run_key_changes_with_what_decides_the_result(bench: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    runs, _ = bench
    data = tmp_path / "data"
    data.mkdir()
    (data / "summary.json").write_text(json.dumps({"rows": 10}))
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\n")
    run = runs.Run("v", 0, "configs/demo.yaml", data, spec, ("train.epochs=2",))
    key = runs.run_key(run, "abc")
    assert runs.run_key(run, "abc") == key
    assert runs.run_key(run, "abd") != key  # code
    assert runs.run_key(dataclasses.replace(run, seed=1), "abc") != key
    assert runs.run_key(dataclasses.replace(run, overrides=("train.epochs=3",)), "abc") != key
    cache = tmp_path / "cache"
    assert runs.cached(run, cache, "abc") is None  # --cached-only leaves it out
    (cache / key).mkdir(parents=True)
    (cache / key / "result.json").write_text(json.dumps({"variant": "v", "seed": 0}))
    assert runs.cached(run, cache, "abc") == {"variant": "v", "seed": 0}
    assert runs.execute(run, cache, "abc") == {"variant": "v", "seed": 0}  # no training: the cached result
    renamed = dataclasses.replace(run, variant="gca")  # the same run under another study's label
    assert runs.execute(renamed, cache, "abc") == {"variant": "gca", "seed": 0}
    assert runs.cached(run, cache, "abd") is None
    assert runs.run_key(dataclasses.replace(run, variant="w"), "abc") == key  # a label, not a setting
    spec.write_text("name: y\n")
    assert runs.run_key(run, "abc") != key
    (data / "summary.json").write_text(json.dumps({"rows": 11}))
    assert runs.run_key(run, "abc") != key
    assert runs.code_version().split("+")[0]  # the commit, plus a hash when the code has uncommitted changes


def test_paired_differences_are_per_seed(bench: tuple) -> None:  # type: ignore[type-arg]
    _, report = bench

    def result(variant: str, seed: int, auc: float) -> dict:  # type: ignore[type-arg]
        return {"variant": variant, "seed": seed, "test": {"auc": auc, "auc/A": 1 - auc}}

    groups = report.by_variant(
        [result("base", 0, 0.70), result("base", 1, 0.80), result("new", 1, 0.81), result("new", 0, 0.72)]
    )
    line = next(row for row in report.paired_table(groups, "base") if row.startswith("| new"))
    assert "+0.0200, +0.0100" in line and "0.0150 ± 0.0071" in line and "2/2" in line
    table = report.paired_table(groups, "base", "auc/A")  # a domain's AUC (the sparse-domain study)
    assert "Test AUC A minus `base`" in table[1]
    line = next(row for row in table if row.startswith("| new"))
    assert "-0.0200, -0.0100" in line and "0/2" in line


def test_diagnostics_table_averages_seeds_per_domain(bench: tuple) -> None:  # type: ignore[type-arg]
    _, report = bench

    def result(variant: str, seed: int, entropy: float | None) -> dict:  # type: ignore[type-arg]
        diag = {"diagnostics": {"A": {"dispatch_entropy": entropy}}} if entropy is not None else {}
        return {"variant": variant, "seed": seed, "test": {"auc": 0.7}, **diag}

    groups = report.by_variant(
        [result("elastic", 0, 0.9), result("elastic", 1, 0.5), result("mean", 0, None)]
    )
    rows = [row for row in report.diagnostics_table(groups) if row.startswith("| elastic")]
    assert rows == ["| elastic | A | 0.700 |"]  # the mean run stored none: no row
