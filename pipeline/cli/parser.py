"""The ``crossrank`` argument parser: one function per subcommand, each naming its handler in ``commands``."""

from __future__ import annotations

import argparse

from crossrank.pipeline.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossrank",
        description="Cross-domain long-sequence ranking on TorchRec: prepare data, check feature specs, train.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_features(sub)
    _add_train(sub)
    _add_score(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_plan(sub)
    return parser


def _add_prepare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prep = sub.add_parser(
        "prepare", help="turn raw data into the train/valid/test Parquet of the data contract"
    )
    prep_sub = prep.add_subparsers(dest="source", required=True)
    _add_prepare_movielens(prep_sub)
    _add_prepare_synthetic(prep_sub)
    _add_prepare_ranking(prep_sub)


def _add_prepare_movielens(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ml = sub.add_parser(
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
    ml.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR even when it is not empty and not an earlier output of this command (refused otherwise)",
    )
    ml.set_defaults(fn=commands.prepare_movielens)


def _add_prepare_synthetic(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    syn = sub.add_parser(
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
    syn.add_argument(
        "--domain-medians",
        type=float,
        nargs="+",
        default=[],
        metavar="N",
        help="median events per user in each domain, e.g. 4 400: a sparse first domain (default max-len / 2 each)",
    )
    syn.add_argument(
        "--days",
        type=int,
        default=1,
        help="cut the rows into N consecutive days: OUT/date=YYYY-MM-DD/{train,valid,test}/ (default 1)",
    )
    syn.add_argument("--start-date", default="2026-11-20", help="the first day with --days (YYYY-MM-DD)")
    syn.add_argument(
        "--new-item-frac",
        type=float,
        default=0.0,
        help="with --days: share of each domain's item ids hidden from day 1 (they launch on day 2)",
    )
    syn.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT_DIR even when it is not empty and not an earlier output of this command (refused otherwise)",
    )
    syn.set_defaults(fn=commands.prepare_synthetic)


def _add_prepare_ranking(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rk = sub.add_parser(
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
    rk.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DATA_DIR/ranking even when it is not empty and not an earlier output of this command (refused otherwise)",
    )
    rk.set_defaults(fn=commands.prepare_ranking)


def _add_features(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``crossrank features check SPEC [--data PATH... [--data PATH...]] [--reference PATH...] [--fit [--fit-output NEW]]``."""
    feat = sub.add_parser("features", help="feature spec tools")
    feat_sub = feat.add_subparsers(dest="action", required=True)
    check = feat_sub.add_parser(
        "check",
        help="validate a feature spec (and data against it), reporting every problem at once",
        description="Checks the spec (tables, domains, kinds, mappings, dims) and, with --data, every Parquet "
        "file: columns, types, empty files, the pre-flight train/score run from the Parquet statistics, and "
        "every row group's values by the checks train/score apply. For features with `mapping: hash` it "
        "prints a table: distinct ids, table rows they land on, the collision rate (beside that of a uniformly "
        "random map, to size num_embeddings) and, with --reference, the ids and occurrences unseen there.",
    )
    check.add_argument("spec", help="feature spec YAML")
    check.add_argument(
        "--data",
        action="append",
        nargs="+",
        metavar="PATH",
        help="Parquet file(s), folder(s) or glob(s) checked as one data set; repeat the flag to check "
        "several data sets separately",
    )
    check.add_argument(
        "--reference",
        nargs="+",
        metavar="PATH",
        help="data to compare the hash-mapped ids against (e.g. the train split when checking valid): "
        "adds the share of ids and of occurrences not seen there",
    )
    check.add_argument("--no-label", action="store_true", help="data has no label column (scoring input)")
    check.add_argument(
        "--fit",
        action="store_true",
        help="compute from the one --data set (the training data) the mean/std of every `transform: "
        "standardize` feature and the vocabulary file of every `vocab` mapping (most frequent first), and "
        "write them: the statistics into the spec's YAML (comments kept) and the files next to it",
    )
    check.add_argument(
        "--fit-output",
        metavar="NEW_SPEC",
        help="with --fit, write the completed spec (and its vocabulary files, next to it) here instead of "
        "updating SPEC in place",
    )
    check.set_defaults(fn=commands.features_check)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    tr.add_argument(
        "--init-from",
        metavar="CHECKPOINT_OR_RUN_DIR",
        help="warm start a new run from another run's checkpoint (a run folder: its best, else latest "
        "checkpoint): matching weights are loaded, new features/tables keep their initialiser, grown tables "
        "keep their common rows; step, epoch and metrics start fresh. A resumable run resumes instead",
    )
    tr.add_argument(
        "--init-optimizer",
        action="store_true",
        help="with --init-from, also load the optimizer state of the loaded weights",
    )
    tr.set_defaults(fn=commands.train)


def _add_score(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sc = sub.add_parser(
        "score",
        help="offline batch scoring: a checkpoint and Parquet in, Parquet with row id, domain and score out",
        description="Ranks split the input by (file, row group); each unit's scores are written atomically "
        "to OUTPUT/part-NNNNN.parquet and recorded in OUTPUT/_manifest with the unit's file identity and the "
        "checkpoint's, so a restarted job skips finished units, rescores changed ones and drops those gone: "
        "every current input row gets exactly one output row. Runs on any number of processes, whatever "
        "the world size the checkpoint was written with.",
    )
    sc.add_argument(
        "--checkpoint", required=True, help="a checkpoints/step-N folder, or a run folder (its latest)"
    )
    sc.add_argument("--input", required=True, help="Parquet file or folder (no label needed)")
    sc.add_argument("--output", required=True, help="output folder")
    sc.add_argument("--batch-size", type=int, default=4096)
    sc.add_argument("--passthrough", help="comma-separated input columns copied to the output")
    sc.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the scores in OUTPUT when they were written with another checkpoint, input or "
        "passthrough list (refused otherwise)",
    )
    sc.add_argument(
        "--row-by-row",
        action="store_true",
        help="encode every row's history itself (default: the rows of a batch that share their histories, "
        "e.g. a user's candidates, share one history encoding; the scores are equal to float rounding)",
    )
    sc.set_defaults(fn=commands.score)


def _add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    ev.add_argument(
        "--row-by-row",
        action="store_true",
        help="encode every row's history itself (default: the rows of a batch that share their histories, "
        "e.g. a user's candidates, share one history encoding; the scores are equal to float rounding)",
    )
    ev.set_defaults(fn=commands.evaluate)


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser(
        "report", help="print a finished run's metrics table (optionally beside an oracle AUC)"
    )
    rep.add_argument("run_dir", help="the run folder (holds metrics.json)")
    rep.add_argument("--oracle", help="oracle.json of synthetic data: prints the oracle AUC and the ratio")
    rep.set_defaults(fn=commands.report)


def _add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pl = sub.add_parser(
        "plan",
        help="the TorchRec sharding plan and per-rank memory of a spec on a simulated GPU cluster (no GPU needed)",
        description="Builds the model on the meta device (nothing is allocated) with the config's model and "
        "sparse optimizer, runs TorchRec's EmbeddingShardingPlanner on a simulated CUDA topology of HOSTS x "
        "GPUS_PER_HOST devices, and prints per table the sharding type, compute kernel and ranks, and per "
        "rank the planner's HBM / DDR estimate; exits with 2 and the tables' sizes when they do not fit.",
    )
    pl.add_argument("spec", help="feature spec YAML")
    pl.add_argument(
        "--config", help="job config YAML: its model section (and train.sparse_optimizer) is planned"
    )
    pl.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value"
    )
    pl.add_argument("--hosts", type=int, required=True, help="number of hosts")
    pl.add_argument("--gpus-per-host", type=int, required=True, help="GPUs per host (local world size)")
    pl.add_argument("--hbm-gb", type=float, default=80.0, help="HBM per GPU in GiB (default 80)")
    pl.add_argument(
        "--ddr-gb", type=float, default=128.0, help="host memory per GPU rank in GiB (default 128)"
    )
    pl.add_argument("--batch-size", type=int, help="rows per batch per rank (default: the config's data)")
    pl.add_argument(
        "--rows",
        action="extend",
        nargs="+",
        default=[],
        metavar="TABLE=N",
        help="what-if: plan TABLE with N rows instead of the spec's num_embeddings (e.g. item_A=2e9)",
    )
    pl.set_defaults(fn=commands.plan)
