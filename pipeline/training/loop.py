"""The training job: shard the ranker with the TorchRec planner, train with ``TrainPipelineSparseDist``,
validate each epoch, test at the end, write metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from crossrank.features.files import DataPaths
from crossrank.features.spec import FeatureSpec, load_spec
from crossrank.pipeline.core.atomic import write_json_atomic
from crossrank.pipeline.core.distributed import DistContext, all_reduce_max, init_distributed
from crossrank.pipeline.evaluation.metrics import format_metrics_table, latest_tables
from crossrank.pipeline.evaluation.predict import evaluate, evaluate_ranking
from crossrank.pipeline.reading.batch import Batch
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from crossrank.pipeline.training.config import JobConfig
from crossrank.pipeline.training.sharding import ShardedRanker, build_sharded_model, describe_plan


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


def _resume_source(cfg: JobConfig) -> Path | None:
    """The checkpoint to continue from: ``train.resume`` = auto (the run's latest, if any) | never | a path."""
    if cfg.train.resume == "never":
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(cfg.run_dir)
    return resolve_checkpoint(cfg.train.resume)


def split_reader(
    cfg: JobConfig, spec: FeatureSpec, ctx: DistContext, path: DataPaths, batch_size: int, shuffle: bool
) -> ParquetBatchReader:
    """This rank's reader of one split."""
    return ParquetBatchReader(
        spec,
        path,
        batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        shuffle=shuffle,
        seed=cfg.train.seed,
        shuffle_units=cfg.data.shuffle_units,
    )


@dataclass
class Splits:
    """Readers of a job's splits, all opened before any compute so that bad input fails first."""

    train: ParquetBatchReader
    valid: ParquetBatchReader | None
    test: ParquetBatchReader | None

    @staticmethod
    def open(cfg: JobConfig, spec: FeatureSpec, ctx: DistContext) -> Splits:
        """``data.train`` (shuffled), ``valid`` and ``test``."""

        def optional(path: DataPaths) -> ParquetBatchReader | None:
            return split_reader(cfg, spec, ctx, path, cfg.data.eval_batch_size, False) if path else None

        train = split_reader(cfg, spec, ctx, cfg.data.train, cfg.data.batch_size, True)
        return Splits(train, optional(cfg.data.valid), optional(cfg.data.test))


class Trainer:
    """One rank's training run: resume, the epochs under ``TrainPipelineSparseDist``, checkpoints,
    validation after each epoch, the test split at the end and ``metrics.json``.

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
        if self.ctx.is_main:
            print(
                f"resumed from {source} (epoch {self.start_epoch}, step {self.start_step} of it) in {result.checkpoint_load_s:.1f}s"
            )

    def checkpoint(self, epoch: int, epoch_step: int) -> None:
        """Save the model, optimizer and position (``epoch_step`` batches of ``epoch`` done)."""
        result = self.result
        state = {
            "epoch": epoch,
            "epoch_step": epoch_step,
            "config": self.cfg.to_dict(),
            "result": {
                "loss_curve": result.loss_curve,
                "ortho_curve": result.ortho_curve,
                "valid": result.valid,
                "steps": result.steps,
                "wall_s": self.prior_wall + time.perf_counter() - self.start,
                "window": self.window,
            },
        }
        t_save = time.perf_counter()
        path = save_checkpoint(
            self.cfg.run_dir,
            result.steps,
            self.built.model,
            self.built.optimizer,
            state,
            self.spec.path,
            self.ctx,
            self.cfg.train.keep_checkpoints,
        )
        result.checkpoint_save_s.append(time.perf_counter() - t_save)
        if self.ctx.is_main:
            tqdm.write(f"checkpoint {path} written in {result.checkpoint_save_s[-1]:.1f}s")

    def epoch_steps(self) -> int:
        """Batches per epoch: the most any rank has (shorter ranks pad), capped by ``train.max_steps``."""
        steps = all_reduce_max(self.splits.train.num_batches, self.ctx)
        return min(steps, self.cfg.train.max_steps) if self.cfg.train.max_steps else steps

    def log_point(self, step: int, skip: int, t_epoch: float, outputs: tuple[Any, ...]) -> dict[str, str]:
        """Close a logging window: mean loss, throughput and the batch's |cos(X, X')|."""
        _, _, _, weights, _, ortho = outputs
        result = self.result
        result.loss_curve.append(sum(self.window) / len(self.window))
        self.window.clear()
        samples = (step + 1 - skip) * self.cfg.data.batch_size * self.ctx.world_size
        rate = samples / (time.perf_counter() - t_epoch)
        postfix = {"loss": f"{result.loss_curve[-1]:.4f}", "samples_per_s": f"{rate:,.0f}"}
        if ortho.shape[1] and bool((weights > 0).any()):  # |cos(X, X')| of this batch, all directions
            result.ortho_curve.append(float(ortho[weights > 0].mean()))
            postfix["ortho"] = f"{result.ortho_curve[-1]:.3f}"
        return postfix

    def train_epoch(self, pipeline: TrainPipelineSparseDist, epoch: int) -> None:
        cfg, result = self.cfg, self.result
        steps = self.epoch_steps()
        skip = self.start_step if epoch == self.start_epoch else 0
        batches: Iterator[Batch] = iter(self.splits.train.batches(epoch=epoch, num_batches=steps, skip=skip))
        bar = tqdm(
            total=steps, initial=skip, desc=f"epoch {epoch}", disable=not self.ctx.is_main, mininterval=1.0
        )
        t_epoch = time.perf_counter()
        self.built.model.train()
        for step in range(skip, steps):
            outputs = pipeline.progress(batches)
            self.window.append(float(outputs[0]))  # this rank's loss: enough for progress, no collective
            result.steps += 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
                bar.set_postfix(self.log_point(step, skip, t_epoch, outputs))
            bar.update(1)
            every = cfg.train.checkpoint_every
            if every and result.steps % every == 0 and step + 1 < steps:
                self.checkpoint(epoch, step + 1)
        bar.close()

    def validate(self, epoch: int) -> None:
        if self.splits.valid is None:
            return
        metrics = evaluate(self.built.model, self.splits.valid, self.spec, self.ctx, self.built.directions)
        self.result.valid.append({"epoch": epoch, **metrics})
        if self.ctx.is_main:
            v = self.result.valid[-1]
            print(f"epoch {epoch}: valid auc {v['auc']:.4f} ne {v['ne']:.4f} logloss {v['logloss']:.4f}")

    def fit(self) -> None:
        """The remaining epochs, each followed by validation, then the final checkpoint."""
        pipeline = TrainPipelineSparseDist(self.built.model, self.built.optimizer, self.ctx.device)
        self.start = time.perf_counter()
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            self.train_epoch(pipeline, epoch)
            pipeline.detach()  # hand the model back un-pipelined for evaluation
            self.validate(epoch)
        result = self.result
        result.wall_s = self.prior_wall + time.perf_counter() - self.start
        samples = result.steps * self.cfg.data.batch_size * self.ctx.world_size
        result.samples_per_s = samples / max(result.wall_s, 1e-9)
        self.checkpoint(self.cfg.train.epochs, 0)

    def test(self) -> None:
        """The test split and, with ``data.ranking``, HR@10 / NDCG@10 of the sampled ranking protocol."""
        cfg, model, result = self.cfg, self.built.model, self.result
        if self.splits.test is not None:
            result.test = evaluate(model, self.splits.test, self.spec, self.ctx, self.built.directions)
        if cfg.data.ranking:
            ranking = split_reader(
                cfg, self.spec, self.ctx, cfg.data.ranking, cfg.data.eval_batch_size, False
            )
            result.test.update(
                evaluate_ranking(model, ranking, self.spec, self.ctx, cfg.data.ranking_group_size)
            )
        stats = self.splits.train.stats
        result.reader = {"oov": stats.oov, "dense_filled": stats.dense_filled}

    def write(self) -> None:
        """``run_dir/config.yaml`` and ``metrics.json`` (rank 0), and the metrics table."""
        if not self.ctx.is_main:
            return
        result, run_dir = self.result, Path(self.cfg.run_dir)
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
    ctx = init_distributed()
    spec = load_spec(cfg.data.spec)
    splits = Splits.open(cfg, spec, ctx)
    trainer = Trainer(cfg, spec, ctx, splits, build_sharded_model(spec, cfg, ctx))
    trainer.announce()
    resume_from = _resume_source(cfg)
    if resume_from is not None:
        trainer.resume(resume_from)
    trainer.fit()
    trainer.test()
    trainer.write()
    return trainer.result
