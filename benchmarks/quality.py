"""Model quality: crossrank's models against the standard baselines, in named studies that run one at a time
and resume from cached per-run results (keyed by config, data and code: ``benchmarks/quality_runs.py``).

    python benchmarks/quality.py --list
    python benchmarks/quality.py ml1m-sweep                 # choose the default config on validation
    python benchmarks/quality.py ml1m-baselines --seeds 3   # encoders x {none, gca} + param-matched none
    python benchmarks/quality.py ml1m-fusion --seeds 3      # the fusion ablation + orthogonality figure
    python benchmarks/quality.py ml100k --seeds 3           # the default (and elastic) on small data vs mean + none
    python benchmarks/quality.py long-synthetic --seeds 1   # quality vs history length, 1k-4k events
    python benchmarks/quality.py sparse-domain --seeds 3    # GCA vs none on a sparse domain (A's AUC)
    python benchmarks/quality.py oracle-curve               # model AUC / oracle AUC at 200k, 1M, 4M rows
    python benchmarks/quality.py ml1m-baselines --max-minutes 120   # a part: stop launching runs after 2 h
    python benchmarks/quality.py ml1m-fusion --cached-only   # the report of the runs done so far

Every run trains on validation-selected checkpoints (``train.select_metric=auc``, best checkpoint evaluated
on test), so test never chooses anything. Each study writes ``benchmarks/results/quality/<study>.md`` (and
its figures), and prints its tables: mean ± std over seeds, paired per-seed differences to the study's
baseline, dense/embedding parameter counts, train time.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_data
import quality_report
from quality_runs import REPO, Run, cached, code_version, derived_spec, execute

OUT = REPO / "benchmarks" / "results" / "quality"
ML_SPEC = REPO / "features" / "specs" / "movielens.yaml"
SYN_SPEC = REPO / "features" / "specs" / "synthetic.yaml"
ML_CONFIG = "configs/ml1m.yaml"
# Long enough for validation to pick the epoch: the best checkpoint is tested, later epochs only cost time.
CONVERGE = ("train.epochs=6", "train.early_stop_patience=1")
ENCODERS = ("mean", "din", "self_attention", "elastic")


@dataclass
class Study:
    """A named study: its runs (per seed), the variant its paired differences are taken against and the
    test metrics they are taken on."""

    runs: Callable[[argparse.Namespace], list[Run]]
    baseline: str
    about: str
    figures: list[str] = field(default_factory=list)
    paired: tuple[str, ...] = ("auc",)


def _ml1m(args: argparse.Namespace, variants: dict[str, list[str]], max_len: int = 200) -> list[Run]:
    data = quality_data.movielens("ml-1m", max_len)
    spec = derived_spec(ML_SPEC, data / "spec.yaml", max_len)
    return [  # seed-major: a study stopped part-way has every variant's first seeds
        Run(name, seed, ML_CONFIG, data, spec, (*CONVERGE, *sets))
        for seed in range(args.seeds)
        for name, sets in variants.items()
    ]


def ml1m_sweep(args: argparse.Namespace) -> list[Run]:
    """The default's learning rates, dimension and encoder settings, chosen on validation AUC (1 seed)."""
    base = ["model.sequence_encoder=mean", "model.fusion.kind=gca"]
    data = quality_data.movielens("ml-1m", 200)
    spec = derived_spec(ML_SPEC, data / "spec.yaml", 200)
    spec64 = derived_spec(ML_SPEC, data / "spec-dim64.yaml", 200, dim=64)
    grid = {
        "mean lr 3e-3/0.3": (spec, []),
        "mean lr 1e-3/0.3": (spec, ["train.dense_lr=0.001"]),
        "mean lr 3e-3/0.1": (spec, ["train.sparse_lr=0.1"]),
        "mean dim 64": (spec64, []),
        "elastic (K=8)": (spec, ["model.sequence_encoder=elastic"]),
        "elastic K=4": (spec, ["model.sequence_encoder=elastic", "model.encoder.num_slots=4"]),
    }
    return [Run(n, 0, ML_CONFIG, data, sp, (*CONVERGE, *base, *sets)) for n, (sp, sets) in grid.items()]


def ml1m_baselines(args: argparse.Namespace) -> list[Run]:
    variants = {
        f"{enc} + {fusion}": [f"model.sequence_encoder={enc}", f"model.fusion.kind={fusion}"]
        for enc in ENCODERS
        for fusion in ("none", "gca")
    }
    variants["mean + none (param-matched)"] = [
        "model.sequence_encoder=mean",
        "model.fusion.kind=none",
        "model.fusion.param_matched=true",
    ]
    for fusion in ("none", "gca"):  # the mean plus the means of the latest 4, 16 and 64 events (K = 4)
        variants[f"mean windows + {fusion}"] = [
            "model.sequence_encoder=mean",
            f"model.fusion.kind={fusion}",
            "model.encoder.mean_windows=[4,16,64]",
        ]
    return _ml1m(args, variants)


def ml1m_fusion(args: argparse.Namespace) -> list[Run]:
    enc = f"model.sequence_encoder={args.encoder}"
    variants = {
        "gca": [enc, "model.fusion.kind=gca"],
        "gca tanh": [enc, "model.fusion.kind=gca", "model.fusion.gate_act=tanh"],
        "cross_attention": [enc, "model.fusion.kind=cross_attention"],
        "concat": [enc, "model.fusion.kind=concat"],
        "none": [enc, "model.fusion.kind=none"],
        "none (param-matched)": [enc, "model.fusion.kind=none", "model.fusion.param_matched=true"],
    }
    return _ml1m(args, variants)


def ml100k(args: argparse.Namespace) -> list[Run]:
    data = quality_data.movielens("ml-100k", 200, ranking_users=0)
    spec = derived_spec(ML_SPEC, data / "spec.yaml", 200)
    variants = {
        "default (configs/ml1m.yaml)": [],
        "mean + none": ["model.sequence_encoder=mean", "model.fusion.kind=none"],
        # a candidate for the default that ml-1m validation prefers: the check a switch needs first
        "elastic + gca": ["model.sequence_encoder=elastic", "model.fusion.kind=gca"],
    }
    return [
        Run(n, seed, ML_CONFIG, data, spec, (*CONVERGE, "data.batch_size=256", *sets), nproc=1)
        for n, sets in variants.items()
        for seed in range(args.seeds)
    ]


def long_synthetic(args: argparse.Namespace) -> list[Run]:
    """Histories with medians of 1k-4k events per domain; encoders at the longest length that fits."""
    runs = []
    for max_len in args.lengths:
        data = quality_data.synthetic(
            f"long{max_len}", rows=args.rows, users=2000, max_len=max_len, hist_median=max_len / 2, seed=1
        )
        spec = derived_spec(SYN_SPEC, data / "spec.yaml", max_len)
        for variant in args.encoders:  # an encoder, maybe with overrides: elastic+model.encoder.num_slots=4
            enc, *more = variant.split("+")
            sets = (
                *CONVERGE,
                f"model.sequence_encoder={enc}",
                "model.fusion.kind=gca",
                "data.batch_size=128",
                *more,
            )
            extra = {"oracle_auc": quality_data.oracle_auc(data)}
            runs += [
                Run(
                    f"{variant} L={max_len}",
                    s,
                    "configs/demo.yaml",
                    data,
                    spec,
                    sets,
                    diagnose=enc == "elastic",
                    extra=extra,
                )
                for s in range(args.seeds)
            ]
    return runs


def oracle_curve(args: argparse.Namespace) -> list[Run]:
    """More rows of one world: the same 2,000 users, items and interests (one seed) at every size, so the
    gap to the oracle measures what more data buys (more users per size would make it a larger world)."""
    runs = []
    for rows in args.sizes:
        data = quality_data.synthetic(f"world2000-rows{rows}", rows=rows, users=2000, seed=0)
        sets = (*CONVERGE, "model.sequence_encoder=mean", "model.fusion.kind=gca")
        extra = {"oracle_auc": quality_data.oracle_auc(data)}
        runs += [
            Run(f"{rows:,} rows", s, "configs/demo.yaml", data, SYN_SPEC, sets, extra=extra)
            for s in range(args.seeds)
        ]
    return runs


def sparse_domain(args: argparse.Namespace) -> list[Run]:
    """A sparse target domain: most users have a few events in A (median 4) and many in B (median 200);
    GCA against ``none`` and the parameter-matched ``none`` on A's AUC (the report's AUC A column)."""
    data = quality_data.synthetic(
        "sparse-A", rows=args.rows, users=2000, max_len=256, domain_medians=(4.0, 200.0), seed=2
    )
    spec = derived_spec(SYN_SPEC, data / "spec.yaml", 256)
    base = (*CONVERGE, "model.sequence_encoder=mean", "data.batch_size=256")
    variants = {
        "gca": ["model.fusion.kind=gca"],
        "none": ["model.fusion.kind=none"],
        "none (param-matched)": ["model.fusion.kind=none", "model.fusion.param_matched=true"],
    }
    extra = {"oracle_auc": quality_data.oracle_auc(data)}
    return [
        Run(name, s, "configs/demo.yaml", data, spec, (*base, *sets), extra=extra)
        for s in range(args.seeds)
        for name, sets in variants.items()
    ]


STUDIES = {
    "ml1m-sweep": Study(ml1m_sweep, "mean lr 3e-3/0.3", "the default config, chosen on validation AUC"),
    "ml1m-baselines": Study(ml1m_baselines, "mean + none", "encoders x fusion on ml-1m, histories up to 200"),
    "ml1m-fusion": Study(ml1m_fusion, "none (param-matched)", "fusion ablation on ml-1m", ["ortho"]),
    "ml100k": Study(ml100k, "mean + none", "the default config on ml-100k"),
    "long-synthetic": Study(long_synthetic, "", "quality vs history length (synthetic)", ["length"]),
    "sparse-domain": Study(
        sparse_domain,
        "none (param-matched)",
        "GCA on a sparse target domain (synthetic)",
        paired=("auc/A", "auc"),
    ),
    "oracle-curve": Study(oracle_curve, "", "model AUC / oracle AUC vs rows (synthetic)", ["oracle"]),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", nargs="?", choices=list(STUDIES))
    parser.add_argument("--list", action="store_true", help="list the studies and their runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-minutes", type=float, default=0, help="stop launching runs after this long")
    parser.add_argument(
        "--cached-only",
        action="store_true",
        help="launch nothing: report the runs already cached for this code",
    )
    parser.add_argument("--variants", nargs="*", help="only these variants (a part of the study)")
    parser.add_argument("--baseline", help="the variant paired differences are taken against")
    parser.add_argument("--encoder", default="mean", help="ml1m-fusion: the sequence encoder")
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 4096], help="long-synthetic max_len")
    parser.add_argument(
        "--encoders",
        nargs="*",
        default=["mean", "mean+model.encoder.mean_windows=[4,16,64]", "din", "elastic"],
        help="long-synthetic: encoders, each maybe with +overrides (elastic+model.encoder.num_slots=4)",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="long-synthetic / sparse-domain rows")
    parser.add_argument("--sizes", type=int, nargs="*", default=[200_000, 1_000_000, 4_000_000])
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.list or not args.study:
        for name, study in STUDIES.items():
            print(f"{name:16s} {study.about}")
        return
    study = STUDIES[args.study]
    runs = [r for r in study.runs(args) if not args.variants or r.variant in args.variants]
    version, start, results = code_version(), time.perf_counter(), []
    if args.cached_only:
        runs = [r for r in runs if cached(r, OUT / "cache", version) is not None]
    for i, run in enumerate(runs):
        if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
            print(f"stopping after {args.max_minutes} min: {len(runs) - i} run(s) left; rerun to continue")
            break
        t0 = time.perf_counter()
        results.append(execute(run, OUT / "cache", version))
        print(
            f"[{i + 1}/{len(runs)}] {run.variant} seed {run.seed}: {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    baseline = args.baseline or study.baseline
    quality_report.write(args.study, baseline, study.figures, results, OUT, command, version, study.paired)


if __name__ == "__main__":
    main()
