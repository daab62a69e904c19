"""Training throughput: Parquet -> batches -> ``TrainPipelineSparseDist`` against the same model on batches
already in memory, on 1 and 2 ranks, with the step's time split into read, convert (validation, id
mapping, dense transforms), cut + KJT build, forward, backward and optimizer.

    python benchmarks/train_throughput.py [--config configs/demo.yaml] [--steps 200] [--ranks 1 2]
        [--repeats 3] [--profile]

Per world size, one job measures on every rank, in alternation ``--repeats`` times (medians reported):

* ``memory``: the pipeline over batches built before the clock starts (the compute floor);
* ``serial``: the pipeline over the reader's batches, read and converted between steps (the path before
  prefetching);
* ``prefetch``: the same through :class:`~crossrank.pipeline.reading.prefetch.Prefetcher` (what
  ``crossrank train`` does);
* the data path alone (reader only, no model) split into read / convert / cut+KJT, and a plain step loop
  over the in-memory batches split into forward / backward (with the fused sparse optimizer) / dense
  optimizer.

Samples/s counts real rows (weight > 0, not padding) of all ranks over the slowest rank's time; validation
and checkpoints are not part of it. ``data share`` = 1 - memory rate / end-to-end rate: the share of the
end-to-end time the data path adds. Target: <= 10% with prefetching.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from crossrank.pipeline.reading.batch import Batch  # noqa: E402
from crossrank.pipeline.reading.reader import Block, ParquetBatchReader, Unit, read_unit  # noqa: E402


class TimedReader(ParquetBatchReader):
    """The reader with its unit work timed: ``seconds["read"]`` (Parquet decode) and ``seconds["convert"]``
    (validation, id mapping, dense transforms); the rest of an iteration is cutting rows and building KJTs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = {"read": 0.0, "convert": 0.0}

    def _read(self, unit: Unit) -> Block:
        t0 = time.perf_counter()
        table = read_unit(unit, self.converter.columns)
        t1 = time.perf_counter()
        block = self.converter.convert(table, str(unit))
        self.seconds["read"] += t1 - t0
        self.seconds["convert"] += time.perf_counter() - t1
        return block


def real_rows(batches: Iterable[Batch], counter: list[int]) -> Iterator[Batch]:
    """``batches`` unchanged, adding each one's real (weight > 0) rows to ``counter[0]``."""
    for b in batches:
        counter[0] += int((b.weights > 0).sum())
        yield b


def timed(fn: Any) -> float:
    """Seconds ``fn()`` takes on the slowest rank (barriers around it)."""
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed.item())


def all_ranks_sum(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def run_pipeline(pipeline: Any, batches: Iterator[Batch], steps: int) -> None:
    """``steps`` pipeline steps over ``batches`` (exactly that many), then the model handed back."""
    for _ in range(steps):
        pipeline.progress(batches)
    pipeline.detach()


def data_only(reader: TimedReader, steps: int, profile: bool) -> dict[str, float]:
    """The reader alone over ``steps`` batches: seconds of read / convert / cut+KJT (this rank)."""
    reader.seconds = {"read": 0.0, "convert": 0.0}
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for _ in reader.batches(epoch=1, num_batches=steps):
        pass
    if prof:
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
        print(text.getvalue())
    total = time.perf_counter() - t0
    return {**reader.seconds, "cut_kjt": total - sum(reader.seconds.values())}


def step_split(built: Any, batches: list[Batch]) -> dict[str, float]:
    """A plain step loop over in-memory batches: seconds of forward / backward (fused sparse optimizer
    inside) / dense optimizer (this rank)."""
    model, opt = built.model, built.optimizer
    out = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for b in batches:
        opt.zero_grad()
        t0 = time.perf_counter()
        loss, _ = model(b)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        out["forward"] += t1 - t0
        out["backward"] += t2 - t1
        out["optimizer"] += time.perf_counter() - t2
    return out


def measure(config: str, steps: int, repeats: int, profile: bool) -> dict[str, Any]:
    """One rank: the three end-to-end variants (alternating, ``repeats`` times) and the two splits."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from crossrank.features.spec import load_spec
    from crossrank.pipeline.core.distributed import all_reduce_max, init_distributed
    from crossrank.pipeline.reading.prefetch import Prefetcher
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.sharding import build_sharded_model

    ctx = init_distributed()
    cfg = load_config(config)
    spec = load_spec(cfg.data.spec)
    reader = TimedReader(
        spec, cfg.data.train, cfg.data.batch_size, rank=ctx.rank, world_size=ctx.world_size, shuffle=True
    )
    steps = min(steps, all_reduce_max(reader.num_batches, ctx))
    built = build_sharded_model(spec, cfg, ctx)
    pipeline = TrainPipelineSparseDist(built.model, built.optimizer, ctx.device)
    in_memory = list(reader.batches(epoch=0, num_batches=steps))
    rows = [0]
    list(real_rows(in_memory, rows))
    run_pipeline(pipeline, iter(in_memory[:20]), min(20, steps))  # warm-up: tracing, first allocations
    seconds: dict[str, list[float]] = {"memory": [], "serial": [], "prefetch": []}
    for r in range(repeats):
        seconds["memory"].append(timed(lambda: run_pipeline(pipeline, iter(in_memory), steps)))
        serial = real_rows(reader.batches(epoch=r, num_batches=steps), [0])
        seconds["serial"].append(timed(lambda: run_pipeline(pipeline, serial, steps)))  # noqa: B023

        def prefetched(epoch: int = r) -> None:
            with Prefetcher(reader.batches(epoch=epoch, num_batches=steps)) as batches:
                run_pipeline(pipeline, batches, steps)

        seconds["prefetch"].append(timed(prefetched))
    data = data_only(reader, steps, profile and ctx.is_main)
    split = step_split(built, in_memory)
    return {
        "rows": all_ranks_sum(rows[0]),
        "steps": steps,
        **{k: statistics.median(v) for k, v in seconds.items()},
        **{f"ms_{k}": 1000 * v / steps for k, v in {**data, **split}.items()},
    }


def report(nproc: int, res: dict[str, Any]) -> tuple[str, str]:
    """The two table rows (throughput, time split) of one world size, from rank 0's result."""
    rows = res["rows"]
    rate = {k: rows / res[k] for k in ("memory", "serial", "prefetch")}
    share = {k: 1 - rate[k] / rate["memory"] for k in ("serial", "prefetch")}
    throughput = (
        f"| {nproc} | {res['steps']} | {rows:,.0f} | {rate['memory']:,.0f} | {rate['serial']:,.0f} | "
        f"{share['serial']:.1%} | {rate['prefetch']:,.0f} | {share['prefetch']:.1%} |"
    )
    parts = ("read", "convert", "cut_kjt", "forward", "backward", "optimizer")
    split = f"| {nproc} | " + " | ".join(f"{res[f'ms_{p}']:.2f}" for p in parts) + " |"
    return throughput, split


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=200, help="steps per measurement (per rank)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile of rank 0's data path")
    args = parser.parse_args()

    from crossrank.pipeline.core.distributed import launch_local

    work = Path(tempfile.mkdtemp(prefix="train_bench_"))
    print(f"config {args.config}; samples/s = real rows of all ranks / slowest rank's seconds\n", flush=True)
    splits = []
    for nproc in args.ranks:  # each world size's row as soon as it is measured
        res = launch_local(nproc, work, measure, args.config, args.steps, args.repeats, args.profile)[0]
        throughput, split = report(nproc, res)
        if not splits:
            print(
                "| ranks | steps/rank | real rows | in memory samples/s | serial reader samples/s | data share "
                "| prefetched samples/s | data share |"
            )
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(throughput, flush=True)
        splits.append(split)
    print("\nms per step and rank (data path alone; plain step loop over in-memory batches)\n")
    print(
        "| ranks | read | convert (validate, map ids) | cut + KJT | forward | backward + fused sparse opt "
        "| dense optimizer |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(splits))


if __name__ == "__main__":
    main()
