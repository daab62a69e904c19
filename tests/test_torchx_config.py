"""README's cluster section and the example `.torchxconfig`: every command the section lists runs here.

The `torchx run --dryrun` commands (Kubernetes, Slurm, the example config) run through the real CLI, as a
user types them; the Ray commands run in tests/test_ray.py against a local Ray head.
"""

from __future__ import annotations

import configparser
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from torchx.runner import get_runner
from torchx.schedulers import get_scheduler_factories

from torchx_components import crossrank

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "torchx" / ".torchxconfig.example"
SECTION = "### Clusters: Kubernetes, Slurm and Ray"


Command = tuple[dict[str, str], list[str]]  # (environment assignments, shell words)


def cluster_blocks() -> list[list[Command]]:
    """The commands of each ```bash block of README's cluster section, in order: continuation lines joined,
    comments dropped, leading ``NAME=value`` words taken as the command's environment."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) + len(SECTION) :]
    section = section[: re.search(r"^#{2,3} ", section, flags=re.M).start()]  # type: ignore[union-attr]
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            env = {}
            while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if words:
                commands.append((env, words))
        blocks.append(commands)
    return blocks


def venv_env(**extra: str) -> dict[str, str]:
    """The environment of an activated .venv (`source .venv/bin/activate`): its bin folder first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def test_the_section_lists_only_commands_the_tests_run() -> None:
    """Every block but the last holds dry runs (run below); the last is the Ray walk-through that
    tests/test_ray.py runs (activating the venv is its environment)."""
    *dry, ray = cluster_blocks()
    dry_runs = [words for block in dry for _, words in block]
    assert all(words[:3] == ["torchx", "run", "--dryrun"] for words in dry_runs), dry_runs
    assert len(dry_runs) == len(EXPECTED)
    assert [words[:3] for _, words in ray] == [
        ["source", ".venv/bin/activate"],
        ["crossrank", "prepare", "synthetic"],
        ["ray", "start", "--head"],
        ["torchx", "run", "-s"],
    ]
    assert ray[3][1][3] == "ray"


def _request(out: str) -> str:
    """The SCHEDULER REQUEST part of a dry run, whitespace folded (YAML wraps long strings)."""
    return " ".join(out.split("=== SCHEDULER REQUEST ===", 1)[1].split())


K8S = ["schedulerName: volcano", "queue: default", "image: registry.example.com/crossrank:0.1-cuda"]
GPU_NODE = ["cpu: 64000m", "memory: 480000M", "nvidia.com/gpu: '8'"]
VOLUME = ["mountPath: /data", "claimName: crossrank-data"]
# What each dry run of the section must print, in the section's order.
EXPECTED = [
    [
        *K8S,
        *GPU_NODE,
        *VOLUME,
        "--nnodes 2 --nproc_per_node 8",
        "-m crossrank.pipeline.cli train --config configs/ml1m.yaml --set data.train=/data/ml-1m/train",
        "--set run_dir=s3://my-bucket/runs/ml1m",
    ],
    [*K8S, "--nnodes 2 --nproc_per_node 8", "cpu: 96000m", "node.kubernetes.io/instance-type: p4d.24xlarge"],
    [
        *K8S,
        *GPU_NODE,
        *VOLUME,
        "--nnodes 1 --nproc_per_node 8",
        "-m crossrank.pipeline.cli score --checkpoint "
        "s3://my-bucket/runs/ml1m --input /data/ml-1m/test --output s3://my-bucket/scores/ml1m",
    ],
    [
        "#SBATCH --job-name=train-3 --requeue --partition=gpu --time=4:00:00 --ntasks-per-node=1 "
        "--cpus-per-task=64 --mem=480000 --gpus-per-task=8",
        "--nnodes 4 --nproc_per_node 8",
        "-m crossrank.pipeline.cli train --config configs/ml1m.yaml",
    ],
    [
        "#SBATCH --job-name=evaluate-0 --requeue --partition=gpu --time=1:00:00",
        "--nnodes 1 --nproc_per_node 8",
        "-m crossrank.pipeline.cli evaluate --checkpoint runs/ml1m --data data/ml-1m/test",
    ],
    # The example .torchxconfig: its scheduler, queue and crossrank.train defaults (image, 2x8, GPUs, volume).
    [
        *K8S,
        *GPU_NODE,
        *VOLUME,
        "--nnodes 2 --nproc_per_node 8",
        "-m crossrank.pipeline.cli train --config configs/ml1m.yaml --set run_dir=s3://my-bucket/runs/ml1m",
    ],
]


def test_readme_dry_runs_print_the_jobs() -> None:
    commands = [command for block in cluster_blocks()[:-1] for command in block]
    assert len(commands) == len(EXPECTED)
    runs = [
        subprocess.Popen(
            words, cwd=REPO, env=venv_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for env, words in commands
    ]
    for (_, words), proc, expected in zip(commands, runs, EXPECTED, strict=True):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "=== SCHEDULER REQUEST ===" in out, (words, out[-3000:])
        request = _request(out)
        missing = [text for text in expected if text not in request]
        assert not missing, (words, missing, request[:3000])


def test_example_config_names_only_known_options() -> None:
    """TorchX skips unknown or misspelled keys silently: every key of the example must be a real option."""
    parser = configparser.ConfigParser()
    assert parser.read(EXAMPLE) == [str(EXAMPLE)]
    schedulers = set(get_scheduler_factories())
    assert parser["cli:run"]["scheduler"] in schedulers
    component = inspect.signature(crossrank.train).parameters
    with get_runner() as runner:
        for name in parser.sections():
            kind, _, target = name.partition(":")
            keys = dict(parser[name])
            if kind == "cli":
                assert target == "run" and set(keys) <= {"scheduler", "workspace", "component"}, name
            elif kind == "component":
                assert target == "crossrank.train" and set(keys) <= set(component), keys
            else:
                assert name in schedulers, name
                opts = runner.scheduler_run_opts(name)
                assert all(opts.get(key) is not None for key in keys), (name, keys)
                cfg = opts.cfg_from_str(",".join(f"{k}={v}" for k, v in keys.items()))
                assert opts.resolve(cfg).keys() >= keys.keys()
