"""Training cost of the sequence encoders on real data, side by side: samples/s of the whole ranker's train step.

    python benchmarks/encoder_train_cost.py                                   # ml-1m, elastic vs mean
    python benchmarks/encoder_train_cost.py --steps 100 --rounds 3 --threads 1
    python benchmarks/encoder_train_cost.py --profile elastic                 # + torch.profiler op table

Every encoder's model is built the way ``crossrank train`` builds it (``configs/ml1m.yaml`` plus
``model.sequence_encoder=ENC`` and any ``--set``): planned and wrapped in ``DistributedModelParallel`` on a
one-process group, fused row-wise Adagrad for the tables, Adam for the rest, and stepped by TorchRec's
``TrainPipelineSparseDist`` (forward, backward, both optimizers). All encoders train on the same batches:
``--steps`` batches of ``data.train`` are read once, before any timing, so reading and conversion (the same
for every encoder) are not in the figures. Per round, each encoder runs ``--warmup`` untimed steps, then
``--steps`` timed steps; rounds interleave the encoders (A, B, A, B, ...) so that load from other jobs on a
shared machine hits them alike. The table reports the medians over rounds of samples/s (wall clock) and of
the process's CPU time per step (which load from other jobs inflates far less than the wall clock; use
``--threads 1`` on a loaded machine), and every encoder's time per sample over the baseline's
(``--baseline``, default: the first encoder) by both clocks.

``--profile ENC`` then profiles ``--profile-steps`` steps of ENC with ``torch.profiler`` (CPU) and prints
the ops by self time, so the cost of the ELASTIC step (history lookup, dispatcher, memory bank, backward)
can be read off.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from crossrank.features.spec import load_spec
from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.training.config import JobConfig, load_config
from crossrank.pipeline.training.sharding import ShardedRanker, build_sharded_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Timing:
    """Seconds per train step: wall clock, and CPU time of this process (all its threads), which load from
    other jobs inflates much less than the wall clock."""

    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{1000 * self.wall:,.1f} ms wall, {1000 * self.cpu:,.1f} ms CPU per step"


@dataclass
class EncoderRun:
    """One encoder's sharded model and the pipeline that steps it."""

    name: str
    built: ShardedRanker
    pipeline: TrainPipelineSparseDist

    def steps(self, batches: list[Batch], n: int) -> tuple[float, float]:
        """Run ``n`` train steps over ``batches`` (cycled); returns (wall seconds, CPU seconds of this process)."""
        source: Iterator[Batch] = cycle(batches)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            self.pipeline.progress(source)
        return time.perf_counter() - t0, time.process_time() - c0


def job_config(args: argparse.Namespace, encoder: str) -> JobConfig:
    """``--config`` with the ``--set`` overrides and ``model.sequence_encoder=ENC``, where ``encoder`` is
    ``ENC`` or ``ENC+KEY=VALUE+...`` (overrides of that row only, e.g. ``elastic+model.encoder.memory_size=0``)."""
    name, *own = encoder.split("+")
    return load_config(args.config, [*args.set, f"model.sequence_encoder={name}", *own])


def read_batches(cfg: JobConfig, n: int) -> list[Batch]:
    """The first ``n`` shuffled training batches of epoch 0 (what ``crossrank train`` would feed first)."""
    spec = load_spec(cfg.data.spec)
    reader = ParquetBatchReader(spec, cfg.data.train, cfg.data.batch_size, shuffle=True, seed=cfg.train.seed)
    return list(reader.batches(epoch=0, num_batches=min(n, reader.num_batches)))


def build_run(args: argparse.Namespace, encoder: str) -> EncoderRun:
    """The encoder's model as ``crossrank train`` builds it, with its pipeline."""
    cfg = job_config(args, encoder)
    ctx = init_distributed()
    built = build_sharded_model(load_spec(cfg.data.spec), cfg, ctx)
    built.model.train()
    return EncoderRun(encoder, built, TrainPipelineSparseDist(built.model, built.optimizer, ctx.device))


def measure(
    args: argparse.Namespace, runs: list[EncoderRun], batches: list[Batch]
) -> dict[str, list[Timing]]:
    """Wall and CPU time per step of every encoder, per round (rounds interleave the encoders)."""
    out: dict[str, list[Timing]] = {r.name: [] for r in runs}
    for rnd in range(args.rounds):
        for run in runs:
            run.steps(batches, args.warmup)
            wall, cpu = run.steps(batches, args.steps)
            out[run.name].append(Timing(wall / args.steps, cpu / args.steps))
            print(f"  round {rnd + 1}/{args.rounds} {run.name}: {out[run.name][-1]}", file=sys.stderr)
    return out


def print_table(args: argparse.Namespace, timings: dict[str, list[Timing]], batch_size: int) -> None:
    """Median over rounds of samples/s (wall) and of CPU ms per step, and each encoder's time per sample
    over the baseline's, by both clocks."""
    med = {
        name: Timing(statistics.median(t.wall for t in ts), statistics.median(t.cpu for t in ts))
        for name, ts in timings.items()
    }
    base = med[args.baseline]
    print(
        f"\n| encoder | samples/s (wall) | ms per step (wall) | CPU ms per step | time per sample / "
        f"`{args.baseline}` (wall) | (CPU) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in med.items():
        print(
            f"| `{name}` | {batch_size / t.wall:,.0f} | {1000 * t.wall:,.1f} | {1000 * t.cpu:,.1f} | "
            f"{t.wall / base.wall:.2f}x | {t.cpu / base.cpu:.2f}x |"
        )


def print_profile(args: argparse.Namespace, run: EncoderRun, batches: list[Batch]) -> None:
    """``torch.profiler`` table of ``--profile-steps`` train steps of ``run``, ops by self CPU time."""
    run.steps(batches, args.warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run.steps(batches, args.profile_steps)
    print(f"\n### torch.profiler: {args.profile_steps} train steps of `{run.name}` (ops by self CPU time)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))


def header(args: argparse.Namespace, cfg: JobConfig, batches: list[Batch]) -> None:
    """The exact command, commit, threads and data, so the table can be reproduced."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "models", "benchmarks"], capture_output=True, text=True
    )
    state = " + working tree" if dirty.stdout.strip() else ""
    events = sum(int(b.sequences.lengths().sum()) for b in batches) / len(batches)
    print(f"Command: python {shlex.join(['benchmarks/encoder_train_cost.py', *sys.argv[1:]])}")
    print(f"Commit: {commit.stdout.strip() or 'unknown'}{state}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, 1 process; {cfg.data.train}, batch "
        f"{cfg.data.batch_size}, {len(batches)} distinct batches (~{events:,.0f} history events + candidates "
        f"each); per round {args.warmup} warm-up + {args.steps} timed steps per encoder; {args.rounds} rounds."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "ml1m.yaml"), help="job config")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument(
        "--encoders",
        nargs="+",
        default=["mean", "elastic"],
        help="rows: ENC or ENC+KEY=VALUE+... (e.g. elastic+model.encoder.memory_size=0)",
    )
    parser.add_argument("--baseline", default=None, help="encoder the ratios divide by (default: the first)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per encoder and round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before each timed block")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over them)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--profile", default=None, help="then profile this encoder's train step")
    parser.add_argument("--profile-steps", type=int, default=20, help="steps profiled")
    parser.add_argument("--profile-rows", type=int, default=40, help="ops listed")
    args = parser.parse_args()
    args.baseline = args.baseline or args.encoders[0]
    if args.baseline not in args.encoders:
        parser.error(f"--baseline {args.baseline!r} is not one of --encoders {args.encoders}")
    runs = [build_run(args, enc) for enc in args.encoders]  # init_distributed may set the threads: then ours
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = job_config(args, args.encoders[0])
    batches = read_batches(cfg, args.steps)
    header(args, cfg, batches)
    print_table(args, measure(args, runs, batches), cfg.data.batch_size)
    if args.profile:
        extra = [] if args.profile in args.encoders else [build_run(args, args.profile)]
        print_profile(args, next(r for r in [*runs, *extra] if r.name == args.profile), batches)


if __name__ == "__main__":
    main()
