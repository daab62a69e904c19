"""``crossrank``: the one entry point (prepare, features check, train)."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from features.errors import InputError


def _quiet_third_party() -> None:
    # Deprecation chatter from inside torch/torchrec says nothing actionable to a crossrank user.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in (
        "torch.fx._symbolic_trace",
        "torchrec.distributed.planner",
        "torchrec.distributed.train_pipeline",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _prepare_movielens(args: argparse.Namespace) -> None:
    from pipeline.movielens import prepare_movielens

    summary = prepare_movielens(
        Path(args.src_dir),
        Path(args.out_dir),
        domains=Path(args.domains) if args.domains else None,
        max_len=args.max_len,
        n_test=args.n_test,
        n_valid=args.n_valid,
        row_group_size=args.row_group_size,
    )
    print(summary.format())


def _prepare_synthetic(args: argparse.Namespace) -> None:
    from pipeline.synthetic import SyntheticConfig, prepare_synthetic

    cfg = SyntheticConfig(
        users=args.users,
        items_per_domain=args.items_per_domain,
        rows=args.rows,
        max_len=args.max_len,
        seed=args.seed,
        row_group_size=args.row_group_size,
    )
    print(prepare_synthetic(Path(args.out_dir), cfg).format())


def _prepare_ranking(args: argparse.Namespace) -> None:
    from pipeline.ranking import prepare_ranking

    print(
        prepare_ranking(
            Path(args.data_dir), negatives=args.negatives, users=args.users, seed=args.seed
        ).format()
    )


def _features_check(args: argparse.Namespace) -> int:
    from features.check import check_data
    from features.spec import SpecError, load_spec

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


def _train(args: argparse.Namespace) -> None:
    from pipeline.config import load_config
    from pipeline.train import train

    overrides = list(args.set) + ([f"train.resume={args.resume}"] if args.resume else [])
    train(load_config(args.config, overrides))


def _score(args: argparse.Namespace) -> None:
    from pipeline.score import run_score

    passthrough = [c for c in (args.passthrough or "").split(",") if c]
    run_score(args.checkpoint, args.input, args.output, args.batch_size, passthrough)


def _evaluate(args: argparse.Namespace) -> None:
    from pipeline.score import run_evaluate

    run_evaluate(args.checkpoint, args.data, args.ranking, args.batch_size)


def _report(args: argparse.Namespace) -> None:
    import json

    from pipeline.metrics import format_metrics_table, latest_tables

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossrank",
        description="Cross-domain long-sequence ranking on TorchRec: prepare data, check feature specs, train.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser(
        "prepare", help="turn raw data into the train/valid/test Parquet of the data contract"
    )
    prep_sub = prep.add_subparsers(dest="source", required=True)
    ml = prep_sub.add_parser(
        "movielens",
        help="GroupLens MovieLens (ml-100k, ml-1m, ml-latest/ml-25m CSV) -> two-domain ranking rows",
        description="One row per rating: candidate = the movie, label = rating >= 4, histories = the user's "
        "strictly earlier ratings per domain; split per user by time (last n-test rows test, n-valid before "
        "them valid).",
    )
    ml.add_argument(
        "src_dir", help="folder with u.data/u.item, ratings.dat/movies.dat or ratings.csv/movies.csv"
    )
    ml.add_argument("out_dir", help="output folder (train/, valid/, test/, summary.json)")
    ml.add_argument("--domains", help="YAML domain map: domain -> list of genres, or '*' for the rest")
    ml.add_argument(
        "--max-len", type=int, default=200, help="keep the most recent N history events (default 200)"
    )
    ml.add_argument("--n-test", type=int, default=10, help="last rows per user for test (default 10)")
    ml.add_argument(
        "--n-valid", type=int, default=10, help="rows per user before test for validation (default 10)"
    )
    ml.add_argument("--row-group-size", type=int, default=32768, help="Parquet rows per row group")
    ml.set_defaults(fn=_prepare_movielens)

    syn = prep_sub.add_parser(
        "synthetic",
        help="synthetic two-domain data with known click probabilities and its oracle AUC",
        description="Users with latent interests split across domains, sticky recurring interests in long "
        "histories, and a known click probability per row: oracle.json holds the oracle AUC per split.",
    )
    syn.add_argument("out_dir", help="output folder (train/, valid/, test/, oracle.json, summary.json)")
    syn.add_argument("--users", type=int, default=2000)
    syn.add_argument("--items-per-domain", type=int, default=1000)
    syn.add_argument("--rows", type=int, default=60000)
    syn.add_argument("--max-len", type=int, default=100)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--row-group-size", type=int, default=16384)
    syn.set_defaults(fn=_prepare_synthetic)

    rk = prep_sub.add_parser(
        "ranking",
        help="the sampled ranking protocol: each user's held-out positive per domain vs N unseen items",
        description="Writes DATA_DIR/ranking/: per user and domain, the latest positive test row and "
        "--negatives items of that domain the user never rated, sharing the positive's context. Train with "
        "data.ranking=DATA_DIR/ranking to get HR@10 and NDCG@10.",
    )
    rk.add_argument("data_dir", help="prepared data (train/, valid/, test/)")
    rk.add_argument("--negatives", type=int, default=99)
    rk.add_argument("--users", type=int, default=0, help="sample this many users (0: all)")
    rk.add_argument("--seed", type=int, default=0)
    rk.set_defaults(fn=_prepare_ranking)

    feat = sub.add_parser("features", help="feature spec tools")
    feat_sub = feat.add_subparsers(dest="action", required=True)
    check = feat_sub.add_parser(
        "check",
        help="validate a feature spec (and data against it), reporting every problem at once",
        description="Checks the spec (tables, domains, kinds, mappings, dims) and, with --data, every Parquet "
        "file: columns, types, empty files and ids beyond their table.",
    )
    check.add_argument("spec", help="feature spec YAML")
    check.add_argument("--data", action="append", help="Parquet file or folder to check (repeatable)")
    check.add_argument("--no-label", action="store_true", help="data has no label column (scoring input)")
    check.set_defaults(fn=_features_check)

    tr = sub.add_parser(
        "train",
        help="train the ranker (1 process, or N under torchrun / TorchX)",
        description="Shards the model with the TorchRec planner for the launcher's world size, trains with "
        "TrainPipelineSparseDist, validates each epoch and writes metrics.json to run_dir.",
    )
    tr.add_argument(
        "--config", help="job config YAML (data, model, train, run_dir); default: built-in defaults"
    )
    tr.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    tr.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue from this checkpoint or run folder (default: the run folder's latest complete "
        "checkpoint, if any; 'never' starts afresh)",
    )
    tr.set_defaults(fn=_train)

    sc = sub.add_parser(
        "score",
        help="offline batch scoring: a checkpoint and Parquet in, Parquet with row id, domain and score out",
        description="Ranks split the input by (file, row group); each unit's scores are written atomically "
        "to OUTPUT/part-NNNNN.parquet and recorded in OUTPUT/_manifest, so a restarted job skips finished "
        "units and every input row gets exactly one output row. Runs on any number of processes, whatever "
        "the world size the checkpoint was written with.",
    )
    sc.add_argument(
        "--checkpoint", required=True, help="a checkpoints/step-N folder, or a run folder (its latest)"
    )
    sc.add_argument("--input", required=True, help="Parquet file or folder (no label needed)")
    sc.add_argument("--output", required=True, help="output folder")
    sc.add_argument("--batch-size", type=int, default=4096)
    sc.add_argument("--passthrough", help="comma-separated input columns copied to the output")
    sc.set_defaults(fn=_score)

    ev = sub.add_parser(
        "evaluate",
        help="the metrics table of a checkpoint on labeled data, without training",
        description="AUC, NE, log loss, calibration, per-domain AUC, |cos| per fusion direction and, with "
        "--ranking, HR@10 / NDCG@10 of the sampled ranking protocol.",
    )
    ev.add_argument(
        "--checkpoint", required=True, help="a checkpoints/step-N folder, or a run folder (its latest)"
    )
    ev.add_argument("--data", required=True, help="labeled Parquet file or folder")
    ev.add_argument("--ranking", help="ranking protocol data (crossrank prepare ranking)")
    ev.add_argument("--batch-size", type=int, default=4096)
    ev.set_defaults(fn=_evaluate)

    rep = sub.add_parser(
        "report", help="print a finished run's metrics table (optionally beside an oracle AUC)"
    )
    rep.add_argument("run_dir", help="the run folder (holds metrics.json)")
    rep.add_argument("--oracle", help="oracle.json of synthetic data: prints the oracle AUC and the ratio")
    rep.set_defaults(fn=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    try:
        code = args.fn(args)
    except InputError as e:
        print(f"crossrank: error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
