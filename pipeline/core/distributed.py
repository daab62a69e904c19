"""Process-group set-up that works the same with no launcher, ``torchrun`` and TorchX."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job.

    Args:
        rank / world_size / local_rank: from the launcher's environment (0 / 1 / 0 without one).
        device: ``cuda:<local_rank>`` when a GPU is present, else ``cpu``.
        backend: ``nccl`` on GPUs, ``gloo`` on CPUs.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistContext:
    """Join (or create, for a single process) the default process group; idempotent."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
        if "OMP_NUM_THREADS" not in os.environ:
            # Processes on one host share its cores. torchrun sets OMP_NUM_THREADS=1, but other launchers
            # (the elastic launcher API) do not, and 2 ranks x all cores each, plus gloo's polling, run
            # several times slower than ranks that split the cores.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            # No launcher: a one-process group so DistributedModelParallel and the planner work unchanged.
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(rank, world_size, local_rank, device, backend)


def all_reduce_max(value: int, ctx: DistContext) -> int:
    """The largest ``value`` over all ranks (how ranks agree on a step count)."""
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_gather_cat(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate an equal-shaped tensor from every rank (rank order)."""
    if ctx.world_size == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def launch_local(nproc: int, workdir: Path, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` local processes with a file rendezvous under ``workdir`` (no fixed
    ports), as TorchRec's own multi-process tests do; returns each rank's return value. For tests and
    benchmarks; jobs go through torchrun / TorchX."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint=str(Path(workdir) / f"rdzv-{uuid.uuid4().hex}"),
        rdzv_configs={"store_type": "file"},
        start_method="spawn",
        monitor_interval=1,
        max_restarts=0,
    )
    return elastic_launch(config, entrypoint=fn)(*args)
