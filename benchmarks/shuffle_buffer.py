"""What the training shuffle buffer (``data.shuffle_buffer_mb``) costs and buys: data-path rows/s, peak memory
and how well batches mix users, on one rank's share of a prepared split.

    python benchmarks/shuffle_buffer.py data/ml-1m/train --spec features/specs/movielens.yaml --world 2

Each buffer size runs in a fresh process (peak RSS = VmHWM growth after the reader is opened). Mixing: the
mean number of distinct users in a batch, against the same count for a uniform permutation of the share (1.0
= as mixed as a full shuffle), and the share of the rank's row groups the first batch draws from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_memory import reset_hwm, status_kb


def _vm_hwm_kb() -> int:
    return status_kb("VmHWM") or 0


def _users_per_batch(user_ids: list, batch_size: int) -> float:
    import numpy as np

    counts = [len(np.unique(u)) for u in user_ids if len(u) == batch_size]
    return float(np.mean(counts)) if counts else float("nan")


def measure(data: str, spec_path: str, world: int, batch_size: int, buffer_mb: float) -> dict[str, float]:
    """One rank's (rank 0's) epoch: rows/s of Parquet -> Batch, peak RSS growth, user mixing."""
    import numpy as np
    import pyarrow.parquet as pq

    from crossrank.features.spec import load_spec
    from crossrank.pipeline.reading.reader import ParquetBatchReader

    spec = load_spec(spec_path)
    reader = ParquetBatchReader(
        spec, data, batch_size, rank=0, world_size=world, shuffle=True, seed=0, shuffle_buffer_mb=buffer_mb
    )
    user_of: dict[int, int] = {}
    unit_of: dict[int, int] = {}
    for i, unit in enumerate(reader.units):  # row id -> user and row group, read apart from the timing
        t = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=[spec.row_id, "user_id"])
        ids, users = t.column(0).to_numpy(), t.column(1).to_numpy()
        user_of.update(zip(ids.tolist(), users.tolist(), strict=True))
        unit_of.update({int(r): i for r in ids})
    reset_hwm()
    base = _vm_hwm_kb()
    t0, rows, batches = time.perf_counter(), 0, []
    for batch in reader.batches():
        real = batch.row_ids[batch.weights > 0].numpy()
        rows += len(real)
        batches.append(real)
    seconds = time.perf_counter() - t0
    users = [np.array([user_of[int(r)] for r in b]) for b in batches]
    shuffled = np.random.default_rng(0).permutation(np.concatenate(users))
    uniform = [shuffled[i : i + batch_size] for i in range(0, len(shuffled), batch_size)]
    return {
        "buffer_mb": buffer_mb,
        "rows": rows,
        "rows_per_s": rows / seconds,
        "peak_mb": (_vm_hwm_kb() - base) / 1024,
        "mixing": _users_per_batch(users, batch_size) / _users_per_batch(uniform, batch_size),
        "first_batch_units": len({unit_of[int(r)] for r in batches[0]}) / len(reader.units),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data")
    parser.add_argument("--spec", default="features/specs/movielens.yaml")
    parser.add_argument("--world", type=int, default=2, help="the share of rank 0 of this many ranks")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--buffers", type=float, nargs="*", default=[0, 64, 256, 1024])
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process: one buffer size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.data, args.spec, args.world, args.batch_size, args.one)))
        return
    print(f"`python benchmarks/shuffle_buffer.py {' '.join(sys.argv[1:])}`\n")
    print(
        "| buffer MB | rows | rows/s | rows/s vs per-unit | peak MB | users per batch vs full shuffle | first batch's row groups |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = None
    for mb in args.buffers:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", str(mb)]
        r = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        )
        base = base or r["rows_per_s"]
        print(
            f"| {mb:g} | {r['rows']:,} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / base:.2f}x | {r['peak_mb']:,.0f} | "
            f"{r['mixing']:.3f} | {r['first_batch_units']:.0%} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
