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

from crossrank.features.errors import InputError
from crossrank.features.storage import is_uri


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


# Declares that local paths are on storage every node of the job shares (an NFS or Lustre mount).
SHARED_FS_ENV = "CROSSRANK_SHARED_FS"


def check_shared_storage(location: str | os.PathLike[str], setting: str) -> None:
    """An InputError, at the start of a job of several nodes (``WORLD_SIZE > LOCAL_WORLD_SIZE``), when the
    folder it writes (``setting``: ``run_dir``, ``--output``) is a local path: each node would write its ranks'
    shards to its own disk, and no node would hold a whole checkpoint or output. A URI (``s3://``, ``gs://``,
    ``hdfs://``) passes, and so does a local path when ``CROSSRANK_SHARED_FS=1`` declares it shared.

    Example::

        check_shared_storage(cfg.run_dir, "run_dir")  # under torchrun --nnodes 2: needs s3://... or NFS
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    shared = os.environ.get(SHARED_FS_ENV, "").strip().lower() in ("1", "true", "yes")
    if world <= local or shared or is_uri(location):
        return
    raise InputError(
        f"this job runs on several nodes (WORLD_SIZE={world} > LOCAL_WORLD_SIZE={local}), but {setting} is "
        "a local path: every node would write its own ranks' part of each checkpoint or output to its own disk.",
        where=str(location),
        fix=f"set {setting} to shared storage every node reaches (s3://bucket/..., gs://..., hdfs://...; README "
        f'"Object storage"), or, if {location} is a shared mount (NFS, Lustre) on every node, set '
        f"{SHARED_FS_ENV}=1 in the job's environment.",
    )


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


def gather_to_main(t: torch.Tensor, ctx: DistContext) -> torch.Tensor | None:
    """Concatenate a 1-d tensor of any length from every rank (rank order) on rank 0 only; ``None``
    elsewhere. Memory O(total) on rank 0, O(own + largest) on the others (not O(total) on every rank)."""
    if ctx.world_size == 1:
        return t
    sizes = all_gather_cat(torch.tensor([t.numel()], dtype=torch.int64, device=ctx.device), ctx).tolist()
    padded = torch.zeros(max(sizes), dtype=t.dtype, device=ctx.device)
    padded[: t.numel()] = t
    parts = [torch.empty_like(padded) for _ in sizes] if ctx.is_main else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).cpu()


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
