"""The training job: shard the ranker with the TorchRec planner, train with ``TrainPipelineSparseDist``,
validate at each epoch end and every ``train.validate_every`` steps (checkpoint first, keep the best, stop
early), test at the end, write metrics and TensorBoard scalars."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from crossrank.features.errors import InputError
from crossrank.features.files import DataPaths
from crossrank.features.spec import FeatureSpec, load_spec
from crossrank.features.storage import as_path
from crossrank.pipeline.core.atomic import write_json_atomic
from crossrank.pipeline.core.distributed import (
    DistContext,
    all_gather_cat,
    all_reduce_max,
    check_shared_storage,
    init_distributed,
)
from crossrank.pipeline.evaluation.metrics import format_metrics_table, latest_tables
from crossrank.pipeline.evaluation.predict import evaluate, evaluate_ranking
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.oov import epoch_oov_check
from crossrank.pipeline.reading.prefetch import Prefetcher
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.training.checkpoint import (
    BEST_DIR,
    checkpoint_root,
    latest_checkpoint,
    load_checkpoint,
    promote_best,
    resolve_checkpoint,
    save_checkpoint,
    update_meta,
)
from crossrank.pipeline.training.config import SELECT_METRICS, JobConfig
from crossrank.pipeline.training.global_loss import GlobalMeanLoss
from crossrank.pipeline.training.sharding import ShardedRanker, build_sharded_model, describe_plan
from crossrank.pipeline.training.tensorboard import Board, open_board
from crossrank.pipeline.training.warm_start import warm_start


@dataclass
class TrainResult:
    """What a training run measured (also written to ``run_dir/metrics.json``)."""

    valid: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    loss_curve: list[float] = field(default_factory=list)
    ortho_curve: list[float] = field(default_factory=list)
    checkpoint_save_s: list[float] = field(default_factory=list)
    checkpoint_load_s: float = 0.0
    steps: int = 0
    wall_s: float = 0.0
    samples_per_s: float = 0.0
    world_size: int = 1
    plan: dict[str, str] = field(default_factory=dict)
    reader: dict[str, Any] = field(default_factory=dict)
    warm_start: dict[str, Any] = field(default_factory=dict)  # WarmStartReport.to_json() of train.init_from
    # Validation rounds ({epoch, step, value of train.select_metric, improved, rounds_without_improvement}),
    # the best one ({metric, value, step, epoch, path}), the early-stopping counter and when it stopped.
    rounds: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    rounds_without_improvement: int = 0
    stopped_early: dict[str, Any] | None = None
    selection_note: str = ""
    # Which weights ``test`` measured: the best checkpoint's step when validation chose one, else the last.
    test_step: int = 0


def _resume_source(cfg: JobConfig) -> Path | None:
    """The checkpoint to continue from: ``train.resume`` = auto (the run's latest, if any) | never | a path."""
    if cfg.train.resume == "never":
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(cfg.run_dir)
    return resolve_checkpoint(cfg.train.resume, prefer_best=False)  # a run folder: its latest, not its best


def _improves(value: float, best: dict[str, Any] | None, higher_is_better: bool) -> bool:
    """Whether a validation value beats the best so far (strictly; NaN never does)."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best["value"] if higher_is_better else value < best["value"]


def _from_rank0(value: float, ctx: DistContext) -> float:
    """Rank 0's ``value`` on every rank, so that every rank takes the same best / stop decisions."""
    if ctx.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def check_select_metric(cfg: JobConfig, spec: FeatureSpec) -> None:
    """``train.select_metric`` = ``auc/<domain>`` must name a domain of the spec."""
    name = cfg.train.select_metric
    if name.startswith("auc/") and name.removeprefix("auc/") not in spec.domain_names:
        raise InputError(
            f"train.select_metric {name!r} names no domain of the feature spec.",
            where=spec.path,
            fix=f"use one of {[*SELECT_METRICS, *(f'auc/{d}' for d in spec.domain_names)]}.",
        )


def split_reader(
    cfg: JobConfig, spec: FeatureSpec, ctx: DistContext, split: str, batch_size: int, shuffle: bool
) -> ParquetBatchReader:
    """This rank's reader of ``data.<split>``; a file-listing error names that field."""
    path: DataPaths = getattr(cfg.data, split)
    try:
        return ParquetBatchReader(
            spec,
            path,
            batch_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            shuffle=shuffle,
            seed=cfg.train.seed,
            shuffle_buffer_mb=cfg.data.shuffle_buffer_mb,
        )
    except InputError as e:
        what = f"{e.what.rstrip('.')} (data.{split})."
        raise InputError(what, where=e.where, fix=e.fix, spec=e.spec) from None


@dataclass
class Splits:
    """Readers of a job's splits, all opened before any compute so that bad input fails first."""

    train: ParquetBatchReader
    valid: ParquetBatchReader | None
    test: ParquetBatchReader | None

    @staticmethod
    def open(cfg: JobConfig, spec: FeatureSpec, ctx: DistContext) -> Splits:
        """``data.train`` (shuffled), ``valid`` and ``test``."""

        def optional(split: str) -> ParquetBatchReader | None:
            if not getattr(cfg.data, split):
                return None
            return split_reader(cfg, spec, ctx, split, cfg.data.eval_batch_size, False)

        train = split_reader(cfg, spec, ctx, "train", cfg.data.batch_size, True)
        return Splits(train, optional("valid"), optional("test"))


@dataclass
class EpochRun:
    """One epoch's loop state: the epoch, its first step (``skip`` after a resume), its length, its bar."""

    epoch: int
    skip: int
    steps: int
    bar: Any
    t0: float = field(default_factory=time.perf_counter)


class Trainer:
    """One rank's training run: resume, the epochs under ``TrainPipelineSparseDist``, checkpoints,
    validation rounds (each epoch end and every ``train.validate_every`` steps) with best-checkpoint
    selection and early stopping, the test split at the end, ``metrics.json`` and TensorBoard scalars.

    Args:
        cfg: the job config.
        spec: the feature spec it names.
        ctx: this process's place in the job.
        splits: the opened readers.
        built: the sharded model and its optimizer.
    """

    def __init__(
        self, cfg: JobConfig, spec: FeatureSpec, ctx: DistContext, splits: Splits, built: ShardedRanker
    ) -> None:
        self.cfg, self.spec, self.ctx, self.splits, self.built = cfg, spec, ctx, splits, built
        self.result = TrainResult(
            params=built.params, world_size=ctx.world_size, plan=describe_plan(built.plan)
        )
        self.start_epoch, self.start_step, self.prior_wall = 0, 0, 0.0
        self.window: list[float] = []  # losses since the last logged point
        self.start = time.perf_counter()
        self.position = (0, 0)  # (epoch, batches of it done) of the current state
        self.saved: tuple[Path, int] | None = None  # this run's checkpoint of the latest state, and its step
        self.due: int | None = None  # the resumed checkpoint was written for this epoch's round, not yet run
        self.board = Board()  # opened by fit()
        self.step_s, self.real_rows = 0.0, 0  # time in training steps and real rows trained (this rank)
        self.loss_scales = GlobalMeanLoss.gather(splits.train.num_rows, cfg.data.batch_size, ctx)

    def announce(self) -> None:
        if self.ctx.is_main:
            ctx = self.ctx
            print(
                f"crossrank train: {ctx.world_size} process(es) on {ctx.device} ({ctx.backend}); parameters {self.built.params}"
            )
            for table, where in self.result.plan.items():
                print(f"  table {table}: {where}")

    def resume(self, source: Path) -> None:
        """Continue the run from ``source``: weights, optimizer state, position and curves."""
        t_load = time.perf_counter()
        meta = load_checkpoint(source, self.built.model, self.built.optimizer, self.ctx)
        result = self.result
        result.checkpoint_load_s = time.perf_counter() - t_load
        self.start_epoch, self.start_step = meta["epoch"], meta["epoch_step"]
        saved = meta["result"]
        result.loss_curve, result.ortho_curve, result.valid = (
            saved["loss_curve"],
            saved["ortho_curve"],
            saved["valid"],
        )
        result.steps, self.prior_wall, self.window = saved["steps"], saved["wall_s"], saved["window"]
        self.restore_selection(meta)
        if source.resolve().parent == checkpoint_root(self.cfg.run_dir).resolve():
            self.saved = (source, result.steps)  # a due validation round can use it as it is
        if self.ctx.is_main:
            print(
                f"resumed from {source} (epoch {self.start_epoch}, step {self.start_step} of it) in {result.checkpoint_load_s:.1f}s"
            )

    def restore_selection(self, meta: dict[str, Any]) -> None:
        """Validation rounds, best and early-stopping counter of a resumed checkpoint (absent in old ones)."""
        saved, result = meta["result"], self.result
        result.rounds, result.best = saved.get("rounds", []), saved.get("best")
        if result.best is not None:  # the run folder may have moved (e.g. mounted elsewhere on a restart)
            result.best["path"] = str(as_path(self.cfg.run_dir) / BEST_DIR)
        result.rounds_without_improvement = saved.get("rounds_without_improvement", 0)
        if result.best is not None and result.best["metric"] != self.cfg.train.select_metric:
            result.best, result.rounds_without_improvement = None, 0  # select_metric changed: start over
        result.stopped_early = saved.get("stopped_early")
        result.warm_start = saved.get("warm_start", {})  # a warm-started run keeps its report on resume
        self.due, self.position = meta.get("validation_due"), (self.start_epoch, self.start_step)

    def warm_start(self, source: str) -> None:
        """Start this new run from another run's weights (``train.init_from``, optionally its optimizer
        state); step, epoch, reader position, RNG and curves stay fresh. The per-key decisions go to the
        log and to ``metrics.json``."""
        train = self.cfg.train
        report = warm_start(
            source, self.built, self.ctx, init_optimizer=train.init_optimizer, strict=train.init_strict
        )
        self.result.warm_start = report.to_json()
        if self.ctx.is_main:
            print(report.format())

    def state(self, epoch: int, epoch_step: int, due: int | None = None) -> dict[str, Any]:
        """A checkpoint's meta: position (``epoch_step`` batches of ``epoch`` done), config, curves and the
        selection state; ``due``: the epoch of a validation round that is to run on this checkpoint and is
        not recorded in it yet."""
        result = self.result
        return {
            "epoch": epoch,
            "epoch_step": epoch_step,
            "validation_due": due,
            "config": self.cfg.to_dict(),
            "result": {
                "loss_curve": result.loss_curve,
                "ortho_curve": result.ortho_curve,
                "valid": result.valid,
                "steps": result.steps,
                "wall_s": self.prior_wall + time.perf_counter() - self.start,
                "window": self.window,
                "rounds": result.rounds,
                "best": result.best,
                "rounds_without_improvement": result.rounds_without_improvement,
                "stopped_early": result.stopped_early,
                "warm_start": result.warm_start,
            },
        }

    def checkpoint(self, epoch: int, epoch_step: int, due: int | None = None) -> Path:
        """Save the model, optimizer and position (``epoch_step`` batches of ``epoch`` done); collective."""
        result = self.result
        self.board.flush()  # TensorBoard holds everything up to this checkpoint (a resume purges the rest)
        t_save = time.perf_counter()
        path = save_checkpoint(
            self.cfg.run_dir,
            result.steps,
            self.built.model,
            self.built.optimizer,
            self.state(epoch, epoch_step, due),
            self.spec.path,
            self.ctx,
            self.cfg.train.keep_checkpoints,
        )
        result.checkpoint_save_s.append(time.perf_counter() - t_save)
        self.saved = (path, result.steps)
        if self.ctx.is_main:
            tqdm.write(f"checkpoint {path} written in {result.checkpoint_save_s[-1]:.1f}s")
        return path

    def current_checkpoint(self) -> Path | None:
        """This run's checkpoint of the current state, if one was written (or resumed from) at this step."""
        if self.saved is not None and self.saved[1] == self.result.steps:
            return self.saved[0]
        return None

    def epoch_steps(self) -> int:
        """Batches per epoch: the most any rank has (shorter ranks pad), capped by ``train.max_steps``."""
        steps = all_reduce_max(self.splits.train.num_batches, self.ctx)
        return min(steps, self.cfg.train.max_steps) if self.cfg.train.max_steps else steps

    def log_point(self, step: int, run: EpochRun, outputs: tuple[Any, ...]) -> dict[str, str]:
        """Close a logging window: mean loss, throughput and the batch's |cos(X, X')|."""
        _, _, _, weights, _, ortho = outputs
        result = self.result
        # A window in which this rank had only padding rows repeats the last point (nan before any).
        last = result.loss_curve[-1] if result.loss_curve else float("nan")
        result.loss_curve.append(sum(self.window) / len(self.window) if self.window else last)
        self.window.clear()
        samples = (step + 1 - run.skip) * self.cfg.data.batch_size * self.ctx.world_size
        rate = samples / (time.perf_counter() - run.t0)
        postfix = {"loss": f"{result.loss_curve[-1]:.4f}", "samples_per_s": f"{rate:,.0f}"}
        board = self.board
        board.scalar("train/loss", result.loss_curve[-1], result.steps)
        board.scalar("train/samples_per_s", rate, result.steps)
        if ortho.shape[1] and bool((weights > 0).any()):  # |cos(X, X')| of this batch, all directions
            result.ortho_curve.append(float(ortho[weights > 0].mean()))
            postfix["ortho"] = f"{result.ortho_curve[-1]:.3f}"
            board.scalar("train/ortho", result.ortho_curve[-1], result.steps)
        for name, lr in self.learning_rates().items() if board.enabled else ():
            board.scalar(f"train/lr/{name}", lr, result.steps)
        return postfix

    def learning_rates(self) -> dict[str, float]:
        """The dense (Adam) and sparse (fused, in-backward) learning rates, read from the optimizers'
        parameter groups (the sparse one from the config if its optimizer exposes none)."""
        fused = self.built.model.fused_optimizer
        rates = {"dense": self.cfg.train.dense_lr, "sparse": self.cfg.train.sparse_lr}
        for _, opt in getattr(self.built.optimizer, "optimizers", []):
            if opt.param_groups and "lr" in opt.param_groups[0]:
                rates["sparse" if opt is fused else "dense"] = float(opt.param_groups[0]["lr"])
        return rates

    def round_ends(self, skip: int, steps: int) -> list[int]:
        """The epoch's mid-epoch validation points (batches of it done): every ``train.validate_every``
        global steps; the epoch's end is not one (its end-of-epoch round follows anyway)."""
        every = self.cfg.train.validate_every
        if not every or self.splits.valid is None:
            return []
        offset = self.result.steps - skip  # the global step after ``k`` batches of this epoch
        return [k for k in range(skip + 1, steps) if (offset + k) % every == 0]

    def train_epoch(self, pipeline: TrainPipelineSparseDist, epoch: int) -> None:
        """The epoch (from the resume position), cut into segments at its mid-epoch validation rounds. Each
        segment feeds the pipeline exactly its own batches, so the pipeline runs dry at its end (no batch in
        flight, as at an epoch end) before the model is detached for the round; the next ``progress()``
        re-attaches it and refills the pipeline. Stops after a round that ends the run early."""
        steps = self.epoch_steps()
        skip = self.start_step if epoch == self.start_epoch else 0
        # Read and converted in a background thread, overlapping the steps (benchmarks/train_throughput.py).
        read = Prefetcher(self.splits.train.batches(epoch=epoch, num_batches=steps, skip=skip))
        batches: Iterator[Batch] = iter(self.loss_scales.apply(read, first_step=skip))
        bar = tqdm(
            total=steps, initial=skip, desc=f"epoch {epoch}", disable=not self.ctx.is_main, mininterval=1.0
        )
        run = EpochRun(epoch, skip, steps, bar)
        self.built.model.train()
        done = skip
        for end in [*self.round_ends(skip, steps), steps]:
            self.train_steps(pipeline, islice(batches, end - done), range(done, end), run)
            pipeline.detach()  # hand the model back un-pipelined for evaluation
            done = end
            if end < steps:
                self.validation_round(epoch, (epoch, end))
                if self.result.stopped_early:
                    break
        read.close()  # an early stop leaves batches read ahead
        bar.close()
        stats = self.splits.train.stats  # OOV ids so far, over all ranks: printed, held to max_oov_fraction
        epoch_oov_check(
            self.spec, stats.oov, stats.ids, self.ctx, epoch=epoch, data="data.train", write=tqdm.write
        )

    def train_steps(
        self, pipeline: TrainPipelineSparseDist, batches: Iterator[Batch], steps: range, run: EpochRun
    ) -> None:
        """Epoch steps ``steps`` on ``batches`` (exactly that many), with logging and periodic checkpoints
        (not at the segment's last step: a validation round or the epoch's end checkpoints there)."""
        cfg, result = self.cfg, self.result
        for step in steps:
            t_step = time.perf_counter()
            outputs = pipeline.progress(batches)
            self.step_s += time.perf_counter() - t_step  # steps only: no validation, no checkpoint
            self.real_rows += int((outputs[3] > 0).sum())  # weights: padding rows are not samples
            # This rank's own mean loss: an estimate of the step's that needs no collective (the validation
            # rounds give exact figures); a rank with only padding rows has none.
            own = self.loss_scales.rank_mean(float(outputs[0]), step)
            self.window.extend([] if own is None else [own])
            result.steps += 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == run.steps:
                run.bar.set_postfix(self.log_point(step, run, outputs))
            run.bar.update(1)
            every = cfg.train.checkpoint_every
            if every and result.steps % every == 0 and step + 1 < steps.stop:
                self.checkpoint(run.epoch, step + 1)

    def validation_round(self, epoch: int, position: tuple[int, int]) -> None:
        """At ``position`` (``(epoch, batches done)``): checkpoint, validate, keep the best, count towards
        early stopping; without a valid split, nothing.

        The checkpoint comes first and says that this round is due, so a failing validation loses no trained
        step (a resume runs the round again). The best copy is made before the checkpoint's meta records the
        round: a crash in between leaves the round due again, never a recorded best that was not copied."""
        self.position = position
        if self.splits.valid is None:
            return
        path = self.current_checkpoint() or self.checkpoint(*position, due=epoch)
        metrics = evaluate(self.built.model, self.splits.valid, self.spec, self.ctx, self.built.directions)
        self.result.valid.append({"epoch": epoch, **metrics})
        improved = self.select(metrics, epoch)
        meta = self.state(*position)
        if improved:
            promote_best(self.cfg.run_dir, path, meta, self.ctx)
        update_meta(path, meta, self.ctx)
        self.due = None
        self.board.metrics("valid", metrics, self.result.steps)
        self.board.flush()
        self.report_round(metrics)

    def select(self, metrics: dict[str, float], epoch: int) -> bool:
        """Record a round's ``train.select_metric`` (rank 0's value, so every rank decides the same): a new
        best resets the patience counter, anything else counts up; ``train.early_stop_patience`` rounds in a
        row without a better value stop the run. Returns whether this round is the new best."""
        train, result = self.cfg.train, self.result
        value = _from_rank0(float(metrics[train.select_metric]), self.ctx)
        improved = _improves(value, result.best, SELECT_METRICS.get(train.select_metric, True))
        step = result.steps
        if improved:
            path = str(as_path(self.cfg.run_dir) / BEST_DIR)
            result.best = {
                "metric": train.select_metric,
                "value": value,
                "step": step,
                "epoch": epoch,
                "path": path,
            }
            result.rounds_without_improvement = 0
        else:
            result.rounds_without_improvement += 1
        result.rounds.append(
            {
                "epoch": epoch,
                "step": step,
                "value": value,
                "improved": improved,
                "rounds_without_improvement": result.rounds_without_improvement,
            }
        )
        patience = train.early_stop_patience
        if patience and result.rounds_without_improvement >= patience:
            result.stopped_early = {"step": step, "epoch": epoch, "patience": patience}
        return improved

    def report_round(self, metrics: dict[str, float]) -> None:
        """The round's line (rank 0), and the early stop if it was one."""
        result = self.result
        if not self.ctx.is_main:
            return
        r, best = result.rounds[-1], result.best
        best_text = f"{best['metric']} {best['value']:.4f} at step {best['step']}" if best else "none yet"
        tqdm.write(
            f"epoch {r['epoch']} step {r['step']}: valid auc {metrics['auc']:.4f} ne {metrics['ne']:.4f} "
            f"logloss {metrics['logloss']:.4f}; best {best_text}"
            + (
                " (new)"
                if r["improved"]
                else f", {r['rounds_without_improvement']} round(s) without a better one"
            )
        )
        if result.stopped_early:
            tqdm.write(
                f"early stop at step {r['step']}: {r['rounds_without_improvement']} validation rounds without a better {self.cfg.train.select_metric}"
            )

    def fit(self) -> None:
        """A validation round the resumed checkpoint is due for, then the remaining epochs, each ending with a
        validation round, until early stopping; then the final checkpoint (unless a round just wrote it)."""
        cfg, result = self.cfg, self.result
        check_select_metric(cfg, self.spec)
        if self.splits.valid is None:
            result.selection_note = (
                "no valid split: no validation rounds, no best checkpoint, no early stopping"
            )
            if self.ctx.is_main:
                print(f"note: {result.selection_note}")
        self.board = open_board(cfg.run_dir, cfg.train.tensorboard, self.ctx, purge_step=result.steps + 1)
        pipeline = TrainPipelineSparseDist(self.built.model, self.built.optimizer, self.ctx.device)
        self.start = time.perf_counter()
        if self.due is not None:
            self.validation_round(self.due, self.position)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            if result.stopped_early:
                break
            self.train_epoch(pipeline, epoch)
            if not result.stopped_early:
                self.validation_round(epoch, (epoch + 1, 0))
        result.wall_s = self.prior_wall + time.perf_counter() - self.start
        # Real rows of all ranks over the slowest rank's step time (this run's steps, not a resumed past).
        counts = all_gather_cat(
            torch.tensor([[float(self.real_rows), self.step_s]], dtype=torch.float64), self.ctx
        )
        result.samples_per_s = float(counts[:, 0].sum() / counts[:, 1].max().clamp(min=1e-9))
        if self.current_checkpoint() is None:
            self.checkpoint(*self.position)

    def test(self) -> None:
        """The test split and, with ``data.ranking``, HR@10 / NDCG@10 of the sampled ranking protocol, on the
        best checkpoint's weights when validation chose one (what ``score`` and ``evaluate`` use), else on the
        last; the final checkpoint is already written, so loading the best loses nothing."""
        cfg, model, result = self.cfg, self.built.model, self.result
        result.test_step = result.steps
        if result.best is not None and result.best["step"] != result.steps:
            load_checkpoint(result.best["path"], model, None, self.ctx)
            result.test_step = int(result.best["step"])
            if self.ctx.is_main:
                print(f"test metrics of the best checkpoint (step {result.test_step})")
        if self.splits.test is not None:
            result.test = evaluate(model, self.splits.test, self.spec, self.ctx, self.built.directions)
        if cfg.data.ranking:
            ranking = split_reader(cfg, self.spec, self.ctx, "ranking", cfg.data.eval_batch_size, False)
            result.test.update(
                evaluate_ranking(model, ranking, self.spec, self.ctx, cfg.data.ranking_group_size)
            )
        stats = self.splits.train.stats
        result.reader = {"oov": stats.oov, "ids": stats.ids, "dense_filled": stats.dense_filled}
        self.board.metrics("test", result.test, result.steps)

    def write(self) -> None:
        """``run_dir/config.yaml`` and ``metrics.json`` (rank 0), and the metrics table."""
        self.board.close()
        if not self.ctx.is_main:
            return
        result, run_dir = self.result, as_path(self.cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        write_json_atomic(result.__dict__, run_dir / "metrics.json")
        tables = latest_tables(result.__dict__)
        if tables:
            print(format_metrics_table(tables))
        print(
            f"wall {result.wall_s:.1f}s, {result.samples_per_s:,.0f} samples/s; metrics in {run_dir / 'metrics.json'}"
        )


def train(cfg: JobConfig) -> TrainResult:
    """Run a training job in this process (one rank of possibly many); returns the same result on every rank."""
    check_shared_storage(cfg.run_dir, "run_dir")  # a job of several nodes needs one shared run folder
    ctx = init_distributed()
    spec = load_spec(cfg.data.spec)
    splits = Splits.open(cfg, spec, ctx)
    trainer = Trainer(cfg, spec, ctx, splits, build_sharded_model(spec, cfg, ctx))
    trainer.announce()
    resume_from = _resume_source(cfg)
    if resume_from is not None:
        trainer.resume(resume_from)
    elif cfg.train.init_from:  # a new run warm-started from another one (a restart resumes instead)
        trainer.warm_start(cfg.train.init_from)
    trainer.fit()
    trainer.test()
    trainer.write()
    return trainer.result
