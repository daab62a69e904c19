"""Tables and figures of a quality study (``benchmarks/quality.py``): mean ± std over seeds, paired per-seed
differences to the baseline, the orthogonality figure, quality vs history length, model AUC / oracle AUC."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = [
    ("auc", "AUC"),
    ("ne", "NE"),
    ("auc/A", "AUC A"),
    ("auc/B", "AUC B"),
    ("hr@10", "HR@10"),
    ("ndcg@10", "NDCG@10"),
]


def mean_std(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def by_variant(results: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        grouped[r["variant"]].append(r)
    return {v: sorted(rs, key=lambda r: r["seed"]) for v, rs in grouped.items()}


def summary_table(groups: dict[str, list[dict]]) -> list[str]:
    """Test metrics of the validation-selected checkpoints, mean ± std over seeds, with their cost."""
    head = [
        "variant",
        "seeds",
        *(c[1] for c in COLUMNS),
        "valid AUC",
        "best epoch",
        "dense",
        "embedding",
        "train s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for variant, runs in groups.items():
        cells = [mean_std([r["test"].get(k, float("nan")) for r in runs]) for k, _ in COLUMNS]
        valid = mean_std([r["best"]["value"] for r in runs])
        epoch = mean_std([r["best"]["epoch"] for r in runs], 1)
        params = runs[0]["params"]
        wall = statistics.mean(r["train_wall_s"] for r in runs)
        row = [
            variant,
            str(len(runs)),
            *cells,
            valid,
            epoch,
            f"{params['dense']:,}",
            f"{params['embedding']:,}",
        ]
        lines.append("| " + " | ".join([*row, f"{wall:.0f}"]) + " |")
    return lines


def paired_table(groups: dict[str, list[dict]], baseline: str, metric: str = "auc") -> list[str]:
    """Test ``metric`` (AUC, or a domain's: ``auc/A``) minus the baseline's, seed by seed (same data order
    and initial tables per seed)."""
    if baseline not in groups:
        return []
    base = {r["seed"]: r["test"][metric] for r in groups[baseline]}
    label = dict(COLUMNS).get(metric, metric)
    lines = ["", f"Test {label} minus `{baseline}` of the same seed:", ""]
    lines += ["| variant | per seed | mean ± std | seeds better |", "| --- | --- | --- | --- |"]
    for variant, runs in groups.items():
        if variant == baseline:
            continue
        diffs = [r["test"][metric] - base[r["seed"]] for r in runs if r["seed"] in base]
        better = sum(d > 0 for d in diffs)
        per_seed = ", ".join(f"{d:+.4f}" for d in diffs)
        lines.append(f"| {variant} | {per_seed} | {mean_std(diffs)} | {better}/{len(diffs)} |")
    return lines


def runs_table(groups: dict[str, list[dict]]) -> list[str]:
    lines = ["", "Every run (test metrics of the best checkpoint):", ""]
    lines += [
        "| variant | seed | AUC | NE | valid AUC | best epoch | steps | samples/s |",
        "|" + " --- |" * 8,
    ]
    for variant, runs in groups.items():
        for r in runs:
            t = r["test"]
            lines.append(
                f"| {variant} | {r['seed']} | {t['auc']:.4f} | {t['ne']:.4f} | {r['best']['value']:.4f} | "
                f"{r['best']['epoch']} | {r['steps']:,} | {r['samples_per_s']:,.0f} |"
            )
    return lines


def oracle_table(groups: dict[str, list[dict]]) -> list[str]:
    lines = [
        "",
        "| data | seeds | test AUC | oracle AUC | model / oracle |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant, runs in groups.items():
        ratio = [r["test"]["auc"] / r["oracle_auc"] for r in runs]
        auc = mean_std([r["test"]["auc"] for r in runs])
        lines.append(f"| {variant} | {len(runs)} | {auc} | {runs[0]['oracle_auc']:.4f} | {mean_std(ratio)} |")
    return lines


def plot_ortho(groups: dict[str, list[dict]], out: Path) -> list[str]:
    """Per direction, the domain's test AUC against |cos(X, X')| over every run (the GCA paper's figure)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lines: list[str] = []
    for ax, (d, o) in zip(axes, (("A", "B"), ("B", "A")), strict=True):
        key = f"ortho/{d}←{o}"
        points = [
            (r["test"][key], r["test"][f"auc/{d}"], v)
            for v, rs in groups.items()
            for r in rs
            if key in r["test"]
        ]
        if len(points) < 3:
            continue
        x, y = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        corr = float(np.corrcoef(x, y)[0, 1])
        lines.append(
            f"Pearson r of |cos(X, X')| ({d}←{o}) with domain {d}'s test AUC over {len(points)} runs: {corr:+.3f}."
        )
        for variant in sorted({p[2] for p in points}):
            sel = [p for p in points if p[2] == variant]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], label=variant)
        ax.set(
            xlabel=f"|cos(X, X')|, {d}←{o}",
            ylabel=f"test AUC of domain {d}",
            title=f"{d}←{o}: r = {corr:+.2f}",
        )
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "ml1m-fusion-ortho.png", dpi=120)
    return ["", *lines, "", "Figure: `benchmarks/results/quality/ml1m-fusion-ortho.png`."]


def plot_length(groups: dict[str, list[dict]], out: Path) -> list[str]:
    """Test AUC against the history length, one line per encoder (variants are ``"<encoder> L=<n>"``)."""
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for variant, runs in groups.items():
        encoder, length = variant.split(" L=")
        lines[encoder].append((int(length), statistics.mean(r["test"]["auc"] for r in runs)))
    fig, ax = plt.subplots(figsize=(6, 4))
    for encoder, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=encoder)
    ax.set(xscale="log", xlabel="max history length (median = half)", ylabel="test AUC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "long-synthetic-length.png", dpi=120)
    return ["", "Figure: `benchmarks/results/quality/long-synthetic-length.png`."]


def diagnostics_table(groups: dict[str, list[dict]]) -> list[str]:
    """ELASTIC's diagnostics per variant and domain (mean over seeds), for the runs that stored them."""
    rows = [(v, rs) for v, rs in groups.items() if all("diagnostics" in r for r in rs)]
    if not rows:
        return []
    names = sorted({n for _, rs in rows for d in rs[0]["diagnostics"].values() for n in d})
    lines = [
        "",
        "ELASTIC diagnostics on validation (`benchmarks/elastic_diagnostics.py`, mean over seeds):",
        "",
        "| variant | domain | " + " | ".join(names) + " |",
        "| --- | --- |" + " --- |" * len(names),
    ]
    for variant, runs in rows:
        for domain in runs[0]["diagnostics"]:
            cells = [statistics.mean(r["diagnostics"][domain].get(n, math.nan) for r in runs) for n in names]
            shown = ("-" if math.isnan(c) else f"{c:.3f}" for c in cells)  # nan: a part the variant lacks
            lines.append(f"| {variant} | {domain} | " + " | ".join(shown) + " |")
    return lines


def write(
    study: str,
    baseline: str,
    figures: list[str],
    results: list[dict],
    out: Path,
    command: str,
    version: str,
    paired: tuple[str, ...] = ("auc",),
) -> None:
    """``out/<study>.md`` (and figures), printed too; ``paired``: the test metrics of the paired tables."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    groups = by_variant(results)
    lines = [f"# {study}", "", f"Command: `{command}` (code {version})", "", *summary_table(groups)]
    for metric in paired:
        lines += paired_table(groups, baseline, metric)
    if "oracle" in figures:
        lines += oracle_table(groups)
    if "ortho" in figures:
        lines += plot_ortho(groups, out)
    if "length" in figures:
        lines += plot_length(groups, out)
    lines += diagnostics_table(groups)
    lines += runs_table(groups)
    (out / f"{study}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
