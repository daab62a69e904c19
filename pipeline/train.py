"""The training job: shard the ranker with the TorchRec planner, train with ``TrainPipelineSparseDist``,
validate each epoch, test at the end, write metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad
from tqdm import tqdm

from features.errors import InputError
from features.spec import FeatureSpec, load_spec
from models.ranker import RankerTrain, build_ranker, embedding_modules
from pipeline.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from pipeline.config import JobConfig
from pipeline.distributed import DistContext, all_gather_cat, all_reduce_max, init_distributed
from pipeline.metrics import compute_metrics, format_metrics_table, latest_tables
from pipeline.parquet_out import write_json_atomic
from pipeline.ranking import ranking_metrics
from pipeline.reader import ParquetBatchReader

SPARSE_OPTIMIZER_CLASSES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "rowwise_adagrad": (RowWiseAdagrad, {}),
    "adagrad": (torch.optim.Adagrad, {}),
    "adam": (torch.optim.Adam, {}),
    "sgd": (torch.optim.SGD, {}),
}


@dataclass
class ShardedRanker:
    """The sharded training model and what was decided building it."""

    model: DistributedModelParallel
    optimizer: torch.optim.Optimizer
    plan: ShardingPlan
    params: dict[str, int]
    directions: list[str]  # orthogonality columns of the model's ``ortho`` output


def build_sharded_model(spec: FeatureSpec, cfg: JobConfig, ctx: DistContext) -> ShardedRanker:
    """Ranker with meta-device tables -> planner (for this world size and device) -> DMP, with a fused
    in-backward sparse optimizer and an Adam dense optimizer combined into one."""
    torch.manual_seed(cfg.train.seed)
    try:
        ranker, params = build_ranker(spec, cfg.model, device=torch.device("meta"))
    except ValueError as e:  # hyper-parameters that do not fit the spec (e.g. D not divisible by heads)
        raise InputError(
            str(e), where=f"model section with spec {spec.path}", fix="adjust model.encoder."
        ) from None
    model = RankerTrain(ranker)
    opt_cls, opt_kwargs = SPARSE_OPTIMIZER_CLASSES[cfg.train.sparse_optimizer]
    # Every TorchRec table (features and interest memories) gets the fused sparse optimizer.
    sparse_params = [p for m in embedding_modules(ranker) for p in m.parameters()]
    apply_optimizer_in_backward(opt_cls, sparse_params, {"lr": cfg.train.sparse_lr, **opt_kwargs})

    planner = EmbeddingShardingPlanner(
        topology=TopologyFactory.create_topology(
            TrainerConfig(world_size=ctx.world_size),
            kernel_config=KernelConfig(compute_device=ctx.device.type),
        ),
        batch_size=cfg.data.batch_size,
        storage_reservation=FixedPercentageStorageReservation(0.15),
    )
    sharders = get_default_sharders()
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda ps: torch.optim.Adam(ps, lr=cfg.train.dense_lr),
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
    return ShardedRanker(dmp, optimizer, plan, params, ranker.orthogonality_directions)


def describe_plan(plan: ShardingPlan) -> dict[str, str]:
    """table -> "sharding_type on ranks [...]" (for the log and the run folder)."""
    out = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            ranks = sorted(
                {
                    r
                    for s in (ps.sharding_spec.shards if ps.sharding_spec else [])
                    for r in [s.placement.rank()]
                }
            )
            out[table] = f"{ps.sharding_type} on ranks {ranks or ps.ranks}"
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, reader: ParquetBatchReader, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Every rank runs the same number of (padded) batches; predictions of all ranks are gathered on every
    rank: ``logits, labels, weights, domains, ortho, row_ids``."""
    was_training = model.training
    model.eval()
    steps = all_reduce_max(reader.num_batches, ctx)
    outs: list[tuple[torch.Tensor, ...]] = []
    for batch in reader.batches(num_batches=steps):
        batch = batch.to(ctx.device)
        _, (_, logits, labels, weights, domains, ortho) = model(batch)
        outs.append((logits.float(), labels.float(), weights.float(), domains, ortho.float(), batch.row_ids))
    model.train(was_training)
    names = ("logits", "labels", "weights", "domains", "ortho", "row_ids")
    return {
        n: all_gather_cat(torch.cat(c), ctx).cpu()
        for n, c in zip(names, zip(*outs, strict=True), strict=True)
    }


def evaluate(
    model: torch.nn.Module,
    reader: ParquetBatchReader,
    spec: FeatureSpec,
    ctx: DistContext,
    directions: list[str],
) -> dict[str, float]:
    """AUC, NE, log loss, calibration, per-domain AUC and mean |cos(X, X')| per fusion direction."""
    p = predict(model, reader, ctx)
    metrics = compute_metrics(
        p["logits"], p["labels"], p["weights"], p["domains"], domain_names=spec.domain_names
    )
    keep = p["weights"] > 0
    for i, direction in enumerate(directions):  # mean over real rows and slots
        metrics[f"ortho/{direction}"] = float(p["ortho"][keep, i].mean())
    return metrics


def evaluate_ranking(
    model: torch.nn.Module, reader: ParquetBatchReader, spec: FeatureSpec, ctx: DistContext, group_size: int
) -> dict[str, float]:
    """HR@10 / NDCG@10 on the sampled ranking protocol (``crossrank prepare ranking``)."""
    p = predict(model, reader, ctx)
    keep = p["weights"] > 0
    return ranking_metrics(
        p["logits"][keep], p["row_ids"][keep], p["domains"][keep], group_size, spec.domain_names
    )


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


def train(cfg: JobConfig) -> TrainResult:
    """Run a training job in this process (one rank of possibly many); returns the same result on every rank."""
    ctx = init_distributed()
    spec = load_spec(cfg.data.spec)

    def reader(path: str, batch_size: int, shuffle: bool) -> ParquetBatchReader:
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

    # Open every split first: bad input fails before any compute.
    train_reader = reader(cfg.data.train, cfg.data.batch_size, True)
    valid_reader = reader(cfg.data.valid, cfg.data.eval_batch_size, False) if cfg.data.valid else None
    test_reader = reader(cfg.data.test, cfg.data.eval_batch_size, False) if cfg.data.test else None

    built = build_sharded_model(spec, cfg, ctx)
    model, params = built.model, built.params
    result = TrainResult(params=params, world_size=ctx.world_size, plan=describe_plan(built.plan))
    if ctx.is_main:
        print(
            f"crossrank train: {ctx.world_size} process(es) on {ctx.device} ({ctx.backend}); parameters {params}"
        )
        for table, where in result.plan.items():
            print(f"  table {table}: {where}")

    start_epoch, start_step, prior_wall = 0, 0, 0.0
    window: list[float] = []
    resume_from = _resume_source(cfg)
    if resume_from is not None:
        t_load = time.perf_counter()
        meta = load_checkpoint(resume_from, model, built.optimizer, ctx)
        result.checkpoint_load_s = time.perf_counter() - t_load
        start_epoch, start_step = meta["epoch"], meta["epoch_step"]
        saved = meta["result"]
        result.loss_curve, result.ortho_curve, result.valid = (
            saved["loss_curve"],
            saved["ortho_curve"],
            saved["valid"],
        )
        result.steps, prior_wall, window = saved["steps"], saved["wall_s"], saved["window"]
        if ctx.is_main:
            print(
                f"resumed from {resume_from} (epoch {start_epoch}, step {start_step} of it) in {result.checkpoint_load_s:.1f}s"
            )

    def checkpoint(epoch: int, epoch_step: int) -> None:
        state = {
            "epoch": epoch,
            "epoch_step": epoch_step,
            "config": cfg.to_dict(),
            "result": {
                "loss_curve": result.loss_curve,
                "ortho_curve": result.ortho_curve,
                "valid": result.valid,
                "steps": result.steps,
                "wall_s": prior_wall + time.perf_counter() - start,
                "window": window,
            },
        }
        t_save = time.perf_counter()
        path = save_checkpoint(
            cfg.run_dir,
            result.steps,
            model,
            built.optimizer,
            state,
            spec.path,
            ctx,
            cfg.train.keep_checkpoints,
        )
        result.checkpoint_save_s.append(time.perf_counter() - t_save)
        if ctx.is_main:
            tqdm.write(f"checkpoint {path} written in {result.checkpoint_save_s[-1]:.1f}s")

    pipeline = TrainPipelineSparseDist(model, built.optimizer, ctx.device)
    start = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        steps = all_reduce_max(train_reader.num_batches, ctx)
        if cfg.train.max_steps:
            steps = min(steps, cfg.train.max_steps)
        skip = start_step if epoch == start_epoch else 0
        batches = iter(train_reader.batches(epoch=epoch, num_batches=steps, skip=skip))
        bar = tqdm(total=steps, initial=skip, desc=f"epoch {epoch}", disable=not ctx.is_main, mininterval=1.0)
        t_epoch = time.perf_counter()
        model.train()
        for step in range(skip, steps):
            loss, _, _, weights, _, ortho = pipeline.progress(batches)
            window.append(float(loss))  # this rank's loss: enough for progress, no extra collective
            result.steps += 1
            if (step + 1) % cfg.train.log_every == 0 or step + 1 == steps:
                result.loss_curve.append(sum(window) / len(window))
                window.clear()
                rate = (
                    (step + 1 - skip) * cfg.data.batch_size * ctx.world_size / (time.perf_counter() - t_epoch)
                )
                postfix = {"loss": f"{result.loss_curve[-1]:.4f}", "samples_per_s": f"{rate:,.0f}"}
                if ortho.shape[1] and bool((weights > 0).any()):  # |cos(X, X')| of this batch, all directions
                    result.ortho_curve.append(float(ortho[weights > 0].mean()))
                    postfix["ortho"] = f"{result.ortho_curve[-1]:.3f}"
                bar.set_postfix(postfix)
            bar.update(1)
            if (
                cfg.train.checkpoint_every
                and result.steps % cfg.train.checkpoint_every == 0
                and step + 1 < steps
            ):
                checkpoint(epoch, step + 1)
        bar.close()
        pipeline.detach()  # hand the model back un-pipelined for evaluation
        if valid_reader is not None:
            result.valid.append(
                {"epoch": epoch, **evaluate(model, valid_reader, spec, ctx, built.directions)}
            )
            if ctx.is_main:
                v = result.valid[-1]
                print(f"epoch {epoch}: valid auc {v['auc']:.4f} ne {v['ne']:.4f} logloss {v['logloss']:.4f}")
    result.wall_s = prior_wall + time.perf_counter() - start
    result.samples_per_s = result.steps * cfg.data.batch_size * ctx.world_size / max(result.wall_s, 1e-9)
    checkpoint(cfg.train.epochs, 0)
    if test_reader is not None:
        result.test = evaluate(model, test_reader, spec, ctx, built.directions)
    if cfg.data.ranking:
        ranking_reader = reader(cfg.data.ranking, cfg.data.eval_batch_size, False)
        result.test.update(evaluate_ranking(model, ranking_reader, spec, ctx, cfg.data.ranking_group_size))
    result.reader = {"oov": train_reader.stats.oov, "dense_filled": train_reader.stats.dense_filled}

    if ctx.is_main:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json_atomic(result.__dict__, run_dir / "metrics.json")
        tables = latest_tables(result.__dict__)
        if tables:
            print(format_metrics_table(tables))
        print(
            f"wall {result.wall_s:.1f}s, {result.samples_per_s:,.0f} samples/s; metrics in {run_dir / 'metrics.json'}"
        )
    return result
