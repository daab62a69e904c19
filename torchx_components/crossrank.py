"""TorchX components that launch crossrank jobs, unchanged, on ``local_cwd``, Kubernetes, Slurm or Ray.

This file imports only TorchX: TorchX 0.7 loads a component file by path without its package, so it must
not import crossrank's own modules. The jobs themselves run ``python -m crossrank.pipeline.cli`` inside the image
(or the current directory for ``local_cwd``).

Resources are per node (per TorchX replica). Unless ``--cpu`` / ``--memMB`` are given they scale with the
node: ``CPUS_PER_GPU`` CPUs and ``MEM_MB_PER_GPU`` MB per GPU on GPU nodes, ``CPUS_PER_PROCESS`` and
``MEM_MB_PER_PROCESS`` per process on CPU nodes; ``-h`` (a TorchX named resource) replaces all three.

Examples::

    torchx run -s local_cwd torchx_components/crossrank.py:train --config configs/demo.yaml -j 1x2
    torchx run -s kubernetes --workspace "" -cfg queue=default,namespace=ml \\
        torchx_components/crossrank.py:train --image registry.example.com/crossrank:0.1-cuda \\
        --config configs/ml1m.yaml -j 2x8 --gpu 8 -- train.epochs=4
"""

import os
import shlex
import sys

# TorchX builds the CLI from these annotations: keep typing.Optional/Dict/List, which 0.7 understands.
from typing import Dict, List, Optional, Tuple

from torchx import specs
from torchx.components import dist
from torchx.specs.finder import ComponentValidationException

DEFAULT_IMAGE = "crossrank:latest"
# Per-node defaults (see the module docstring): a GPU process needs CPUs for reading and batching, and host
# memory for its batches and any tables the planner puts in DDR (`crossrank plan` prints it per rank).
CPUS_PER_GPU = 8
MEM_MB_PER_GPU = 60_000
CPUS_PER_PROCESS = 1
MEM_MB_PER_PROCESS = 4096


def _set_args(overrides: Tuple[str, ...]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _find_torchrun() -> str:
    """Shell run before ``torchrun``: when the job's PATH has no ``torchrun`` (``torchx`` called by path,
    without activating its virtual environment: ``local_cwd`` passes on torchx's own PATH), add the folder of
    the Python running torchx, which holds the torchrun of the same installation. In an image, torchrun is on
    PATH and this folder (a path of the submitting machine) is never used. If torchrun is still missing, the
    job fails at once with the fix, on stderr and in torchelastic's error file (what ``torchx status`` shows).
    """
    here = os.path.dirname(os.path.abspath(sys.executable))
    message = (
        f"crossrank: error: torchrun is not on PATH in the job, nor in {here} (next to the Python that ran "
        "torchx). Fix: activate the environment that has torch (source .venv/bin/activate) or, in an image, "
        "install torch."
    )
    error = '{"message": {"message": "%s", "extraInfo": {"timestamp": "%s"}}}'
    return (
        f'command -v torchrun >/dev/null || PATH="$PATH":{shlex.quote(here)}; '
        f'command -v torchrun >/dev/null || {{ m={shlex.quote(message)}; echo "$m" >&2; '
        f'[ -z "$TORCHELASTIC_ERROR_FILE" ] || printf {shlex.quote(error)} "$m" "$(date +%s)" '
        '> "$TORCHELASTIC_ERROR_FILE"; exit 127; }; '
    )


def _node_resources(
    j: str, cpu: Optional[int], gpu: int, memMB: Optional[int], h: Optional[str]
) -> specs.Resource:
    """The resources of one node of a ``-j`` job: ``h`` (a named resource) if given, else ``cpu`` / ``memMB``
    where given and the per-GPU (``gpu > 0``) or per-process defaults otherwise.

    Raises:
        ComponentValidationException: a node with GPUs runs more processes than it has GPUs (every process
            takes ``cuda:LOCAL_RANK``), or ``j`` / ``h`` is malformed.

    Example::

        _node_resources("2x8", None, 8, None, None)  # Resource(cpu=64, gpu=8, memMB=480000)
    """
    try:
        nproc = dist.parse_nnodes(j)[2]
    except ValueError as e:
        raise ComponentValidationException(
            f"crossrank: -j {j!r}: {e}. Fix: -j NNODESxNPROC_PER_NODE, e.g. 2x8."
        ) from None
    if h:
        try:
            resource = specs.resource(h=h)
        except KeyError as e:
            raise ComponentValidationException(
                f"crossrank: -h {h!r}: {e.args[0]}. Fix: -h one of these."
            ) from None
    else:
        units = gpu if gpu > 0 else nproc
        per_cpu, per_mem = (
            (CPUS_PER_GPU, MEM_MB_PER_GPU) if gpu > 0 else (CPUS_PER_PROCESS, MEM_MB_PER_PROCESS)
        )
        resource = specs.Resource(cpu=cpu or units * per_cpu, gpu=gpu, memMB=memMB or units * per_mem)
    if 0 < resource.gpu < nproc:
        raise ComponentValidationException(
            f"crossrank: -j {j} runs {nproc} processes per node but each node has {resource.gpu} GPUs (every "
            f"process takes its own GPU). Fix: -j NNODESx{resource.gpu}, or more GPUs per node (--gpu / -h)."
        )
    return resource


def _ddp(cli_args: List[str], resource: specs.Resource, **launch: object) -> specs.AppDef:
    """``python -m crossrank.pipeline.cli CLI_ARGS`` on every process of a ``dist.ddp`` job (torchrun inside),
    its role named after the command, with ``resource`` per node, finding torchrun when torchx was started
    without its environment on PATH (see ``_find_torchrun``)."""
    try:
        app = dist.ddp(*cli_args, m="crossrank.pipeline.cli", **launch)
    except ValueError as e:  # j and h are checked before: what is left is --mounts
        raise ComponentValidationException(
            f"crossrank: --mounts {launch.get('mounts')}: {e}. Fix: --mounts "
            "type=bind,src=HOST_PATH,dst=JOB_PATH[,readonly] or type=volume,src=CLAIM,dst=JOB_PATH (repeat for more)."
        ) from None
    for role in app.roles:  # entrypoint "bash", args ["-c", "torchrun ..."]
        role.name = cli_args[0]  # pods / Slurm jobs / log folders say train-0, not cli-0
        role.args = [arg if i != 1 else _find_torchrun() + arg for i, arg in enumerate(role.args)]
        # dist.ddp resolves named resources itself; keep their capabilities/devices (instance type, EFA).
        role.resource = resource
    return app


def train(
    *overrides: str,
    config: str = "configs/demo.yaml",
    j: str = "1x2",
    image: str = DEFAULT_IMAGE,
    name: str = "crossrank-train",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
    init_from: Optional[str] = None,
    init_optimizer: bool = False,
) -> specs.AppDef:
    """Train the crossrank ranker: shards its tables over all ``-j`` processes (TorchRec planner,
    DistributedModelParallel), validates each epoch and writes metrics.json to the config's run_dir.

    Args:
        overrides: config overrides ``SECTION.KEY=VALUE`` (after ``--``), e.g. ``train.epochs=3``
        config: job config YAML (data, model, train, run_dir), a path inside the image / working directory
        j: {nnodes}x{nproc_per_node}, e.g. 1x2 locally, 4x8 on a GPU cluster
        image: container image (ignored by local_cwd, which runs in the current directory)
        name: job name
        cpu: CPUs per node (default: 8 per GPU, or 1 per process without GPUs)
        gpu: GPUs per node (processes use cuda + nccl when present, else cpu + gloo)
        memMB: memory per node in MB (default: 60000 per GPU, or 4096 per process without GPUs)
        h: a TorchX named resource for the node (replaces cpu/gpu/memMB), e.g. aws_p4d.24xlarge
        env: extra environment variables
        max_retries: restarts allowed on failure
        rdzv_port: rank 0's rendezvous port (multi-node)
        mounts: volume mounts, e.g. type=bind,src=/data,dst=/data
        init_from: warm start from another run's checkpoint or run folder (new features / tables keep their
            initialiser, grown tables their common rows; step, epoch and metrics start fresh)
        init_optimizer: with init_from, also load the optimizer state of the loaded weights
    """
    args = ["train", "--config", config]
    if init_from:
        args += ["--init-from", init_from]
    if init_optimizer:
        args.append("--init-optimizer")
    return _ddp(
        [*args, *_set_args(overrides)],
        _node_resources(j, cpu, gpu, memMB, h),
        image=image,
        name=name,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def score(
    checkpoint: str,
    input: str,
    output: str,
    passthrough: str = "",
    batch_size: int = 4096,
    overwrite: bool = False,
    j: str = "1x2",
    image: str = DEFAULT_IMAGE,
    name: str = "crossrank-score",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Offline batch scoring: every input row gets exactly one output row (row id, domain, score and the
    passthrough columns), also across crashes and restarts (finished row groups are recorded and skipped).
    Runs on any number of processes, whatever the world size the checkpoint was written with.

    Args:
        checkpoint: a checkpoints/step-N folder, or a run folder (its latest complete checkpoint)
        input: Parquet file or folder to score (no label needed)
        output: output folder (part-NNNNN.parquet per input row group, and _manifest/)
        passthrough: comma-separated input columns copied to the output
        batch_size: rows per forward pass per process
        overwrite: replace the scores in output written with another checkpoint, input or passthrough list
            (refused otherwise)
        j: {nnodes}x{nproc_per_node}
        image: container image (ignored by local_cwd)
        name: job name
        cpu: CPUs per node (default: 8 per GPU, or 1 per process without GPUs)
        gpu: GPUs per node (processes use cuda + nccl when present, else cpu + gloo)
        memMB: memory per node in MB (default: 60000 per GPU, or 4096 per process without GPUs)
        h: a TorchX named resource for the node (replaces cpu/gpu/memMB), e.g. aws_p4d.24xlarge
        env: extra environment variables
        max_retries: restarts allowed on failure (a restart resumes where the last one stopped)
        rdzv_port: rank 0's rendezvous port (multi-node)
        mounts: volume mounts, e.g. type=bind,src=/data,dst=/data
    """
    args = ["score", "--checkpoint", checkpoint, "--input", input, "--output", output]
    args += ["--batch-size", str(batch_size)]
    if passthrough:
        args += ["--passthrough", passthrough]
    if overwrite:
        args.append("--overwrite")
    return _ddp(
        args,
        _node_resources(j, cpu, gpu, memMB, h),
        image=image,
        name=name,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def evaluate(
    checkpoint: str,
    data: str,
    ranking: str = "",
    batch_size: int = 4096,
    j: str = "1x2",
    image: str = DEFAULT_IMAGE,
    name: str = "crossrank-evaluate",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """The metrics table of a checkpoint on labeled data, without training: AUC, NE, log loss, calibration,
    per-domain AUC, |cos| per fusion direction and, with a ranking set, HR@10 / NDCG@10.

    Args:
        checkpoint: a checkpoints/step-N folder, or a run folder (its latest complete checkpoint)
        data: labeled Parquet file or folder
        ranking: ranking protocol data (crossrank prepare ranking), optional
        batch_size: rows per forward pass per process
        j: {nnodes}x{nproc_per_node}
        image: container image (ignored by local_cwd)
        name: job name
        cpu: CPUs per node (default: 8 per GPU, or 1 per process without GPUs)
        gpu: GPUs per node (processes use cuda + nccl when present, else cpu + gloo)
        memMB: memory per node in MB (default: 60000 per GPU, or 4096 per process without GPUs)
        h: a TorchX named resource for the node (replaces cpu/gpu/memMB), e.g. aws_p4d.24xlarge
        env: extra environment variables
        rdzv_port: rank 0's rendezvous port (multi-node)
        mounts: volume mounts, e.g. type=bind,src=/data,dst=/data
    """
    args = ["evaluate", "--checkpoint", checkpoint, "--data", data, "--batch-size", str(batch_size)]
    if ranking:
        args += ["--ranking", ranking]
    return _ddp(
        args,
        _node_resources(j, cpu, gpu, memMB, h),
        image=image,
        name=name,
        j=j,
        env=env,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )
