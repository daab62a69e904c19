"""ELASTIC vs the quadratic self-attention baseline (fused SDPA) vs DIN: time and peak memory over history length.

    python benchmarks/encoder_scaling.py            # the full table (B=32, D=64, K=16, H=4; ~10 min on 2 cores)
    python benchmarks/encoder_scaling.py --quick     # L in {256, 1024}, fewer repeats

Every (encoder, L, mode) runs in a fresh subprocess, so peak memory is not polluted by earlier runs.
*Time*: median of ``--repeats`` runs after one warm-up. *Peak memory*: the peak resident set size (RSS,
``getrusage`` ru_maxrss) of that subprocess during its first measured step, minus its RSS just before the
step (inputs and weights already allocated) — i.e. the activations, attention maps and gradients the step
itself needs. Self-attention runs whose estimated attention maps exceed ``--mem-budget-gb`` are skipped and
reported as such (they would exhaust this machine's memory).

The row "written-out softmax attention (reference)" is the self-attention encoder with its attention step
written out (scores, mask, softmax, weighted sum, [B, H, L, L] maps held), as SASRec-style rankers do; the
model itself uses ``F.scaled_dot_product_attention`` (a fused kernel on CPU).

The second table is the jagged case: one batch with skewed lengths (median 50, max 4096) against a batch
with the same total number of events at uniform length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from crossrank.models.baselines import SelfAttentionEncoder

B, D, K, H = 32, 64, 16, 4
LENGTHS = (256, 1024, 4096, 16384)
WRITTEN_OUT = "self_attention_written_out"
ENCODERS = ("elastic", "self_attention", "din", WRITTEN_OUT)
LABELS = {WRITTEN_OUT: "written-out softmax attention (reference)"}


class WrittenOutSelfAttention(SelfAttentionEncoder):
    """:class:`SelfAttentionEncoder` with the attention written out: the [B, H, L, L] score maps are
    materialised (masked, softmaxed, multiplied with V), so it costs what standard self-attention costs.
    The reference row of the tables; same weights and outputs as the fused encoder.

    Example::

        enc = WrittenOutSelfAttention(64, ElasticConfig(num_slots=16))
        interests = enc(torch.rand(100, 64), torch.tensor([60, 0, 40]), torch.rand(3, 64))
    """

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, L, L]
        return torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1) @ v


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(encoder: str, lengths: list[int], mode: str, repeats: int, memory_size: int) -> dict[str, float]:
    """Run in a fresh process: build the encoder and inputs, time ``repeats`` steps, report peak memory."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from crossrank.models.elastic import ElasticConfig
    from crossrank.models.sequence import build_sequence_encoder

    torch.manual_seed(0)
    cfg = ElasticConfig(num_slots=K, num_heads=H, num_layers=1, memory_size=memory_size, memory_topk=8)
    enc = (
        WrittenOutSelfAttention(D, cfg)
        if encoder == WRITTEN_OUT
        else build_sequence_encoder(encoder, D, cfg, "A")
    )
    lens = torch.tensor(lengths)
    values = torch.randn(int(lens.sum()), D, requires_grad=mode == "train")
    cand = torch.randn(len(lengths), D)

    def step() -> None:
        if mode == "train":
            enc.zero_grad(set_to_none=True)
            enc(values, lens, cand).square().mean().backward()
        else:
            with torch.no_grad():
                enc(values, lens, cand)

    base = _rss_mb()
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    times = [first]
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    # The first step also pays one-off allocation; the median of the rest is the steady-state time.
    return {"ms": 1000 * statistics.median(times[1:] or times), "peak_mb": max(peak, 0.0)}


def run_case(
    encoder: str, lengths: list[int], mode: str, repeats: int, memory_size: int
) -> dict[str, float] | str:
    arg = json.dumps(
        {"encoder": encoder, "lengths": lengths, "mode": mode, "repeats": repeats, "memory_size": memory_size}
    )
    proc = subprocess.run([sys.executable, __file__, "--worker", arg], capture_output=True, text=True)
    if proc.returncode != 0:
        return (
            "out of memory (killed)"
            if proc.returncode in (-9, 137)
            else f"failed: {proc.stderr.strip()[-200:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def is_self_attention(encoder: str) -> bool:
    return encoder in ("self_attention", WRITTEN_OUT)


def sa_estimate_gb(length: int, mode: str) -> float:
    """Memory of self-attention's [B, H, L, L] score maps: 2 alive in inference, ~4 in a train step."""
    return (2 if mode == "inference" else 4) * B * H * length * length * 4 / 2**30


def normal_quantiles(n: int) -> np.ndarray:  # noqa: F821 (numpy imported by the caller)
    """The n quantiles (i + 0.5) / n of the standard normal, via the inverse error function in torch."""
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (2**0.5 * torch.erfinv(2 * p - 1)).numpy()


def fmt(r: dict[str, float] | str | None, key: str) -> str:
    if r is None:
        return "-"
    if isinstance(r, str):
        return r
    return f"{r[key]:,.1f}"


def scaling_table(lengths: tuple[int, ...], repeats: int, budget_gb: float, memory_size: int) -> dict:
    results: dict[tuple[str, int, str], dict[str, float] | str] = {}
    for mode in ("inference", "train"):
        for length in lengths:
            for enc in ENCODERS:
                if is_self_attention(enc) and sa_estimate_gb(length, mode) > budget_gb:
                    results[(enc, length, mode)] = f"skipped (needs ~{sa_estimate_gb(length, mode):.0f} GB)"
                    continue
                reps = repeats if length <= 4096 else max(1, repeats // 2)
                results[(enc, length, mode)] = run_case(enc, [length] * B, mode, reps, memory_size)
                print(f"  {mode:9s} L={length:6d} {enc:15s} {results[(enc, length, mode)]}", file=sys.stderr)
    return results


def print_scaling(results: dict, lengths: tuple[int, ...]) -> None:
    print(
        f"\n### Encoder scaling (B={B}, D={D}, K={K}, H={H}; time = median ms, memory = step peak RSS MB)\n"
    )
    print(
        "| mode | L | ELASTIC ms | self-attn ms | DIN ms | ELASTIC MB | self-attn MB | DIN MB | SA/ELASTIC time | ELASTIC memory saving "
        f"| {LABELS[WRITTEN_OUT]} ms | {LABELS[WRITTEN_OUT]} MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in ("inference", "train"):
        for length in lengths:
            e, s, d, w = (results.get((enc, length, mode)) for enc in ENCODERS)
            ratio = saving = "-"
            if isinstance(e, dict) and isinstance(s, dict):
                ratio = f"{s['ms'] / e['ms']:.1f}x"
                saving = f"{100 * (1 - e['peak_mb'] / s['peak_mb']):.1f}%" if s["peak_mb"] > 0 else "-"
            print(
                f"| {mode} | {length} | {fmt(e, 'ms')} | {fmt(s, 'ms')} | {fmt(d, 'ms')} | {fmt(e, 'peak_mb')} | "
                f"{fmt(s, 'peak_mb')} | {fmt(d, 'peak_mb')} | {ratio} | {saving} | {fmt(w, 'ms')} | {fmt(w, 'peak_mb')} |"
            )


def jagged_case(repeats: int, memory_size: int, budget_gb: float) -> None:
    import numpy as np

    # Lognormal quantiles around median 50 (deterministic), the longest user pinned at 4096.
    skewed = np.clip(np.round(50 * np.exp(1.3 * normal_quantiles(B))), 1, 4096).astype(int)
    skewed[-1] = 4096
    total = int(skewed.sum())
    uniform = [total // B + (1 if i < total % B else 0) for i in range(B)]
    print(
        f"\n### Jagged efficiency: skewed lengths (median {int(np.median(skewed))}, max {skewed.max()}) vs uniform "
        f"({uniform[0]}), same {total:,} events, B={B}\n"
    )
    print("| encoder | mode | skewed ms | uniform ms | skewed / uniform |")
    print("| --- | --- | --- | --- | --- |")
    for enc in ENCODERS:
        for mode in ("inference", "train"):
            label = LABELS.get(enc, enc)
            if is_self_attention(enc) and sa_estimate_gb(int(skewed.max()), mode) > budget_gb:
                print(
                    f"| {label} | {mode} | skipped (pads to {skewed.max()}: needs ~{sa_estimate_gb(int(skewed.max()), mode):.0f} GB) | - | - |"
                )
                continue
            s = run_case(enc, skewed.tolist(), mode, repeats, memory_size)
            u = run_case(enc, uniform, mode, repeats, memory_size)
            ratio = f"{s['ms'] / u['ms']:.2f}x" if isinstance(s, dict) and isinstance(u, dict) else "-"
            print(f"| {label} | {mode} | {fmt(s, 'ms')} | {fmt(u, 'ms')} | {ratio} |")


def memory_bank_case(repeats: int) -> None:
    print(
        f"\n### Interest memory bank size (ELASTIC, L=1024, B={B}, top-8 per slot): cost is ~flat in rows\n"
    )
    print("| memory rows | inference ms | train ms |")
    print("| --- | --- | --- |")
    for size in (0, 2**12, 2**16, 2**20):
        inf = run_case("elastic", [1024] * B, "inference", repeats, size)
        tr = run_case("elastic", [1024] * B, "train", repeats, size)
        print(f"| {size:,} | {fmt(inf, 'ms')} | {fmt(tr, 'ms')} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="L in {256, 1024} only, fewer repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-size", type=int, default=2**16, help="ELASTIC interest memory rows")
    parser.add_argument(
        "--mem-budget-gb", type=float, default=18.0, help="skip self-attention runs estimated above this"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        a = json.loads(args.worker)
        print(json.dumps(worker(a["encoder"], a["lengths"], a["mode"], a["repeats"], a["memory_size"])))
        return
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    repeats = 2 if args.quick else args.repeats
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    results = scaling_table(lengths, repeats, args.mem_budget_gb, args.memory_size)
    print_scaling(results, lengths)
    e = {
        (length, mode): results.get(("elastic", length, mode))
        for length in lengths
        for mode in ("inference", "train")
    }
    if not args.quick and all(isinstance(e[(n, "inference")], dict) for n in (1024, 16384)):
        growth = e[(16384, "inference")]["ms"] / e[(1024, "inference")]["ms"]
        print(f"\nELASTIC inference time L=16384 / L=1024: {growth:.1f}x (16x more events; target <= 20x)")
    jagged_case(repeats, args.memory_size, args.mem_budget_gb)
    memory_bank_case(repeats)


if __name__ == "__main__":
    main()
