"""Offline scoring throughput: Parquet -> Parquet (``crossrank score``'s path) vs the bare model forward on
the same rows already built into batches in memory, on 1 and 2 ranks; and grouped scoring (each distinct
history of a batch encoded once) vs the row-by-row path on the sampled ranking set, per sequence encoder.

    python benchmarks/score_throughput.py [--rows 500000] [--batch-size 4096] [--repeats 3]
        [--sections io,grouped] [--encoders elastic,din,mean] [--ranking-users 200] [--train-steps 5]

Makes synthetic data and a short-trained checkpoint in a temporary folder, then, per world size, measures
in one job: (a) the bare forward over pre-built batches, (b) the full scoring path (read row groups,
map ids, forward, write Parquet atomically with its manifest). Rows/s is all rows over the slowest
rank's wall time. Target: the I/O path keeps at least 90% of the bare forward's throughput.

``grouped``: per encoder, a short-trained checkpoint scores ``crossrank prepare ranking``'s set (1 + 99
candidates per user and domain, every candidate of a history in adjacent rows) on 1 rank, the whole
Parquet -> Parquet path with and without grouping, alternating, plus the bare forwards of both on batches
built beforehand, and the largest |score difference|. Target (ELASTIC): grouped >= 5x the row-by-row
rows/s, scores equal to ~1e-5.
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


def measure_grouped(checkpoint: str, data: str, out: str, batch_size: int, repeats: int) -> dict[str, float]:
    """One rank: row-by-row and grouped scoring of ``data`` (Parquet -> Parquet), then the bare forwards of
    both on batches built beforehand, ``repeats`` times each (alternating); returns rows, the median
    seconds of each, the distinct histories per batch and the largest |score difference|."""
    import numpy as np
    import pyarrow.dataset as ds
    import torch

    from crossrank.pipeline.core.distributed import init_distributed
    from crossrank.pipeline.reading.history_groups import forward_batch, grouped_batches
    from crossrank.pipeline.reading.reader import ParquetBatchReader
    from crossrank.pipeline.scoring.model import load_for_inference
    from crossrank.pipeline.scoring.score import score

    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    model = loaded.sharded.model
    reader = ParquetBatchReader(loaded.spec, data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    plain = list(reader.batches())
    grouped = list(grouped_batches(reader, len(plain)))
    times: dict[str, list[float]] = {"row_s": [], "grouped_s": [], "bare_row_s": [], "bare_grouped_s": []}
    with torch.no_grad():
        forward_batch(model, plain[0]), forward_batch(model, grouped[0])  # warm-up
        for r in range(repeats):
            for name, flag in (("row_s", False), ("grouped_s", True)):
                t0 = time.perf_counter()
                score(loaded, data, f"{out}-{name}-{r}", ctx, batch_size=batch_size, grouped=flag)
                times[name].append(time.perf_counter() - t0)
            for name, batches in (("bare_row_s", plain), ("bare_grouped_s", grouped)):
                t0 = time.perf_counter()
                for b in batches:
                    forward_batch(model, b)
                times[name].append(time.perf_counter() - t0)
    tables = [
        ds.dataset(f"{out}-{n}-0", format="parquet").to_table().to_pandas() for n in ("row_s", "grouped_s")
    ]
    a, b = (t.set_index("row_id").sort_index()["score"].to_numpy() for t in tables)
    return {
        "rows": reader.num_rows,
        **{k: statistics.median(v) for k, v in times.items()},
        "histories": float(np.mean([g.num_histories for g in grouped])),
        "max_diff": float(np.abs(a - b).max()),
    }


def grouped_section(args: argparse.Namespace, work: Path) -> None:
    """Per encoder: train a short checkpoint, then grouped vs row-by-row scoring of the ranking set."""
    from crossrank.pipeline.core.distributed import launch_local
    from crossrank.pipeline.prepare.ranking_set import prepare_ranking
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.loop import train

    data = work / "data"
    summary = prepare_ranking(data, negatives=99, users=args.ranking_users, seed=0)
    print(f"\n{summary.format()}; batch {args.batch_size}, 1 rank, histories up to 100 per domain\n")
    print(
        "| encoder | rows | distinct histories / batch | row-by-row rows/s | grouped rows/s | grouped / "
        "row-by-row | bare forward: row-by-row rows/s | grouped rows/s | max abs score diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for encoder in args.encoders.split(","):
        run_dir = work / f"run-{encoder}"
        overrides = [f"data.train={data / 'train'}", "data.valid=", "data.test=", "train.epochs=1"]
        overrides += [f"train.max_steps={args.train_steps}", f"model.sequence_encoder={encoder}"]
        overrides += [f"run_dir={run_dir}"]
        launch_local(1, work, train, load_config(REPO / "configs" / "demo.yaml", overrides))
        res = launch_local(
            1,
            work,
            measure_grouped,
            str(run_dir),
            str(data / "ranking"),
            str(work / f"g-{encoder}"),
            args.batch_size,
            args.repeats,
        )[0]
        rows = res["rows"]
        row, grouped = rows / res["row_s"], rows / res["grouped_s"]
        bare_row, bare_grouped = rows / res["bare_row_s"], rows / res["bare_grouped_s"]
        print(
            f"| {encoder} | {rows:,.0f} | {res['histories']:.1f} | {row:,.0f} | {grouped:,.0f} | "
            f"{grouped / row:.1f}x | {bare_row:,.0f} | {bare_grouped:,.0f} | {res['max_diff']:.1e} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sections", default="io,grouped", help="io (I/O path vs bare), grouped, or both")
    parser.add_argument("--encoders", default="elastic,din,mean", help="encoders of the grouped section")
    parser.add_argument("--ranking-users", type=int, default=200, help="users of the ranking set (0: all)")
    parser.add_argument(
        "--train-steps", type=int, default=5, help="training steps of each grouped checkpoint"
    )
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    from crossrank.pipeline.core.distributed import launch_local
    from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic
    from crossrank.pipeline.training.config import load_config

    work = Path(tempfile.mkdtemp(prefix="score_bench_"))
    prepare_synthetic(work / "data", SyntheticConfig(rows=args.rows, row_group_size=16384))
    if "grouped" in sections:
        grouped_section(args, work)
    if "io" not in sections:
        return
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
