"""``benchmarks/scale.py``'s measurement: the peak RSS of a child process and its RSS over time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Holds ~200 MiB for 3 s, then frees it and lingers 1.5 s: the trace must see the rise and the fall.
CHILD = (
    "import time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(3); "
    "del x; time.sleep(1.5)"
)


def test_run_measured_reports_the_peak_and_traces_rss_over_time(tmp_path: Path) -> None:
    # From a fresh, small interpreter, as the script runs: the peak counts the caller's image at the fork,
    # and this test process holds torch.
    log = tmp_path / "child.log"
    measure = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import scale; "
        f"print(*scale.run_measured([sys.executable, '-c', {CHILD!r}], __import__('pathlib').Path({str(log)!r}), "
        "every_s=0.2))"
    )
    out = subprocess.run([sys.executable, "-c", measure], capture_output=True, text=True, check=True)
    peak, seconds = map(float, out.stdout.split())
    assert 200 <= peak < 300 and seconds >= 4
    trace = [line.split("\t") for line in log.with_suffix(".rss.tsv").read_text().splitlines()]
    rss = [float(mib) for _, mib in trace]
    assert len(rss) >= 2 and max(rss) >= 200 and rss[-1] < 100  # the 200 MiB, then its release


def test_run_measured_names_the_failed_command(tmp_path: Path) -> None:
    scale = load_benchmark("scale")
    with pytest.raises(SystemExit, match=r"see .*bad\.log"):
        scale.run_measured([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log")
