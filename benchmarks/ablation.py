"""The GCA ablation study on real data: every fusion variant x S seeds through the real train/evaluate path.

    python benchmarks/ablation.py --data ml-1m                 # 7 variants x 3 seeds (~45 min on 2 cores)
    python benchmarks/ablation.py --data ml-1m --seeds 1 --variants gca none

Writes ``OUT/ablation.md`` (mean ± std over seeds of test AUC, NE, per-domain AUC, HR@10 and NDCG@10 on
the 99-negative protocol, |cos(X, X')| per direction, dense/embedding parameters, train time, and every
run), ``OUT/ortho_vs_metric.png`` (per-domain AUC against |cos| of that domain's cross-attention, every
run: the GCA paper's figure) and ``OUT/auc_vs_params.png`` (accuracy per dense parameter).

Sizing (so each run takes minutes on 2 CPU cores): MovieLens prepared once (histories up to 100), then a
random subset of ``--users`` users (all their rows); 1 epoch; the ranking protocol on ``--ranking-users``
of them. Each run is ``crossrank train`` in a fresh single process (``configs/ml1m.yaml`` + overrides).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, list[str]] = {
    "gca": ["model.fusion.kind=gca"],
    "gca_tanh": ["model.fusion.kind=gca", "model.fusion.gate_act=tanh"],
    "gca_stack": ["model.fusion.kind=gca", "model.fusion.placement=stack", "model.encoder.num_layers=2"],
    "cross_attention": ["model.fusion.kind=cross_attention"],
    "concat": ["model.fusion.kind=concat"],
    "none": ["model.fusion.kind=none"],
    "none_param_matched": ["model.fusion.kind=none", "model.fusion.param_matched=true"],
}
METRICS = ("auc", "ne", "auc/A", "auc/B", "hr@10", "ndcg@10", "ortho/A←B", "ortho/B←A")


def prepare(data: str, work: Path, users: int, ranking_users: int, seed: int) -> Path:
    """MovieLens -> prepared splits -> a user subset -> its ranking protocol (cached in ``work``)."""
    from crossrank.pipeline.core.atomic import write_parquet_atomic
    from crossrank.pipeline.prepare.movielens import prepare_movielens
    from crossrank.pipeline.prepare.ranking_set import prepare_ranking

    src = Path(data) if Path(data).exists() else REPO.parent / "shared" / "data" / data
    full, subset = work / "full", work / f"users{users}"
    if not (full / "summary.json").exists():
        print(prepare_movielens(src, full, max_len=100).format())
    if not (subset / "ranking.json").exists():
        all_users = (
            ds.dataset(full / "test", format="parquet").to_table(columns=["user_id"]).column("user_id")
        )
        chosen = np.random.default_rng(seed).permutation(pc.unique(all_users).to_numpy())[:users]
        for split in ("train", "valid", "test"):
            table = ds.dataset(full / split, format="parquet").to_table(
                filter=pc.field("user_id").isin(chosen)
            )
            write_parquet_atomic(table, subset / split / "part-00000.parquet", row_group_size=16384)
        print(prepare_ranking(subset, negatives=99, users=ranking_users, seed=seed).format())
    return subset


def run(variant: str, seed: int, data: Path, out: Path, epochs: int) -> dict:
    run_dir = out / "runs" / f"{variant}_seed{seed}"
    if (run_dir / "metrics.json").exists():  # resumable: finished runs are kept
        return json.loads((run_dir / "metrics.json").read_text())
    overrides = [
        f"data.train={data / 'train'}",
        f"data.valid={data / 'valid'}",
        f"data.test={data / 'test'}",
        f"data.ranking={data / 'ranking'}",
        f"train.epochs={epochs}",
        f"train.seed={seed}",
        f"run_dir={run_dir}",
        "train.resume=never",
        "model.sequence_encoder=elastic",
        *VARIANTS[variant],
    ]
    cmd = [
        sys.executable,
        "-m",
        "crossrank.pipeline.cli",
        "train",
        "--config",
        str(REPO / "configs/ml1m.yaml"),
    ]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} seed {seed} failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the study keeps metrics, not weights
    print(f"  {variant:20s} seed {seed}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return json.loads((run_dir / "metrics.json").read_text())


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _summary_table(results: dict[str, list[dict]], args: argparse.Namespace) -> list[str]:
    """The report's title and its table of every variant's mean ± std over seeds."""
    lines = [
        f"# Fusion ablation on {args.data} ({args.users} users, {args.epochs} epoch(s), {args.seeds} seed(s), "
        f"ranking protocol on {args.ranking_users} users x 99 negatives)",
        "",
        "Command: `python benchmarks/ablation.py " + " ".join(sys.argv[1:]) + "`",
        "",
        "| variant | AUC | NE | AUC A | AUC B | HR@10 | NDCG@10 | |cos| A←B | |cos| B←A | dense params | embedding params | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, runs in results.items():
        cells = [mean_std([r["test"].get(m, float("nan")) for r in runs]) for m in METRICS]
        dense = runs[0]["params"]["dense"]
        emb = runs[0]["params"]["embedding"]
        wall = statistics.mean(r["wall_s"] for r in runs)
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {dense:,} | {emb:,} | {wall:.0f} |")
    return lines


def _runs_table(results: dict[str, list[dict]]) -> list[str]:
    """Every run's test metrics, one row per variant and seed."""
    lines = [
        "",
        "Every run:",
        "",
        "| variant | seed | AUC | NE | AUC A | AUC B | HR@10 | NDCG@10 | |cos| A←B | |cos| B←A |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, runs in results.items():
        for seed, r in enumerate(runs):
            vals = [r["test"].get(m) for m in METRICS]
            lines.append(
                f"| {variant} | {seed} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |"
            )
    return lines


def _paired_table(results: dict[str, list[dict]]) -> list[str]:
    """AUC differences to the `none` baseline, seed by seed (nothing without a `none` run)."""
    # Paired by seed (every variant sees the same data order and initial tables per seed): the difference
    # to the `none` baseline removes the seed-to-seed swing that dominates the std above.
    if "none" not in results:
        return []
    lines = ["", "AUC minus the `none` baseline of the same seed (mean ± std over seeds):", ""]
    lines += ["| variant | per seed | mean ± std |", "| --- | --- | --- |"]
    for variant, runs in results.items():
        if variant == "none":
            continue
        diffs = [r["test"]["auc"] - b["test"]["auc"] for r, b in zip(runs, results["none"], strict=False)]
        lines.append(f"| {variant} | {', '.join(f'{d:+.4f}' for d in diffs)} | {mean_std(diffs)} |")
    return lines


def _plot_ortho_vs_auc(results: dict[str, list[dict]], out: Path) -> list[str]:
    """``ortho_vs_metric.png``: per direction, domain AUC against |cos| over every run; returns the
    correlation lines of the report."""
    import matplotlib.pyplot as plt

    # Orthogonality vs accuracy per direction (domains differ in AUC level, so they are not pooled).
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lines: list[str] = []
    for ax, (d, o) in zip(axes, (("A", "B"), ("B", "A")), strict=True):
        points = [
            (r["test"][f"ortho/{d}←{o}"], r["test"][f"auc/{d}"], variant)
            for variant, runs in results.items()
            for r in runs
            if f"ortho/{d}←{o}" in r["test"]
        ]
        if len(points) < 3:
            continue
        x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        corr = float(np.corrcoef(x, y)[0, 1])
        lines.append(
            f"Pearson correlation of |cos(X, X')| ({d}←{o}) with domain {d}'s test AUC over {len(points)} runs: {corr:+.3f}."
        )
        for variant in sorted({p[2] for p in points}):
            sel = [p for p in points if p[2] == variant]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=variant)
        ax.set_xlabel(f"|cos(X, X')|, {d}←{o}")
        ax.set_ylabel(f"test AUC of domain {d}")
        ax.set_title(f"{d}←{o}: r = {corr:+.2f}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ortho_vs_metric.png", dpi=120)
    return lines


def _plot_auc_vs_params(results: dict[str, list[dict]], out: Path) -> None:
    """``auc_vs_params.png``: each variant's test AUC (mean ± std over seeds) against its dense parameters."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, runs in results.items():
        aucs = [r["test"]["auc"] for r in runs]
        ax.errorbar(
            runs[0]["params"]["dense"],
            statistics.mean(aucs),
            yerr=statistics.stdev(aucs) if len(aucs) > 1 else 0,
            fmt="o",
            capsize=3,
            label=variant,
        )
    ax.set_xlabel("dense parameters")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title("Accuracy per parameter")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "auc_vs_params.png", dpi=120)


def write_report(results: dict[str, list[dict]], out: Path, args: argparse.Namespace) -> None:
    """Write ``ablation.md`` and the two figures to ``out``, and print the report."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a benchmark machine
    lines = _summary_table(results, args) + _runs_table(results) + _paired_table(results)
    lines += ["", *_plot_ortho_vs_auc(results, out)]
    _plot_auc_vs_params(results, out)
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ml-1m", help="a MovieLens folder, or a name under ../shared/data")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--users", type=int, default=1500, help="random users whose rows are used")
    parser.add_argument("--ranking-users", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", default=str(REPO / "data" / "ablation"), help="prepared data cache")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ablation"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(args.data, Path(args.work) / args.data, args.users, args.ranking_users, seed=0)
    results = {v: [run(v, s, data, out, args.epochs) for s in range(args.seeds)] for v in args.variants}
    write_report(results, out, args)


if __name__ == "__main__":
    main()
