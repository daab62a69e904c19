"""The handlers of the ``crossrank`` subcommands: each takes the parsed arguments and returns an exit code
(None for 0). Each imports its pipeline stage when it runs, so ``--help`` and quick commands never pay
for importing torch and torchrec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crossrank.features.errors import InputError


def prepare_movielens(args: argparse.Namespace) -> None:
    """``crossrank prepare movielens``: MovieLens ratings to ranking rows."""
    from crossrank.pipeline.prepare.movielens import prepare_movielens as prepare

    summary = prepare(
        Path(args.src_dir),
        Path(args.out_dir),
        domains=Path(args.domains) if args.domains else None,
        max_len=args.max_len,
        n_test=args.n_test,
        n_valid=args.n_valid,
        row_group_size=args.row_group_size,
    )
    print(summary.format())


def prepare_synthetic(args: argparse.Namespace) -> None:
    """``crossrank prepare synthetic``: synthetic data with its oracle AUC."""
    from crossrank.pipeline.prepare.synthetic import SyntheticConfig
    from crossrank.pipeline.prepare.synthetic import prepare_synthetic as prepare

    cfg = SyntheticConfig(
        users=args.users,
        items_per_domain=args.items_per_domain,
        rows=args.rows,
        max_len=args.max_len,
        seed=args.seed,
        row_group_size=args.row_group_size,
    )
    print(prepare(Path(args.out_dir), cfg).format())


def prepare_ranking(args: argparse.Namespace) -> None:
    """``crossrank prepare ranking``: the sampled ranking protocol's rows."""
    from crossrank.pipeline.prepare.ranking_set import prepare_ranking as prepare

    print(prepare(Path(args.data_dir), negatives=args.negatives, users=args.users, seed=args.seed).format())


def features_check(args: argparse.Namespace) -> int:
    """``crossrank features check``: 1 when the spec or any data has a problem, else 0."""
    from crossrank.features.check import check_data
    from crossrank.features.spec import SpecError, load_spec

    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"{args.spec}: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.spec}: spec OK ({len(spec.tables)} tables, {len(spec.features)} features, domains {spec.domain_names})"
    )
    print(f"  pooled KJT keys:   {spec.pooled_keys}")
    print(f"  sequence KJT keys: {spec.sequence_keys}")
    failed = False
    for data in args.data or []:
        report = check_data(spec, data, with_label=not args.no_label)
        for note in report.notes:
            print(f"  note: {note}")
        if report.problems:
            failed = True
            print(f"{data}: {len(report.problems)} problem(s):", file=sys.stderr)
            for p in report.problems:
                print(f"  - {p}", file=sys.stderr)
        else:
            print(f"{data}: OK ({report.files} file(s), {report.rows:,} rows)")
    return 1 if failed else 0


def train(args: argparse.Namespace) -> None:
    """``crossrank train``: one process of a training job."""
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.loop import train as train_model

    overrides = list(args.set) + ([f"train.resume={args.resume}"] if args.resume else [])
    train_model(load_config(args.config, overrides))


def score(args: argparse.Namespace) -> None:
    """``crossrank score``: one rank of an offline scoring job."""
    from crossrank.pipeline.scoring.score import run_score

    passthrough = [c for c in (args.passthrough or "").split(",") if c]
    run_score(args.checkpoint, args.input, args.output, args.batch_size, passthrough)


def evaluate(args: argparse.Namespace) -> None:
    """``crossrank evaluate``: a checkpoint's metrics table."""
    from crossrank.pipeline.scoring.evaluate import run_evaluate

    run_evaluate(args.checkpoint, args.data, args.ranking, args.batch_size)


def report(args: argparse.Namespace) -> None:
    """``crossrank report``: a finished run's metrics table."""
    import json

    from crossrank.pipeline.evaluation.metrics import format_metrics_table, latest_tables

    path = Path(args.run_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(
            "no metrics.json in the run folder.", where=str(path), fix="train first (crossrank train)."
        )
    metrics = json.loads(path.read_text())
    tables = latest_tables(metrics)
    extra: dict[str, float] = {}
    if args.oracle:
        oracle = json.loads(Path(args.oracle).read_text())["oracle_auc"]
        extra["oracle auc (test)"] = oracle["test"]
        if "test" in tables:
            extra["model auc / oracle auc"] = tables["test"]["auc"] / oracle["test"]
    print(
        f"run {args.run_dir}: {metrics['world_size']} process(es), {metrics['steps']} steps, "
        f"{metrics['wall_s']:.1f}s, {metrics['samples_per_s']:,.0f} samples/s, parameters {metrics['params']}"
    )
    print(format_metrics_table(tables, extra))
