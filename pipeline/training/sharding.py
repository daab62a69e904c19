"""The sharded ranker: meta-device model -> TorchRec planner for this world size -> DistributedModelParallel,
with a fused in-backward sparse optimizer and an Adam dense optimizer."""

from __future__ import annotations

import linecache
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.distributed.types import ModuleSharder, ShardingPlan
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec
from crossrank.models.ranker import RankerTrain, build_ranker, embedding_modules
from crossrank.pipeline.core.distributed import DistContext
from crossrank.pipeline.training.config import JobConfig

# Share of each device's memory the planner keeps free for activations and buffers (training and `plan`).
STORAGE_RESERVATION = 0.15
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
    except InputError:
        raise
    except ValueError as e:  # hyper-parameters that do not fit the spec (e.g. D not divisible by heads)
        if not _raised_by_model_checks(e):
            raise  # a bug, in crossrank or below it: keep its traceback
        raise InputError(
            str(e), where=f"model section with spec {spec.path}", fix="adjust model.encoder."
        ) from None
    model = RankerTrain(ranker)
    opt_cls, opt_kwargs = SPARSE_OPTIMIZER_CLASSES[cfg.train.sparse_optimizer]
    # Every TorchRec table (features and interest memories) gets the fused sparse optimizer.
    sparse_params = [p for m in embedding_modules(ranker) for p in m.parameters()]
    sparse_kwargs = {"lr": cfg.train.sparse_lr, **opt_kwargs}
    if cfg.train.sparse_weight_decay:
        sparse_kwargs["weight_decay"] = cfg.train.sparse_weight_decay
    apply_optimizer_in_backward(opt_cls, sparse_params, sparse_kwargs)

    planner = EmbeddingShardingPlanner(
        topology=TopologyFactory.create_topology(
            TrainerConfig(world_size=ctx.world_size),
            kernel_config=KernelConfig(compute_device=ctx.device.type),
        ),
        batch_size=cfg.data.batch_size,
        storage_reservation=FixedPercentageStorageReservation(STORAGE_RESERVATION),
    )
    sharders = _sharders(cfg)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module=model, device=ctx.device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda ps: _dense_optimizer(ps, cfg),
    )
    optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
    return ShardedRanker(dmp, optimizer, plan, params, ranker.orthogonality_directions)


def _sharders(cfg: JobConfig) -> list[ModuleSharder[torch.nn.Module]]:
    """TorchRec's default sharders. With ``train.sparse_weight_decay`` the table sharders also pass fbgemm
    the L2 weight-decay mode: the optimizer's ``weight_decay`` alone reaches fbgemm with its mode at NONE,
    i.e. ignored."""
    sharders = get_default_sharders()
    if not cfg.train.sparse_weight_decay:
        return sharders
    from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode

    fused = {"weight_decay_mode": WeightDecayMode.L2}
    own: dict[type, ModuleSharder[Any]] = {
        EmbeddingBagCollectionSharder: EmbeddingBagCollectionSharder(fused_params=fused),
        EmbeddingCollectionSharder: EmbeddingCollectionSharder(fused_params=fused),
    }
    return [own.get(type(s), s) for s in sharders]


def _dense_optimizer(params: Any, cfg: JobConfig) -> torch.optim.Optimizer:
    """Adam, or AdamW (decoupled weight decay) when ``train.dense_weight_decay`` is set."""
    if cfg.train.dense_weight_decay:
        return torch.optim.AdamW(params, lr=cfg.train.dense_lr, weight_decay=cfg.train.dense_weight_decay)
    return torch.optim.Adam(params, lr=cfg.train.dense_lr)


def _raised_by_model_checks(e: ValueError) -> bool:
    """Whether ``e`` comes from a ``raise`` statement of crossrank's model code (its checks of the model
    config against the spec), not from a failing call there or inside torch."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    frame = tb.tb_frame
    line = linecache.getline(frame.f_code.co_filename, tb.tb_lineno).strip()
    return str(frame.f_globals.get("__name__", "")).startswith("crossrank.models.") and line.startswith(
        "raise "
    )


def describe_plan(plan: ShardingPlan) -> dict[str, str]:
    """table -> "sharding_type on ranks [...]" (for the log and the run folder)."""
    out = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():
            ranks = sorted(
                {
                    r
                    for s in (ps.sharding_spec.shards if ps.sharding_spec else [])
                    for r in [s.placement.rank()]
                }
            )
            out[table] = f"{ps.sharding_type} on ranks {ranks or ps.ranks}"
    return out
