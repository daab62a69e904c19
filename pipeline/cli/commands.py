"""The handlers of the ``crossrank`` subcommands: each takes the parsed arguments and returns an exit code
(None for 0). Each imports its pipeline stage when it runs, so ``--help`` and quick commands never pay
for importing torch and torchrec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossrank.features.errors import InputError
from crossrank.features.storage import as_path

if TYPE_CHECKING:  # annotations only: the handlers import their stage when they run
    from crossrank.features.check import IdCounts
    from crossrank.features.spec import FeatureSpec


def prepare_movielens(args: argparse.Namespace) -> None:
    """``crossrank prepare movielens``: MovieLens ratings to ranking rows."""
    from crossrank.pipeline.prepare.movielens import prepare_movielens as prepare

    summary = prepare(
        Path(args.src_dir),
        as_path(args.out_dir),
        domains=Path(args.domains) if args.domains else None,
        max_len=args.max_len,
        n_test=args.n_test,
        n_valid=args.n_valid,
        row_group_size=args.row_group_size,
        overwrite=args.overwrite,
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
        domain_medians=tuple(args.domain_medians),
    )
    if args.days > 1 or args.new_item_frac:
        from crossrank.pipeline.prepare.synthetic.daily import prepare_synthetic_days

        daily = prepare_synthetic_days(
            as_path(args.out_dir),
            cfg,
            days=args.days,
            start_date=args.start_date,
            new_item_frac=args.new_item_frac,
            overwrite=args.overwrite,
        )
        print(daily.format())
        return
    print(prepare(as_path(args.out_dir), cfg, overwrite=args.overwrite).format())


def prepare_ranking(args: argparse.Namespace) -> None:
    """``crossrank prepare ranking``: the sampled ranking protocol's rows."""
    from crossrank.pipeline.prepare.ranking_set import prepare_ranking as prepare

    summary = prepare(
        Path(args.data_dir),
        negatives=args.negatives,
        users=args.users,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(summary.format())


def features_check(args: argparse.Namespace) -> int:
    """``crossrank features check``: 2 (bad input) when the spec or any data has a problem, else 0."""
    from crossrank.features.check import check_data, hashed_keys
    from crossrank.features.spec import SpecError, load_spec

    if args.fit or args.fit_output:
        return _features_fit(args)
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(f"{args.spec}: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.spec}: spec OK ({len(spec.tables)} tables, {len(spec.features)} features, domains {spec.domain_names})"
    )
    print(f"  pooled KJT keys:   {spec.pooled_keys}")
    print(f"  sequence KJT keys: {spec.sequence_keys}")
    failed = False
    reference: dict[str, IdCounts] | None = None
    for data in args.data or []:
        name = " ".join(data)
        report = check_data(spec, data, with_label=not args.no_label)
        for note in report.notes:
            print(f"  note: {note}")
        if report.problems:
            failed = True
            print(f"{name}: {len(report.problems)} problem(s):", file=sys.stderr)
            for p in report.problems:
                print(f"  - {p}", file=sys.stderr)
            continue
        print(f"{name}: OK ({report.files} file(s), {report.rows:,} rows)")
        if hashed_keys(spec):
            if args.reference and reference is None:
                reference = _reference_ids(spec, args.reference)
            _print_hash_stats(spec, data, reference, " ".join(args.reference or []))
    return 2 if failed else 0


def _features_fit(args: argparse.Namespace) -> int:
    """``features check SPEC --data TRAIN --fit [--fit-output NEW]``: check the data, compute the spec's
    standardize statistics and vocabularies from it, write them, and load the result as a check."""
    from crossrank.features.check import check_data
    from crossrank.features.fit import fit_spec, write_fit
    from crossrank.features.spec import SpecError, load_spec

    if not args.fit or len(args.data or []) != 1:
        raise InputError(
            "--fit needs exactly one --data set (the training data)"
            + ("" if args.fit else "; --fit-output is used with --fit")
            + ".",
            where=args.spec,
            fix="run `crossrank features check SPEC --data TRAIN --fit [--fit-output NEW_SPEC]`.",
        )
    try:  # mean/std and vocabulary files may be missing: they are what is fitted
        spec = load_spec(args.spec, fitting=True)
    except SpecError as e:
        print(f"{args.spec}: {e}", file=sys.stderr)
        return 2
    data = args.data[0]
    report = check_data(spec, data, with_label=not args.no_label)
    if report.problems:
        print(f"{' '.join(data)}: {len(report.problems)} problem(s), nothing fitted:", file=sys.stderr)
        for p in report.problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    result = fit_spec(spec, data)
    output = Path(args.fit_output or args.spec)
    for line in [*result.notes, *write_fit(spec, result, output)]:
        print(f"  {line}")
    fitted = load_spec(output)
    print(
        f"{output}: spec OK ({len(fitted.tables)} tables, {len(fitted.features)} features), fitted on {report.rows:,} rows"
    )
    return 0


def _reference_ids(spec: FeatureSpec, paths: list[str]) -> dict[str, IdCounts]:
    """The hash-mapped ids of ``--reference`` (checked first: a broken reference is an InputError)."""
    from crossrank.features.check import check_data, collect_ids

    report = check_data(spec, paths, with_label=False)
    if report.problems:
        first = report.problems[0]
        feature = "" if first.feature == "<data>" else f"feature '{first.feature}': "
        raise InputError(
            f"the --reference data has {len(report.problems)} problem(s), the first: {feature}{first.message}",
            where=first.source,
            spec=spec.path,
            fix=f"{first.fix} (`crossrank features check SPEC --data REFERENCE` lists them all).",
        )
    return collect_ids(spec, paths)


def _print_hash_stats(
    spec: FeatureSpec, data: list[str], reference: dict[str, IdCounts] | None, reference_name: str
) -> None:
    """The hash-mapping table of one data set."""
    from crossrank.features.check import collect_ids, format_hash_stats, hash_stats

    stats = hash_stats(spec, collect_ids(spec, data), reference)
    against = f" vs reference {reference_name}" if reference is not None else ""
    print(f"  hash-mapped ids{against}:")
    for line in format_hash_stats(stats).splitlines():
        print(f"    {line}")


def train(args: argparse.Namespace) -> None:
    """``crossrank train``: one process of a training job."""
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.loop import train as train_model

    overrides = list(args.set) + ([f"train.resume={args.resume}"] if args.resume else [])
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    if args.init_optimizer:
        overrides.append("train.init_optimizer=true")
    train_model(load_config(args.config, overrides))


def score(args: argparse.Namespace) -> None:
    """``crossrank score``: one rank of an offline scoring job."""
    from crossrank.pipeline.scoring.output import check_output_path

    check_output_path(as_path(args.output))  # at once: before torch is imported and the model built
    from crossrank.pipeline.scoring.score import run_score

    passthrough = [c for c in (args.passthrough or "").split(",") if c]
    run_score(
        args.checkpoint,
        args.input,
        args.output,
        args.batch_size,
        passthrough,
        args.overwrite,
        grouped=not args.row_by_row,
    )


def evaluate(args: argparse.Namespace) -> None:
    """``crossrank evaluate``: a checkpoint's metrics table."""
    from crossrank.pipeline.scoring.evaluate import run_evaluate

    run_evaluate(args.checkpoint, args.data, args.ranking, args.batch_size, grouped=not args.row_by_row)


def report(args: argparse.Namespace) -> None:
    """``crossrank report``: a finished run's metrics table."""
    import json

    from crossrank.pipeline.evaluation.metrics import format_metrics_table, latest_tables

    path = as_path(args.run_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(
            "no metrics.json in the run folder.", where=str(path), fix="train first (crossrank train)."
        )
    metrics = json.loads(path.read_text())
    tables = latest_tables(metrics)
    extra: dict[str, float] = {}
    if args.oracle:
        oracle = json.loads(as_path(args.oracle).read_text())["oracle_auc"]
        extra["oracle auc (test)"] = oracle["test"]
        if "test" in tables:
            extra["model auc / oracle auc"] = tables["test"]["auc"] / oracle["test"]
    print(
        f"run {args.run_dir}: {metrics['world_size']} process(es), {metrics['steps']} steps, "
        f"{metrics['wall_s']:.1f}s, {metrics['samples_per_s']:,.0f} samples/s, parameters {metrics['params']}"
    )
    print(format_metrics_table(tables, extra))
    _report_selection(metrics)


def _report_selection(metrics: dict[str, Any]) -> None:
    """The warm start's decisions other than ``loaded``, the best checkpoint and an early stop, if any."""
    warm = metrics.get("warm_start") or {}
    if warm:
        counts = ", ".join(f"{n} {d}" for d, n in warm["counts"].items() if n)
        print(f"warm start from {warm['source']}: {counts}")
        for key in warm["keys"]:
            if key["decision"] != "loaded":
                print(f"  {key['decision']:<14} {key['key']}")
    best = metrics.get("best")
    if best:
        print(f"best: valid {best['metric']} {best['value']:.4f} at step {best['step']} -> {best['path']}")
    if metrics.get("stopped_early"):
        print(f"stopped early: {metrics['stopped_early']}")


def plan(args: argparse.Namespace) -> None:
    """``crossrank plan``: the sharding plan and per-rank memory of a spec on a simulated cluster."""
    from crossrank.features.spec import load_spec
    from crossrank.pipeline.training.plan import Cluster, parse_rows, plan_cluster, planning_config, with_rows

    cfg = planning_config(args.config, args.set)
    spec = with_rows(load_spec(args.spec), parse_rows(args.rows))
    cluster = Cluster(
        hosts=args.hosts,
        gpus_per_host=args.gpus_per_host,
        hbm_gb=args.hbm_gb,
        ddr_gb=args.ddr_gb,
        batch_size=cfg.data.batch_size if args.batch_size is None else args.batch_size,
    )
    print(plan_cluster(spec, cfg, cluster).format())
