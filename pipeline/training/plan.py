"""``crossrank plan``: TorchRec's sharding planner on a simulated CUDA cluster, without a GPU or a process group.

The ranker is built on the meta device (no table memory is allocated, however large), with the fused sparse
optimizer of the job config attached as in training, and planned with the planner settings of
:func:`crossrank.pipeline.training.sharding.build_sharded_model` on ``Topology(world_size=H*G,
compute_device="cuda", local_world_size=G, hbm_cap, ddr_cap)``. The result is the plan per table (sharding
type, compute kernel, ranks) and the memory per rank from the planner's own storage estimates
(``ShardingOption.shards[*].storage``: weights, optimizer state and input/output buffers), or an
:class:`InputError` naming the tables and what to change when they do not fit.

Example::

    cfg = planning_config("configs/production_example.yaml")
    spec = load_spec("features/specs/production_example.yaml")
    report = plan_cluster(spec, cfg, Cluster(hosts=16, gpus_per_host=8, hbm_gb=80))
    print(report.format())
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    PlannerError,
    Stats,
    TopologyFactory,
    TrainerConfig,
)
from torchrec.distributed.sharding_plan import get_default_sharders
from torchrec.modules.embedding_configs import data_type_to_dtype
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec
from crossrank.models.ranker import RankerTrain, build_ranker, embedding_modules
from crossrank.pipeline.training.config import JobConfig, load_config
from crossrank.pipeline.training.sharding import SPARSE_OPTIMIZER_CLASSES, STORAGE_RESERVATION

GIB = 1024**3


@dataclass(frozen=True)
class Cluster:
    """The simulated cluster: ``hosts`` x ``gpus_per_host`` CUDA devices, each with ``hbm_gb`` GiB of HBM and
    ``ddr_gb`` GiB of host memory (TorchRec counts DDR per rank), planned for ``batch_size`` rows per rank."""

    hosts: int
    gpus_per_host: int
    hbm_gb: float = 80.0
    ddr_gb: float = 128.0
    batch_size: int = 512

    @property
    def world_size(self) -> int:
        """H x G ranks."""
        return self.hosts * self.gpus_per_host

    def describe(self) -> str:
        """One line: the cluster's size, memory per rank and batch size."""
        return (
            f"{self.hosts} host(s) x {self.gpus_per_host} GPU(s) = {self.world_size} rank(s), "
            f"{self.hbm_gb:g} GiB HBM ({self.hbm_gb * (1 - STORAGE_RESERVATION):.1f} GiB for tables after the "
            f"{STORAGE_RESERVATION:.0%} reservation) and {self.ddr_gb:g} GiB DDR per rank, "
            f"batch size {self.batch_size} per rank"
        )


@dataclass(frozen=True)
class TableSize:
    """A table's bytes by arithmetic: rows x dim x element size, and the optimizer state on top."""

    name: str
    rows: int
    dim: int
    dtype: str
    weights: int
    optimizer: int

    @property
    def total(self) -> int:
        """Weights plus optimizer state."""
        return self.weights + self.optimizer


@dataclass(frozen=True)
class TablePlan:
    """One table in the plan: how it is sharded and the planner's storage estimate summed over its shards."""

    size: TableSize
    sharding_type: str
    compute_kernel: str
    ranks: list[int]
    hbm: int
    ddr: int


@dataclass(frozen=True)
class PlanReport:
    """A planned cluster: the TorchRec plan, per-table placement and per-rank memory (bytes)."""

    cluster: Cluster
    tables: list[TablePlan]
    rank_hbm: list[int]
    rank_ddr: list[int]
    dense_bytes: int
    plan: Any  # torchrec ShardingPlan
    options: list[Any]  # the planner's chosen ShardingOptions (with shard storage and ranks)

    def format(self) -> str:
        """The plan as printed by ``crossrank plan``."""
        return format_report(self)


def parse_rows(items: list[str]) -> dict[str, int]:
    """``TABLE=N`` overrides (N may be written ``2000000000``, ``2_000_000_000`` or ``2e9``)."""
    rows: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            number = math.nan
        if not sep or not name or not number.is_integer() or number < 2:
            raise InputError(
                f"--rows {item!r} is not TABLE=N with an integer N >= 2.", fix="e.g. --rows item_A=2e9."
            )
        rows[name] = int(number)
    return rows


def with_rows(spec: FeatureSpec, rows: dict[str, int]) -> FeatureSpec:
    """The spec with the ``num_embeddings`` of the tables named in ``rows`` replaced (what-if planning)."""
    names = [t.name for t in spec.tables]
    unknown = sorted(set(rows) - set(names))
    if unknown:
        raise InputError(
            f"--rows names table(s) {unknown} that the spec does not declare (its tables: {names}).",
            spec=spec.path,
            fix="use a table name of the spec; the interest memory tables are sized by "
            "model.encoder.memory_size (--set model.encoder.memory_size=N).",
        )
    tables = tuple(
        dataclasses.replace(t, num_embeddings=rows.get(t.name, t.num_embeddings)) for t in spec.tables
    )
    return dataclasses.replace(spec, tables=tables)


def planning_config(path: str | None, overrides: list[str] | None = None) -> JobConfig:
    """The job config whose ``model`` and ``train.sparse_optimizer`` are planned (built-in defaults without a
    file). Planning reads no data, so ``data.train`` is replaced by a placeholder (it need not be set)."""
    return load_config(path, ["data.train=(not read by crossrank plan)", *(overrides or [])])


def planning_model(spec: FeatureSpec, cfg: JobConfig) -> nn.Module:
    """The training module on the meta device with the job's fused sparse optimizer on every table (as
    ``build_sharded_model`` does), so that the planner counts the optimizer state as in training."""
    try:
        ranker, _ = build_ranker(spec, cfg.model, device=torch.device("meta"))
    except ValueError as e:
        raise InputError(
            str(e), where=f"model section with spec {spec.path}", fix="adjust model.encoder."
        ) from None
    opt_cls, opt_kwargs = SPARSE_OPTIMIZER_CLASSES[cfg.train.sparse_optimizer]
    tables = [p for m in embedding_modules(ranker) for p in m.parameters()]
    assert all(p.is_meta for p in tables), "embedding tables must stay on the meta device"
    apply_optimizer_in_backward(opt_cls, tables, {"lr": cfg.train.sparse_lr, **opt_kwargs})
    return RankerTrain(ranker)


def table_sizes(model: nn.Module, sparse_optimizer: str) -> list[TableSize]:
    """Every TorchRec table of ``model`` (feature tables and interest memories) by arithmetic."""
    sizes = []
    for module in embedding_modules(model):
        pooled = isinstance(module, EmbeddingBagCollection)
        configs = getattr(module, "embedding_bag_configs" if pooled else "embedding_configs")()
        for c in configs:
            dtype = data_type_to_dtype(c.data_type)
            weights = c.num_embeddings * c.embedding_dim * dtype.itemsize
            optimizer = optimizer_bytes(weights, c.embedding_dim, sparse_optimizer)
            sizes.append(
                TableSize(
                    c.name,
                    c.num_embeddings,
                    c.embedding_dim,
                    str(dtype).removeprefix("torch."),
                    weights,
                    optimizer,
                )
            )
    return sizes


def optimizer_bytes(weights: int, dim: int, sparse_optimizer: str) -> int:
    """The optimizer state of a table of ``weights`` bytes as TorchRec's planner counts it
    (``shard_estimators._get_optimizer_multipler``): row-wise Adagrad 1/dim of the weights (one value per
    row), Adagrad 1x, Adam 2x, SGD nothing."""
    multiplier = {"rowwise_adagrad": 1 / dim, "adagrad": 1.0, "adam": 2.0, "sgd": 0.0}[sparse_optimizer]
    return math.ceil(weights * multiplier)


def simulated_topology(cluster: Cluster) -> Any:
    """A CUDA ``Topology`` of ``cluster`` built through TorchRec's ``TopologyFactory`` (no device needed)."""
    return TopologyFactory.create_topology(
        TrainerConfig(
            world_size=cluster.world_size,
            local_world_size=cluster.gpus_per_host,
            hbm_cap_bytes=int(cluster.hbm_gb * GIB),
            ddr_cap_bytes=int(cluster.ddr_gb * GIB),
        ),
        kernel_config=KernelConfig(compute_device="cuda"),
    )


def _check_cluster(cluster: Cluster) -> None:
    """Positive sizes, or an InputError naming the flag."""
    for flag, value in [
        ("--hosts", cluster.hosts),
        ("--gpus-per-host", cluster.gpus_per_host),
        ("--hbm-gb", cluster.hbm_gb),
        ("--ddr-gb", cluster.ddr_gb),
        ("--batch-size", cluster.batch_size),
    ]:
        if not value > 0:
            raise InputError(f"{flag} must be positive, got {value}.", fix=f"pass a positive {flag}.")


def plan_cluster(spec: FeatureSpec, cfg: JobConfig, cluster: Cluster) -> PlanReport:
    """Plan ``spec`` with ``cfg``'s model and sparse optimizer on the simulated ``cluster``.

    Raises:
        InputError: the tables do not fit (which tables, their sizes, the capacity and what to change).
    """
    _check_cluster(cluster)
    model = planning_model(spec, cfg)
    chosen = ChosenPlan()
    planner = EmbeddingShardingPlanner(
        topology=simulated_topology(cluster),
        batch_size=cluster.batch_size,
        storage_reservation=FixedPercentageStorageReservation(STORAGE_RESERVATION),
        stats=[chosen],
    )
    sizes = table_sizes(model, cfg.train.sparse_optimizer)
    try:
        plan = planner.plan(model, get_default_sharders())
    except PlannerError as e:
        raise no_fit_error(spec, cluster, sizes, cfg.train.sparse_optimizer, e) from None
    dense = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
    return _report(cluster, sizes, plan, chosen.options, dense)


class ChosenPlan(Stats):
    """A TorchRec planner ``Stats`` that keeps the chosen sharding options (shards with rank and storage)
    instead of logging tables."""

    def __init__(self) -> None:
        self.options: list[Any] = []

    def log(self, *args: Any, **kwargs: Any) -> None:
        """Called by the planner once it has a plan (``best_plan``); keeps its sharding options."""
        self.options = list(kwargs["best_plan"])


def _report(
    cluster: Cluster, sizes: list[TableSize], plan: Any, options: list[Any], dense: int
) -> PlanReport:
    """Per-table placement and per-rank HBM / DDR from the shards' storage estimates."""
    by_name = {s.name: s for s in sizes}
    hbm, ddr = [0] * cluster.world_size, [0] * cluster.world_size
    tables = []
    for so in options:
        for shard in so.shards:
            hbm[shard.rank] += shard.storage.hbm
            ddr[shard.rank] += shard.storage.ddr
        tables.append(
            TablePlan(
                size=by_name[so.name],
                sharding_type=so.sharding_type,
                compute_kernel=so.compute_kernel,
                ranks=sorted({s.rank for s in so.shards}),
                hbm=sum(s.storage.hbm for s in so.shards),
                ddr=sum(s.storage.ddr for s in so.shards),
            )
        )
    order = {s.name: i for i, s in enumerate(sizes)}
    tables.sort(key=lambda t: order[t.size.name])
    return PlanReport(cluster, tables, hbm, ddr, dense, plan, options)


def no_fit_error(
    spec: FeatureSpec, cluster: Cluster, sizes: list[TableSize], optimizer: str, error: Exception
) -> InputError:
    """The InputError for a planner failure: the tables by size, the cluster's capacity and the fixes."""
    usable = cluster.hbm_gb * (1 - STORAGE_RESERVATION) * GIB
    need = sum(s.total for s in sizes)
    listed = "; ".join(
        f"{s.name} {s.rows:,} x {s.dim} {s.dtype} = {_size(s.weights)} + {_size(s.optimizer)} {optimizer} state"
        for s in sorted(sizes, key=lambda s: -s.total)
    )
    gpus = math.ceil(need / usable)
    # The planner's last reason, e.g. "Shard of size Storage(hbm=1032002129920, ...) bytes does not fit on
    # any rank. Device memory cap: Storage(...)", with its byte counts in GiB.
    reason = str(error).strip().splitlines()[-1].strip().replace(" bytes does", " does")
    reason = re.sub(r"\b(hbm|ddr|ssd)=(\d+)", lambda m: f"{m[1]}={_size(int(m[2]))}", reason)
    return InputError(
        f"the embedding tables do not fit on {cluster.describe()}. They need {_size(need)} in all ({listed}); "
        f"the cluster offers {_size(usable * cluster.world_size)} of HBM for tables and "
        f"{_size(cluster.ddr_gb * GIB * cluster.world_size)} of DDR. TorchRec's planner: {reason}",
        spec=spec.path,
        fix=f"more hosts or GPUs (about {gpus} GPUs of {cluster.hbm_gb:g} GiB hold every table in HBM, e.g. "
        f"--hosts {math.ceil(gpus / cluster.gpus_per_host)} --gpus-per-host {cluster.gpus_per_host}), "
        "or larger devices (--hbm-gb), or smaller tables (num_embeddings in the spec, or try --rows TABLE=N; "
        "data_type: fp16 halves the weights), or more host memory for UVM caching (--ddr-gb: the planner "
        "already tries the fused_uvm_caching kernel, which keeps a table in DDR and caches hot rows in HBM), "
        "or a smaller --batch-size.",
    )


def _size(n: float) -> str:
    """Bytes in GiB, or MiB below 1 GiB."""
    return f"{n / GIB:,.1f} GiB" if n >= GIB else f"{n / 2**20:,.1f} MiB"


def _gib(n: float) -> str:
    """Bytes in GiB."""
    return f"{n / GIB:,.1f} GiB"


def _ranges(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    for r in ranks:
        if parts and r == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{r}"
        else:
            parts.append(str(r))
    return ",".join(parts)


def format_report(report: PlanReport) -> str:
    """The sharding plan per table, then the memory per rank (ranks with equal figures on one line)."""
    c = report.cluster
    lines = [f"sharding plan for {c.describe()}:", ""]
    lines.append(
        f"{'table':<20}{'rows':>16}{'dim':>5}  {'sharding':<16}{'kernel':<19}{'ranks':<12}{'HBM':>13}{'DDR':>13}"
    )
    for t in report.tables:
        s = t.size
        lines.append(
            f"{s.name:<20}{s.rows:>16,}{s.dim:>5}  {t.sharding_type:<16}{t.compute_kernel:<19}"
            f"{_ranges(t.ranks):<12}{_gib(t.hbm):>13}{_gib(t.ddr):>13}"
        )
    usable = c.hbm_gb * (1 - STORAGE_RESERVATION) * GIB
    lines += [
        "",
        f"memory per rank (tables; {_gib(usable)} HBM usable of {c.hbm_gb:g}, {c.ddr_gb:g} GiB DDR):",
    ]
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for rank, (hbm, ddr) in enumerate(zip(report.rank_hbm, report.rank_ddr, strict=True)):
        groups[(_gib(hbm), _gib(ddr))].append(rank)
    for (hbm_text, ddr_text), ranks in sorted(groups.items(), key=lambda g: g[1][0]):
        lines.append(f"  ranks {_ranges(ranks):<14} HBM {hbm_text:>12}   DDR {ddr_text:>12}")
    peak = max(report.rank_hbm)
    lines += [
        f"peak HBM {_gib(peak)} ({peak / usable:.0%} of the usable {_gib(usable)}); dense parameters "
        f"{report.dense_bytes / 2**20:,.1f} MiB per rank (replicated, within the reservation)",
    ]
    return "\n".join(lines)
