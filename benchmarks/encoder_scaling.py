"""ELASTIC against the encoders a user could pick instead, side by side: time and peak memory over history length.

    python benchmarks/encoder_scaling.py            # L in {1024, 4096, 16384}, 5 timed steps per case (long)
    python benchmarks/encoder_scaling.py --quick    # L in {1024, 4096}, 3 timed steps, no memory-bank table
    python benchmarks/encoder_scaling.py --tables jagged --threads 1 --rounds 3   # skewed vs uniform only

Rows, per history length L and mode (``inference``: forward under ``no_grad``; ``train``: forward + backward):

- ``elastic``: the ELASTIC encoder (:class:`~crossrank.models.elastic.ElasticEncoder`: dispatcher + interest
  memory bank) on the jagged batch, with the kernels it picks for the device.
- ``elastic_dense_floor``: the same arithmetic on a batch that is already dense and padded ([B, L, D] and a
  mask): padded ``bmm`` + masked softmax over positions (:class:`DensePaddedElastic`; the mask is applied
  even where nothing is padded, as a padded pipeline does). The compute floor ELASTIC's jagged layout is
  measured against; padding the jagged batch into it is not timed.
- ``self_attention``: :class:`~crossrank.models.baselines.SelfAttentionEncoder`, fused
  ``F.scaled_dot_product_attention`` (the baseline a user would pick).
- ``din`` and ``mean``: DIN-style target attention over every event, and the jagged mean.
- ``self_attention_written_out``: written-out softmax attention holding [B, H, L, L] score maps, a labelled
  reference; skipped where those maps would exceed ``--mem-budget-gb`` (the table says so).

Protocol: every (encoder, lengths, mode) runs in a fresh subprocess, so cases share no allocator state. In
it: one warm-up step; then one memory step: free heap memory is returned to the OS (``malloc_trim``), the
kernel's high-water mark is reset (``5`` written to ``/proc/self/clear_refs``) and the step's peak memory is
the growth of ``VmHWM`` (``/proc/self/status``) over the resident set just before it, i.e. what the step
itself allocates (activations, gradients, workspaces; inputs and weights excluded); then ``--repeats`` N
timed steps, reported as their median (N is printed, the same for every row); the jagged table also gives
the ratio of the steps' CPU time (``time.process_time``), which load from other jobs inflates far less.
``--rounds R`` runs every case in R processes, interleaved with the other cases, and reports the median
over them (for shared, noisy machines); ``--threads`` sets torch's intra-op threads of every case (default:
torch's default); ``--tables`` picks the tables to measure.

The jagged table compares one batch with skewed lengths (median ~50, one user at 4096) with a batch of
uniform lengths and the same total events; the memory-bank table (full run only) varies ELASTIC's memory rows.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_memory import reset_hwm, status_kb

from crossrank.models.attention import back_buckets
from crossrank.models.baselines import SelfAttentionEncoder
from crossrank.models.elastic import ElasticConfig, ElasticEncoder
from crossrank.models.sequence import build_sequence_encoder

ROOT = Path(__file__).resolve().parents[1]
B, D, K, H = 32, 64, 16, 4
LENGTHS, QUICK_LENGTHS = (1024, 4096, 16384), (1024, 4096)
ELASTIC, FLOOR, SDPA, DIN, MEAN, WRITTEN_OUT = (
    "elastic",
    "elastic_dense_floor",
    "self_attention",
    "din",
    "mean",
    "self_attention_written_out",
)
ENCODERS = (ELASTIC, FLOOR, SDPA, DIN, MEAN, WRITTEN_OUT)
TABLES = ("scaling", "jagged", "memory")
LABELS = {
    ELASTIC: "ELASTIC",
    FLOOR: "dense padded ELASTIC (floor)",
    SDPA: "SDPA self-attention",
    DIN: "DIN",
    MEAN: "mean",
    WRITTEN_OUT: "written-out softmax attention (reference)",
}
Result = dict[str, float] | str


class WrittenOutSelfAttention(SelfAttentionEncoder):
    """:class:`SelfAttentionEncoder` with the attention written out: the [B, H, L, L] score maps are
    materialised (masked, softmaxed, multiplied with V), as SASRec-style rankers do. Same weights and
    outputs as the fused encoder.

    Example::

        enc = WrittenOutSelfAttention(64, ElasticConfig(num_slots=16))
        interests = enc(torch.rand(100, 64), torch.tensor([60, 0, 40]), torch.rand(3, 64))
    """

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, L, L]
        return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v


class DensePaddedElastic(nn.Module):
    """ELASTIC's arithmetic (one dispatcher layer, slot mixing, the memory read) on a batch that is already
    dense and padded: recency, LayerNorm, the folded query-key GEMM, masked softmax over positions, the
    pooling ``bmm`` and the per-slot value projection (``LinearDispatcher.pool_events`` and
    ``slots_from_pooled`` on one [B, L, D] block). Shares the weights of ``encoder``; the compute floor of
    the jagged encoder.

    Shapes:
        padded [B, L, D], lengths [B], mask [B, L] bool (True at events) -> [B, K, D].

    Example::

        floor = DensePaddedElastic(ElasticEncoder(64, ElasticConfig(), name="A"))
        out = floor(torch.rand(2, 5, 64), torch.tensor([5, 3]), torch.arange(5) < torch.tensor([[5], [3]]))
    """

    def __init__(self, encoder: ElasticEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, padded: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        disp = self.encoder.dispatcher
        back = (lengths.unsqueeze(1) - 1 - torch.arange(padded.shape[1])).clamp(min=0)
        recency = back_buckets(back, disp.num_buckets)
        pooled = disp.pool_events(0, padded + disp.recency(recency), mask, recency)
        slots = disp.slots_from_pooled(0, pooled)
        slots = torch.where((lengths == 0).reshape(-1, 1, 1), disp.empty.unsqueeze(0), slots)
        return self.encoder.read_memory(disp.mixers[0](slots))


def _kb(field: str) -> int:
    value = status_kb(field)
    assert value is not None, field  # a running process always has its memory fields
    return value


def step_peak_mb(step: Callable[[], object]) -> float:
    """Growth of the process high-water mark during one call of ``step`` (MB), after returning free heap
    memory to the OS and resetting the mark to the current resident set."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_hwm()
    before = _kb("VmRSS")
    step()
    return max(_kb("VmHWM") - before, 0) / 1024


def build_step(encoder: str, lengths: list[int], mode: str, memory_size: int) -> Callable[[], object]:
    """Build one case's encoder and inputs (seeded); return its step (forward, + backward in train mode)."""
    torch.manual_seed(0)
    cfg = ElasticConfig(num_slots=K, num_heads=H, num_layers=1, memory_size=memory_size, memory_topk=8)
    train = mode == "train"
    lens = torch.tensor(lengths)
    if encoder == FLOOR:
        elastic = build_sequence_encoder(ELASTIC, D, cfg, "A")
        assert isinstance(elastic, ElasticEncoder)
        enc: nn.Module = DensePaddedElastic(elastic)
        padded = torch.randn(len(lengths), max(lengths), D, requires_grad=train)
        inputs: tuple[torch.Tensor, ...] = (padded, lens, torch.arange(max(lengths)) < lens.unsqueeze(1))
    else:
        enc = (
            WrittenOutSelfAttention(D, cfg)
            if encoder == WRITTEN_OUT
            else build_sequence_encoder(encoder, D, cfg, "A")
        )
        values = torch.randn(int(lens.sum()), D, requires_grad=train)
        inputs = (values, lens, torch.randn(len(lengths), D))

    def step() -> object:
        if not train:
            with torch.no_grad():
                return enc(*inputs)
        enc.zero_grad(set_to_none=True)
        enc(*inputs).square().mean().backward()
        return None

    return step


def worker(encoder: str, lengths: list[int], mode: str, repeats: int, memory_size: int) -> dict[str, float]:
    """In a fresh process: warm up, measure one step's peak memory, then time ``repeats`` steps."""
    step = build_step(encoder, lengths, mode, memory_size)
    step()
    peak = step_peak_mb(step)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {
        "ms": 1000 * statistics.median(times),
        "cpu_ms": 1000 * statistics.median(cpu),
        "n": float(repeats),
        "peak_mb": peak,
    }


Case = tuple[str, tuple[int, ...], str, int]  # encoder, lengths, mode, memory rows


def run_case(case: Case, repeats: int, threads: int) -> Result:
    """One case in a fresh subprocess; an error string when it fails (e.g. killed for memory)."""
    encoder, lengths, mode, memory_size = case
    arg = {
        "encoder": encoder,
        "lengths": list(lengths),
        "mode": mode,
        "repeats": repeats,
        "memory_size": memory_size,
    }
    cmd = [sys.executable, __file__, "--threads", str(threads), "--worker", json.dumps(arg)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        killed = proc.returncode in (-9, 137)
        return "out of memory (killed)" if killed else f"failed: {proc.stderr.strip()[-200:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cases(cases: list[Case], repeats: int, threads: int, rounds: int) -> dict[Case, Result]:
    """Every case in its own process, ``rounds`` times, the rounds interleaved (case 1, 2, ..., 1, 2, ...);
    a case's result is the median over rounds of its per-process medians (and peaks)."""
    runs: dict[Case, list[Result]] = {c: [] for c in cases}
    for r in range(rounds):
        for case in cases:
            runs[case].append(run_case(case, repeats, threads))
            enc, lengths, mode, _ = case
            print(
                f"  round {r + 1}/{rounds} {mode:9s} L={max(lengths):6d} {enc:27s} {runs[case][-1]}",
                file=sys.stderr,
            )
    merged: dict[Case, Result] = {}
    for case, results in runs.items():
        ok = [x for x in results if isinstance(x, dict)]
        if len(ok) < len(results):
            merged[case] = next(x for x in results if isinstance(x, str))
            continue
        merged[case] = {k: statistics.median(x[k] for x in ok) for k in ok[0]} | {"rounds": float(rounds)}
    return merged


def written_out_gb(length: int, mode: str, batch: int = B) -> float:
    """Memory of the written-out attention's [B, H, L, L] maps: ~2 alive in inference, ~4 in a train step."""
    return (2 if mode == "inference" else 4) * batch * H * length * length * 4 / 2**30


def scaling_results(
    lengths: tuple[int, ...],
    budget_gb: float,
    memory_size: int,
    run: Callable[[list[Case]], dict[Case, Result]],
) -> dict[tuple[str, int, str], Result]:
    """Every encoder x L x mode on uniform lengths (B users of L events); the written-out attention is
    skipped where its score maps would exceed the budget."""
    results: dict[tuple[str, int, str], Result] = {}
    cases: dict[tuple[str, int, str], Case] = {}
    for mode in ("inference", "train"):
        for length in lengths:
            for enc in ENCODERS:
                if enc == WRITTEN_OUT and written_out_gb(length, mode) > budget_gb:
                    gb = written_out_gb(length, mode)
                    results[(enc, length, mode)] = f"skipped: [B,H,L,L] maps need ~{gb:.0f} GB"
                else:
                    cases[(enc, length, mode)] = (enc, (length,) * B, mode, memory_size)
    measured = run(list(cases.values()))
    return results | {key: measured[case] for key, case in cases.items()}


def cell(r: Result | None, key: str) -> str:
    if r is None:
        return "-"
    return r if isinstance(r, str) else f"{r[key]:,.1f}"


def ratio(num: Result | None, den: Result | None, key: str) -> str:
    """num / den of a metric, or '-' when either is missing."""
    if isinstance(num, dict) and isinstance(den, dict) and den[key] > 0:
        return f"{num[key] / den[key]:.2f}x"
    return "-"


def print_scaling(
    results: dict[tuple[str, int, str], Result], lengths: tuple[int, ...], repeats: int, rounds: int
) -> None:
    """The time table, the memory table (one column per encoder) and their ratios."""
    head = " | ".join(LABELS[e] for e in ENCODERS)
    rows = [(length, mode) for mode in ("inference", "train") for length in lengths]
    reps = f"median of N = {repeats} steps" + (f", median over {rounds} processes" if rounds > 1 else "")
    print(f"\n### Time (ms per step, {reps}; B={B}, D={D}, K={K}, H={H})\n")
    print(f"| L | mode | {head} | SDPA / ELASTIC | ELASTIC / floor |")
    print("|" + " --- |" * (len(ENCODERS) + 4))
    for length, mode in rows:
        r = {e: results.get((e, length, mode)) for e in ENCODERS}
        cells = " | ".join(cell(r[e], "ms") for e in ENCODERS)
        print(
            f"| {length} | {mode} | {cells} | {ratio(r[SDPA], r[ELASTIC], 'ms')} | {ratio(r[ELASTIC], r[FLOOR], 'ms')} |"
        )
    print("\n### Peak memory (MB: growth of VmHWM during one step, after resetting it)\n")
    print(f"| L | mode | {head} | ELASTIC / SDPA |")
    print("|" + " --- |" * (len(ENCODERS) + 3))
    for length, mode in rows:
        r = {e: results.get((e, length, mode)) for e in ENCODERS}
        cells = " | ".join(cell(r[e], "peak_mb") for e in ENCODERS)
        print(f"| {length} | {mode} | {cells} | {ratio(r[ELASTIC], r[SDPA], 'peak_mb')} |")


def skewed_lengths() -> tuple[list[int], list[int]]:
    """B lengths from lognormal quantiles around 50 (deterministic), the longest pinned at 4096 (~16x the
    rest's mean), and B uniform lengths with the same total."""
    p = (torch.arange(B, dtype=torch.float64) + 0.5) / B
    quantiles = 2**0.5 * torch.erfinv(2 * p - 1)
    skewed = (50 * torch.exp(1.3 * quantiles)).round().clamp(1, 4096).long().tolist()
    skewed[-1] = 4096
    total = sum(skewed)
    return skewed, [total // B + (1 if i < total % B else 0) for i in range(B)]


def jagged_case(
    memory_size: int, encoders: tuple[str, ...], run: Callable[[list[Case]], dict[Case, Result]]
) -> dict[tuple[str, str], tuple[Result, Result]]:
    """Skewed vs uniform lengths with equal total events: the cost of raggedness."""
    skewed, uniform = skewed_lengths()
    modes = ("inference", "train")
    cases = [(e, tuple(x), m, memory_size) for e in encoders for m in modes for x in (skewed, uniform)]
    res = run(cases)
    print(
        f"\n### Jagged efficiency: skewed lengths (median {sorted(skewed)[B // 2]}, max {max(skewed)}) vs "
        f"uniform ({uniform[0]}), same {sum(skewed):,} events, B={B}\n"
    )
    print("| encoder | mode | skewed ms | uniform ms | skewed / uniform | skewed / uniform (CPU time) |")
    print("| --- | --- | --- | --- | --- | --- |")
    out: dict[tuple[str, str], tuple[Result, Result]] = {}
    for enc in encoders:
        for mode in modes:
            s, u = res[(enc, tuple(skewed), mode, memory_size)], res[(enc, tuple(uniform), mode, memory_size)]
            out[(enc, mode)] = (s, u)
            print(
                f"| {LABELS[enc]} | {mode} | {cell(s, 'ms')} | {cell(u, 'ms')} | {ratio(s, u, 'ms')} | "
                f"{ratio(s, u, 'cpu_ms')} |"
            )
    return out


def memory_bank_case(run: Callable[[list[Case]], dict[Case, Result]]) -> None:
    """ELASTIC at L=1024 with 0 to 2^20 memory rows: the read costs about the same at any size."""
    sizes, modes = (0, 2**12, 2**16, 2**20), ("inference", "train")
    res = run([(ELASTIC, (1024,) * B, m, size) for size in sizes for m in modes])
    print(f"\n### Interest memory bank size (ELASTIC, L=1024, B={B}, top-8 per slot)\n")
    print("| memory rows | inference ms | train ms |")
    print("| --- | --- | --- |")
    for size in sizes:
        inf, tr = (res[(ELASTIC, (1024,) * B, m, size)] for m in modes)
        print(f"| {size:,} | {cell(inf, 'ms')} | {cell(tr, 'ms')} |")


def print_targets(
    results: dict[tuple[str, int, str], Result],
    lengths: tuple[int, ...],
    jagged: dict[tuple[str, str], tuple[Result, Result]],
) -> None:
    """Issue 12's targets, read off the tables above (those that were measured)."""
    print("\n### Targets\n")
    for mode in ("inference", "train") if results else ():
        r = ratio(results.get((SDPA, 4096, mode)), results.get((ELASTIC, 4096, mode)), "ms")
        print(f"- L=4096 {mode}: ELASTIC is {r} faster than SDPA self-attention (target >= 10x)")
    for mode in ("inference", "train") if results else ():
        mem = [
            ratio(results.get((ELASTIC, n, mode)), results.get((SDPA, n, mode)), "peak_mb") for n in lengths
        ]
        floor = [ratio(results.get((ELASTIC, n, mode)), results.get((FLOOR, n, mode)), "ms") for n in lengths]
        print(f"- {mode}: ELASTIC / SDPA peak memory at L={list(lengths)}: {mem} (target <= 1x)")
        print(f"- {mode}: ELASTIC / dense floor time at L={list(lengths)}: {floor} (target <= 1.5x)")
    for mode in ("inference", "train") if jagged else ():
        s, u = jagged.get((ELASTIC, mode), ("-", "-"))
        print(
            f"- {mode}: ELASTIC skewed / uniform batch: {ratio(s, u, 'ms')} wall, {ratio(s, u, 'cpu_ms')} "
            "CPU time (target <= 1.5x)"
        )


def header(args: argparse.Namespace) -> None:
    """The exact command, versions, threads, commit and repeats, so the tables can be reproduced."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "models", "benchmarks"], capture_output=True, text=True
    )
    state = " + uncommitted changes in models/ or benchmarks/" if dirty.stdout.strip() else ""
    print(f"Command: python {shlex.join(['benchmarks/encoder_scaling.py', *sys.argv[1:]])}")
    print(f"Commit: {commit.stdout.strip() or 'unknown'}{state}")
    print(
        f"torch {torch.__version__}, {args.threads} threads, device cpu, B={B}, D={D}, K={K}, H={H}, "
        f"memory bank {args.memory_size:,} rows. Every case: a fresh process, 1 warm-up step, 1 memory step, "
        f"then N = {args.repeats} timed steps (median); {args.rounds} process(es) per case, interleaved "
        "(median over them)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="L in {1024, 4096}, 3 timed steps, 4 GB budget")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per case, N (default 5; quick 3)"
    )
    parser.add_argument("--lengths", type=int, nargs="+", help="history lengths L (default 1024 4096 16384)")
    parser.add_argument("--memory-size", type=int, default=2**16, help="ELASTIC interest memory rows")
    parser.add_argument(
        "--mem-budget-gb",
        type=float,
        default=None,
        help="skip the written-out attention above this estimate (default 18; quick 4)",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="processes per case, interleaved; median of them"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=TABLES,
        help="tables to measure (default: all; --quick: scaling and jagged)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        a = json.loads(args.worker)
        print(json.dumps(worker(a["encoder"], a["lengths"], a["mode"], a["repeats"], a["memory_size"])))
        return
    args.repeats = args.repeats or (3 if args.quick else 5)
    budget = args.mem_budget_gb or (4.0 if args.quick else 18.0)
    lengths = tuple(args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS))
    header(args)

    def run(cases: list[Case]) -> dict[Case, Result]:
        return run_cases(cases, args.repeats, args.threads, args.rounds)

    tables = set(args.tables or (("scaling", "jagged") if args.quick else TABLES))
    results = scaling_results(lengths, budget, args.memory_size, run) if "scaling" in tables else {}
    if results:
        print_scaling(results, lengths, args.repeats, args.rounds)
    jagged_encoders = (ELASTIC, DIN, MEAN) if args.quick else (ELASTIC, DIN, MEAN, SDPA)
    jagged = jagged_case(args.memory_size, jagged_encoders, run) if "jagged" in tables else {}
    if "memory" in tables:
        memory_bank_case(run)
    print_targets(results, lengths, jagged)


if __name__ == "__main__":
    main()
