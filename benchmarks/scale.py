"""Peak memory (RSS) against data size: evaluation metrics, ``prepare synthetic``, training and scoring.

    python benchmarks/scale.py metrics [--rows 1000000 10000000]
    python benchmarks/scale.py jobs --work /work/scale [--rows 2000000 20000000] [--max-len 100]
        [--train-steps 200] [--only prepare train score] [--set data.shuffle_buffer_mb=64]

``metrics``: per size, two fresh processes over the same synthetic predictions (a fixed seed, made batch
by batch): the streaming metrics of ``crossrank.pipeline.evaluation`` (what every rank holds now) against
every prediction held at once as ``predict`` gathered them to every rank before (logits, labels, weights,
domains, ortho, row ids) with the metrics computed on them (the earlier ``compute_metrics``); the AUC
difference between the two is the histogram's error.

``jobs``: per size, ``crossrank prepare synthetic``, ``crossrank train`` (``train.max_steps`` steps, then
validation over the whole valid split and test over the whole test split) and ``crossrank score`` over the
whole test split, each a fresh single process whose peak RSS is read from ``wait4``. Peak RSS should not
grow with the size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_memory import status_kb  # noqa: E402  (a sibling script: found by the path above)

BIN = REPO / ".venv" / "bin"


def _sample_rss(pid: int, trace: Path, stop: threading.Event, every_s: float = 2.0) -> None:
    """Write ``seconds<TAB>VmRSS MiB`` of ``pid`` to ``trace`` every ``every_s``: the shape of the memory
    over the run (a plateau, or growth with the rows processed), where the peak alone cannot tell."""
    t0 = time.perf_counter()
    with open(trace, "w") as out:
        while not stop.wait(every_s):
            try:
                kb = status_kb("VmRSS", pid)
            except OSError:
                return
            if kb is None:  # exited, not yet reaped: a zombie has no memory to report (not a 0 to plot)
                continue
            out.write(f"{time.perf_counter() - t0:.0f}\t{kb / 1024:.0f}\n")
            out.flush()


def run_measured(cmd: list[str], log: Path, every_s: float = 2.0) -> tuple[float, float]:
    """Run ``cmd`` (output to ``log``, its RSS every ``every_s`` to ``log`` + ``.rss.tsv``); returns (peak RSS
    MiB of that process, seconds). Raises on failure.

    The peak (``ru_maxrss``) counts the calling process's resident set at the fork too (Linux keeps the
    pre-``exec`` image's high-water mark), so call it from a small process, as this script is (~12 MiB)."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        stop = threading.Event()
        sampler = threading.Thread(
            target=_sample_rss, args=(proc.pid, log.with_suffix(".rss.tsv"), stop, every_s), daemon=True
        )
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        stop.set()
        sampler.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}; see {log}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def predictions(rows: int, batch: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Synthetic eval outputs in batches: logits, labels, weights, domains, ortho (2 directions), row ids."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        labels = rng.integers(0, 2, n).astype(np.float32)
        logits = (labels + rng.normal(size=n)).astype(np.float32)
        yield (
            torch.from_numpy(logits),
            torch.from_numpy(labels),
            torch.ones(n),
            torch.from_numpy(rng.integers(0, 2, n)),
            torch.from_numpy(rng.random((n, 2)).astype(np.float32)),
            torch.arange(start, start + n),
        )


def metrics_child(mode: str, rows: int) -> None:
    """One measurement process: prints ``auc`` of ``mode`` (streaming | gathered)."""
    import torch

    from crossrank.pipeline.evaluation.metrics import StreamingMetrics

    if mode == "streaming":
        acc = StreamingMetrics(["A", "B"], ["ab", "ba"])
        for logits, labels, weights, domains, ortho, _ in predictions(rows, 65536):
            acc.update(logits, labels, weights, domains, ortho)
        print(repr(acc.finish()["auc"]))
        return
    from crossrank.pipeline.core.auc import roc_auc

    cols = [torch.cat(c) for c in zip(*predictions(rows, 65536), strict=True)]  # as all_gather_cat held them
    logits, labels, weights, domains = cols[0], cols[1], cols[2], cols[3]
    keep = weights > 0  # the earlier compute_metrics: double copies of the kept rows, then ranks
    preds = torch.sigmoid(logits[keep].double())
    y = labels[keep].double()
    aucs = [roc_auc(preds.numpy(), y.numpy())]
    aucs += [roc_auc(preds[domains[keep] == d].numpy(), y[domains[keep] == d].numpy()) for d in (0, 1)]
    print(repr(aucs[0]))


def metrics_table(sizes: list[int], work: Path) -> None:
    print(
        "| evaluation rows | streaming peak RSS MiB | all predictions held (before) peak RSS MiB | AUC streaming - exact |"
    )
    print("| --- | --- | --- | --- |")
    for rows in sizes:
        out = {}
        for mode in ("streaming", "gathered"):
            log = work / f"metrics-{mode}-{rows}.log"
            rss, _ = run_measured([sys.executable, __file__, "metrics-child", mode, str(rows)], log)
            out[mode] = (rss, float(log.read_text().split()[-1]))
        diff = out["streaming"][1] - out["gathered"][1]
        print(f"| {rows:,} | {out['streaming'][0]:,.0f} | {out['gathered'][0]:,.0f} | {diff:.1e} |")


def jobs_table(
    sizes: list[int], work: Path, max_len: int, steps: int, only: list[str], extra: list[str]
) -> None:
    print("| rows | step | peak RSS MiB | seconds |")
    print("| --- | --- | --- | --- |")
    for rows in sizes:
        data = work / f"synthetic-{rows}"
        results = []
        if "prepare" in only:
            cmd = [str(BIN / "crossrank"), "prepare", "synthetic", str(data), "--rows", str(rows)]
            results.append(
                (
                    "prepare synthetic",
                    run_measured(
                        [*cmd, "--max-len", str(max_len), "--overwrite"], work / f"prepare-{rows}.log"
                    ),
                )
            )
        run_dir = work / f"run-{rows}"
        sets = [f"data.{s}={data / s}" for s in ("train", "valid", "test")]
        sets += [
            f"run_dir={run_dir}",
            "train.epochs=1",
            f"train.max_steps={steps}",
            "train.resume=never",
            *extra,
        ]
        cmd = [str(BIN / "crossrank"), "train", "--config", "configs/demo.yaml"]
        cmd += [a for s in sets for a in ("--set", s)]
        if "train" in only:
            log = work / f"train-{rows}.log"
            results.append((f"train ({steps} steps, valid + test)", run_measured(cmd, log)))
        if "score" in only:
            cmd = [
                str(BIN / "crossrank"),
                "score",
                "--checkpoint",
                str(run_dir),
                "--input",
                str(data / "test"),
            ]
            cmd += ["--output", str(work / f"scores-{rows}"), "--overwrite"]
            results.append(("score (test split)", run_measured(cmd, work / f"score-{rows}.log")))
        for name, (rss, secs) in results:
            print(f"| {rows:,} | {name} | {rss:,.0f} | {secs:,.0f} |", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "metrics-child":
        metrics_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["metrics", "jobs"])
    parser.add_argument("--rows", type=int, nargs="+")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crossrank-scale"))
    parser.add_argument("--max-len", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument(
        "--only", nargs="+", default=["prepare", "train", "score"], help="steps to run (others reuse --work)"
    )
    parser.add_argument("--set", action="append", default=[], help="extra train config override")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "metrics":
        metrics_table(args.rows or [1_000_000, 10_000_000], args.work)
    else:
        sizes = args.rows or [2_000_000, 20_000_000]
        jobs_table(sizes, args.work, args.max_len, args.train_steps, args.only, args.set)


if __name__ == "__main__":
    main()
