"""The components' jobs as Kubernetes (Volcano) and Slurm receive them: TorchX dry runs, no cluster needed.

Each test builds a component's AppDef and asks TorchX's own scheduler for the request it would submit, then
checks what a cluster user relies on: nodes, processes per node, the torchrun and crossrank arguments, the
image, the environment, the mounts and the per-node resources.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client import ApiClient
from torchx import specs
from torchx.runner import get_runner
from torchx.specs.finder import ComponentValidationException

from torchx_components import crossrank

IMAGE = "registry.example.com/crossrank:0.1-cuda"
MOUNT = ["type=volume", "src=crossrank-data", "dst=/data"]

# (component call, the crossrank command line every process runs)
JOBS: dict[str, tuple[Callable[..., specs.AppDef], tuple[str, ...], str]] = {
    "train": (
        crossrank.train,
        ("train.epochs=4", "run_dir=s3://bucket/runs/ml1m"),
        "train --config configs/ml1m.yaml --set train.epochs=4 --set run_dir=s3://bucket/runs/ml1m",
    ),
    "evaluate": (
        crossrank.evaluate,
        ("s3://bucket/runs/ml1m", "/data/ml-1m/test"),
        "evaluate --checkpoint s3://bucket/runs/ml1m --data /data/ml-1m/test --batch-size 4096",
    ),
    "score": (
        crossrank.score,
        ("s3://bucket/runs/ml1m", "/data/in", "s3://bucket/scores"),
        "score --checkpoint s3://bucket/runs/ml1m --input /data/in --output s3://bucket/scores --batch-size 4096",
    ),
}


def _app(command: str, **kwargs: Any) -> specs.AppDef:
    fn, args, _ = JOBS[command]
    extra = {"config": "configs/ml1m.yaml"} if command == "train" else {}
    return fn(*args, **extra, image=IMAGE, env={"NCCL_DEBUG": "WARN"}, mounts=MOUNT, **kwargs)


def _kubernetes(app: specs.AppDef) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Volcano job as the API server would receive it (camelCase), and the run config used."""
    with get_runner() as runner:
        info = runner.dryrun(app, "kubernetes", cfg={"queue": "default", "namespace": "ml"}, workspace=None)
    return ApiClient().sanitize_for_serialization(info.request.resource), dict(info._cfg)


def _slurm_script(app: specs.AppDef) -> str:
    with get_runner() as runner:
        info = runner.dryrun(app, "slurm", cfg={"partition": "gpu", "time": "4:00:00"}, workspace=None)
    return info.request.materialize()


@pytest.mark.parametrize("command", list(JOBS))
def test_kubernetes_job(command: str) -> None:
    job, cfg = _kubernetes(_app(command, j="2x8", gpu=8))
    assert cfg["namespace"] == "ml" and job["spec"]["queue"] == "default"
    assert job["spec"]["schedulerName"] == "volcano"
    tasks = job["spec"]["tasks"]
    assert [t["name"] for t in tasks] == [f"{command}-0", f"{command}-1"]  # one task per node
    for i, task in enumerate(tasks):
        assert task["replicas"] == 1
        pod = task["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == IMAGE
        assert container["command"][:2] == ["bash", "-c"]
        cmd = container["command"][2]
        assert "torchrun --rdzv_backend c10d" in cmd and "--nnodes 2 --nproc_per_node 8" in cmd
        # Every node meets at node 0 (Volcano's host list; node 0 itself gets TORCHX_RANK0_HOST=localhost).
        rank0 = "TORCHX_RANK0_HOST" if i == 0 else f"VC_{command.upper()}_0_HOSTS"
        assert f"--rdzv_endpoint ${{{rank0}:=localhost}}:29500" in cmd
        assert cmd.endswith("-m crossrank.pipeline.cli " + JOBS[command][2])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["NCCL_DEBUG"] == "WARN" and env["LOGLEVEL"] == "WARNING"
        limits = container["resources"]["limits"]
        assert limits == {"cpu": "64000m", "memory": "480000M", "nvidia.com/gpu": "8"}
        assert {"mountPath": "/data", "name": "mount-0", "readOnly": False} in container["volumeMounts"]
        assert {"name": "mount-0", "persistentVolumeClaim": {"claimName": "crossrank-data"}} in pod["volumes"]


@pytest.mark.parametrize("command", list(JOBS))
def test_slurm_job(command: str) -> None:
    script = _slurm_script(_app(command, j="4x8", gpu=8))
    heads = re.findall(r"^#SBATCH --job-name=(\S+) (.*)$", script, flags=re.M)
    assert [name for name, _ in heads] == [f"{command}-{i}" for i in range(4)]  # one het group per node
    for _, opts in heads:
        assert "--partition=gpu --time=4:00:00 --ntasks-per-node=1" in opts
        assert "--cpus-per-task=64 --mem=480000 --gpus-per-task=8" in opts
    sruns = script.split("srun ", 1)[1].split(":\\\n")
    assert len(sruns) == 4
    for srun in sruns:
        assert "--export=ALL,NCCL_DEBUG=WARN," in srun
        assert "--rdzv_endpoint ${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500" in srun
        assert "--nnodes 4 --nproc_per_node 8" in srun
        assert "-m crossrank.pipeline.cli " + JOBS[command][2] in srun


def _node(**kwargs: Any) -> specs.Resource:
    return crossrank.train(**kwargs).roles[0].resource


def test_node_resources_scale_with_gpus_or_processes() -> None:
    assert (_node(j="1x4", gpu=4).cpu, _node(j="1x4", gpu=4).memMB) == (32, 240_000)
    assert (_node(j="2x8", gpu=8).cpu, _node(j="2x8", gpu=8).memMB) == (64, 480_000)
    # CPU nodes: per process (1x2 keeps the local defaults, 2 CPUs and 8 GB).
    assert (_node(j="1x2").cpu, _node(j="1x2").memMB, _node(j="1x2").gpu) == (2, 8192, 0)
    assert (_node(j="3x16").cpu, _node(j="3x16").memMB) == (16, 65_536)
    # Explicit values win, each on its own.
    assert (_node(j="1x8", gpu=8, cpu=48).cpu, _node(j="1x8", gpu=8, cpu=48).memMB) == (48, 480_000)
    assert _node(j="1x8", gpu=8, memMB=900_000).memMB == 900_000


def test_named_resource_keeps_its_instance_type() -> None:
    app = _app("train", j="2x8", h="aws_p4d.24xlarge", cpu=4)  # -h replaces cpu / gpu / memMB
    assert app.roles[0].resource == specs.named_resources["aws_p4d.24xlarge"]
    job, _ = _kubernetes(app)
    pod = job["spec"]["tasks"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "96000m" and limits["nvidia.com/gpu"] == "8"
    assert limits["vpc.amazonaws.com/efa"] == "4"


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        (
            {"j": "1x8", "gpu": 4},
            ["-j 1x8 runs 8 processes per node but each node has 4 GPUs", "Fix: -j NNODESx4"],
        ),
        ({"j": "2x8", "h": "aws_p3.2xlarge"}, ["has 1 GPUs", "Fix: -j NNODESx1"]),
        ({"j": "2by8"}, ["-j '2by8'", "Fix: -j NNODESxNPROC_PER_NODE"]),
        ({"h": "p4d"}, ["-h 'p4d'", "aws_p4d.24xlarge", "Fix: -h one of these"]),
        (
            {"mounts": ["type=nfs", "src=a", "dst=/b"]},
            ["--mounts", "invalid mount type", "Fix: --mounts type=bind"],
        ),
    ],
)
def test_bad_launch_settings_name_the_setting_and_the_fix(kwargs: dict[str, Any], names: list[str]) -> None:
    with pytest.raises(ComponentValidationException) as raised:
        crossrank.train(**kwargs)
    for name in names:
        assert name in str(raised.value)
