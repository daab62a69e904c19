"""Warm start vs training from scratch on day 2 of the daily synthetic data (issue 9's measurement).

    python benchmarks/warm_start.py                      # day 1 once, then day 2 warm and scratch x 3 seeds
    python benchmarks/warm_start.py --seeds 0 1 2 3 4

Day 1 (``configs/daily/spec_day1.yaml``) trains from scratch once. Day 2 (``spec_day2.yaml``: one added
feature, item tables grown for the new items) trains for the same number of steps twice per seed: warm
(``train.init_from`` = day 1's run folder, i.e. its best checkpoint) and from scratch. Prints validation and
test AUC per run and mean ± std per arm. Each run is ``crossrank train`` in a fresh process (``--nproc``
processes through torchrun); its metrics are cached under ``OUT/cache/<run>-<config hash>-<commit>.json``, so
an interrupted study resumes where it stopped and a changed config or commit reruns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAY1, DAY2 = "2026-11-20", "2026-11-21"


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO).returncode != 0
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _run(name: str, overrides: list[str], out: Path, nproc: int) -> dict:  # type: ignore[type-arg]
    """``crossrank train`` with ``overrides``; cached by (name, overrides, commit)."""
    key = hashlib.sha1(json.dumps([name, overrides, nproc]).encode()).hexdigest()[:10]
    cache = out / "cache" / f"{name}-{key}-{_commit()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    launcher = [sys.executable, "-m"] + (
        ["torch.distributed.run", f"--nproc-per-node={nproc}", "--rdzv-endpoint=localhost:0", "-m"]
        if nproc > 1
        else []
    )
    args = ["crossrank.pipeline.cli", "train", "--config", str(REPO / "configs/daily/day.yaml")]
    sets = [f"run_dir={run_dir}", "train.tensorboard=false", *overrides]
    subprocess.run([*launcher, *args, *[a for s in sets for a in ("--set", s)]], cwd=REPO, check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(metrics))
    return metrics


def _data(out: Path, rows: int) -> Path:
    data = out / "data"
    if not (data / "summary.json").exists():
        cmd = ["prepare", "synthetic", str(data), "--rows", str(rows), "--days", "3"]
        cmd += ["--start-date", DAY1, "--new-item-frac", "0.2"]
        subprocess.run([sys.executable, "-m", "crossrank.pipeline.cli", *cmd], cwd=REPO, check=True)
    return data


def study(out: Path, seeds: list[int], rows: int, nproc: int) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    data = _data(out, rows)
    paths = [f"data.{s}={data}/date={{date}}/{s}" for s in ("train", "valid", "test")]
    _run("day1", [*paths, f"data.date={DAY1}", "data.spec=configs/daily/spec_day1.yaml"], out, nproc)
    arms: dict[str, list[dict]] = {"warm": [], "scratch": []}  # type: ignore[type-arg]
    for seed in seeds:
        day2 = [*paths, f"data.date={DAY2}", f"train.seed={seed}"]
        warm = [*day2, f"train.init_from={out / 'runs' / 'day1'}"]
        arms["warm"].append(_run(f"day2-warm-s{seed}", warm, out, nproc))
        arms["scratch"].append(_run(f"day2-scratch-s{seed}", day2, out, nproc))
    return arms


def report(arms: dict[str, list[dict]], seeds: list[int]) -> str:  # type: ignore[type-arg]
    lines = ["| arm | seed | steps | valid AUC (last epoch) | test AUC |", "|---|---|---|---|---|"]
    summary = {}
    for arm, runs in arms.items():
        valid = [r["valid"][-1]["auc"] for r in runs]
        test = [r["test"]["auc"] for r in runs]
        for seed, r, v, t in zip(seeds, runs, valid, test, strict=True):
            lines.append(f"| {arm} | {seed} | {r['steps']} | {v:.4f} | {t:.4f} |")
        summary[arm] = (valid, test)

    def ms(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.4f}"

    lines += ["", "| arm | valid AUC | test AUC |", "|---|---|---|"]
    lines += [f"| {arm} | {ms(v)} | {ms(t)} |" for arm, (v, t) in summary.items()]
    diff = [w - s for w, s in zip(summary["warm"][0], summary["scratch"][0], strict=True)]
    lines.append(f"\nwarm - scratch, valid AUC per seed: {', '.join(f'{d:+.4f}' for d in diff)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "runs" / "warm_start_study"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=150_000, help="rows over the three days")
    parser.add_argument("--nproc", type=int, default=1, help="processes per training run")
    args = parser.parse_args()
    arms = study(Path(args.out), args.seeds, args.rows, args.nproc)
    print(f"commit {_commit()}")
    print(report(arms, args.seeds))


if __name__ == "__main__":
    main()
