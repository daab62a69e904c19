"""Offline scoring throughput: Parquet -> Parquet (``crossrank score``'s path) vs the bare model forward on
the same rows already built into batches in memory, on 1 and 2 ranks.

    python benchmarks/score_throughput.py [--rows 500000] [--batch-size 4096] [--repeats 3]

Makes synthetic data and a short-trained checkpoint in a temporary folder, then, per world size, measures
in one job: (a) the bare forward over pre-built batches, (b) the full scoring path (read row groups,
map ids, forward, write Parquet atomically with its manifest). Rows/s is all rows over the slowest
rank's wall time. Target: the I/O path keeps at least 90% of the bare forward's throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(checkpoint: str, data: str, out: str, batch_size: int, repeats: int) -> dict[str, float]:
    """One rank: bare forward over pre-built batches, then the scoring path, ``repeats`` times each
    (alternating); returns rows and the median seconds of each."""
    import torch

    from crossrank.pipeline.core.distributed import all_reduce_max, init_distributed
    from crossrank.pipeline.reading.reader import ParquetBatchReader
    from crossrank.pipeline.scoring.model import load_for_inference
    from crossrank.pipeline.scoring.score import score

    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    model = loaded.sharded.model
    reader = ParquetBatchReader(loaded.spec, data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    steps = all_reduce_max(reader.num_batches, ctx)
    batches = [b.to(ctx.device) for b in reader.batches(num_batches=steps)]  # built before the clock starts
    with torch.no_grad():
        model(batches[0])  # warm-up
    bare_s, io_s = [], []
    for r in range(repeats):
        torch.distributed.barrier()
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                model(b)
        torch.distributed.barrier()
        bare_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = score(loaded, data, f"{out}-{r}", ctx, batch_size=batch_size)
        torch.distributed.barrier()
        io_s.append(time.perf_counter() - t0)
    bare, io = statistics.median(bare_s), statistics.median(io_s)
    return {"rows": reader.num_rows, "scored": result.rows, "bare_s": bare, "io_s": io}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from crossrank.pipeline.core.distributed import launch_local
    from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic
    from crossrank.pipeline.training.config import load_config

    work = Path(tempfile.mkdtemp(prefix="score_bench_"))
    prepare_synthetic(work / "data", SyntheticConfig(rows=args.rows, row_group_size=16384))
    run_dir = work / "run"
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [
            f"data.train={work / 'data' / 'train'}",
            "data.valid=",
            "data.test=",
            "train.epochs=1",
            "train.max_steps=30",
            f"run_dir={run_dir}",
        ],
    )

    def launch(nproc: int, fn, *fn_args):  # type: ignore[no-untyped-def]
        return launch_local(nproc, work, fn, *fn_args)

    from crossrank.pipeline.training.loop import train

    launch(1, train, cfg)
    data = str(work / "data" / "train")
    print(
        f"scoring {args.rows * 0.8:,.0f}-ish rows of synthetic data (histories up to 100), batch {args.batch_size}\n"
    )
    print("| ranks | rows | bare forward rows/s | Parquet -> Parquet rows/s | I/O path / bare |")
    print("| --- | --- | --- | --- | --- |")
    for nproc in (1, 2):
        res = launch(
            nproc, measure, str(run_dir), data, str(work / f"out{nproc}"), args.batch_size, args.repeats
        )
        rows = sum(r["rows"] for r in res.values())
        bare = rows / max(r["bare_s"] for r in res.values())
        io = rows / max(r["io_s"] for r in res.values())
        print(f"| {nproc} | {rows:,} | {bare:,.0f} | {io:,.0f} | {io / bare:.1%} |")


if __name__ == "__main__":
    main()
