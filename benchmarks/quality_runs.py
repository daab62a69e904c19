"""The quality study's runs: prepared datasets (cached), and one training run per (config, seed), cached under
a key of everything that decides its result — the config file, the overrides, the data, and the code.

A run is ``crossrank train`` in fresh processes (1 or 2, through the CLI's local launcher), then
``crossrank evaluate`` of the run's best checkpoint (selected on validation) on the test split and the
ranking protocol. Its ``result.json`` (test metrics of the best checkpoint, validation history, parameters,
wall time) lands in ``CACHE/<key>/``. The key holds the git commit and a hash of uncommitted changes to the
code, so a result is never reused across code changes; a study stopped part-way resumes from what is cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CODE = ["features", "models", "pipeline", "pyproject.toml"]


@dataclass(frozen=True)
class Run:
    """One training run of a study.

    Args:
        variant: the row of the study's table it belongs to.
        seed: ``train.seed``.
        config: the job config YAML (relative to the repo).
        data: the prepared data folder (``train/ valid/ test/`` and optionally ``ranking/``).
        spec: the feature spec to use (``data.spec``).
        overrides: ``--set`` overrides beyond the data, seed and run folder.
        nproc: training processes.
        diagnose: also store ELASTIC's diagnostics of the best checkpoint on validation
            (``benchmarks/elastic_diagnostics.py``).
    """

    variant: str
    seed: int
    config: str
    data: Path
    spec: Path
    overrides: tuple[str, ...] = ()
    nproc: int = 2
    diagnose: bool = False
    extra: dict[str, float] = field(default_factory=dict, compare=False, hash=False)


def code_version() -> str:
    """The commit, plus a hash of uncommitted changes (tracked and untracked) to the code."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    diff = subprocess.run(["git", "diff", "HEAD", "--", *CODE], cwd=REPO, capture_output=True).stdout
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "--", *CODE],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.split()
    digest = hashlib.sha256(diff)
    for name in sorted(untracked):
        digest.update(name.encode() + (REPO / name).read_bytes())
    return head[:12] if not diff and not untracked else f"{head[:12]}+{digest.hexdigest()[:8]}"


def data_identity(folder: Path) -> str:
    """The prepared data's own summary (written by ``crossrank prepare``) stands for its content."""
    for name in ("summary.json", "ranking.json"):
        if (folder / name).exists():
            return hashlib.sha256((folder / name).read_bytes()).hexdigest()[:16]
    raise SystemExit(f"{folder}: no summary.json; prepare the data first")


def run_key(run: Run, version: str) -> str:
    """Everything that decides the run's result, hashed."""
    parts = {
        "config": (REPO / run.config).read_text(),
        "spec": run.spec.read_text(),
        "data": data_identity(run.data),
        "overrides": list(run.overrides),
        "seed": run.seed,
        "nproc": run.nproc,
        "code": version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _cli(*args: str, nproc: int = 1) -> subprocess.CompletedProcess[str]:
    """``crossrank ARGS`` in a fresh process, or ``nproc`` of them under ``torchrun --standalone``."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*(launch if nproc > 1 else [sys.executable]), "-m", "crossrank.pipeline.cli", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _train(run: Run, run_dir: Path) -> dict:
    sets = [
        f"data.spec={run.spec}",
        f"data.train={run.data / 'train'}",
        f"data.valid={run.data / 'valid'}",
        f"data.test={run.data / 'test'}",
        f"train.seed={run.seed}",
        f"run_dir={run_dir}",
        "train.resume=never",
        "train.tensorboard=false",
        *run.overrides,
    ]
    _cli(
        "train", "--config", str(REPO / run.config), *(a for s in sets for a in ("--set", s)), nproc=run.nproc
    )
    return json.loads((run_dir / "metrics.json").read_text())


def _evaluate_best(run: Run, run_dir: Path) -> dict[str, float]:
    args = ["evaluate", "--checkpoint", str(run_dir / "best"), "--data", str(run.data / "test")]
    if (run.data / "ranking").exists():
        args += ["--ranking", str(run.data / "ranking")]
    return json.loads(_cli(*args).stdout.strip().splitlines()[-1])


def _diagnose(run: Run, run_dir: Path) -> dict[str, dict[str, float]]:
    script = REPO / "benchmarks" / "elastic_diagnostics.py"
    args = ["--checkpoint", str(run_dir / "best"), "--data", str(run.data / "valid")]
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: diagnostics of {run_dir}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cached(run: Run, cache: Path, version: str) -> dict | None:
    """The run's cached result, or ``None`` when it has not run with this code."""
    done = cache / run_key(run, version) / "result.json"
    return json.loads(done.read_text()) if done.exists() else None


def execute(run: Run, cache: Path, version: str) -> dict:
    """The run's result: from the cache, or trained now and cached (checkpoints are removed after)."""
    if (result := cached(run, cache, version)) is not None:
        return {**result, "variant": run.variant}  # a label, not a setting: another study may share the run
    key = run_key(run, version)
    done = cache / key / "result.json"
    run_dir = cache / key / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    metrics = _train(run, run_dir)
    test = _evaluate_best(run, run_dir)
    result = {
        "variant": run.variant,
        "seed": run.seed,
        "overrides": list(run.overrides),
        "code": version,
        "test": test,
        "test_from_train": metrics["test"],  # the same best checkpoint, measured by `train` itself
        "best": metrics["best"],
        "valid": metrics["valid"],
        "params": metrics["params"],
        "steps": metrics["steps"],
        "train_wall_s": metrics["wall_s"],
        "samples_per_s": metrics["samples_per_s"],
        "wall_s": time.perf_counter() - t0,
        **run.extra,
    }
    if run.diagnose:
        result["diagnostics"] = _diagnose(run, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # the study keeps metrics, not weights
    done.write_text(json.dumps(result, indent=1))
    return result


def derived_spec(base: Path, out: Path, max_len: int, dim: int | None = None) -> Path:
    """``base`` with every sequence feature's ``max_len`` set to ``max_len`` and, with ``dim``, every table's
    ``embedding_dim`` set to ``dim`` (written next to the data)."""
    spec = yaml.safe_load(base.read_text())
    for feature in spec["features"]:
        if feature.get("kind") == "sequence":
            feature["max_len"] = max_len
    for table in spec["tables"] if dim else []:
        table["embedding_dim"] = dim
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f"# {base.name}: histories up to {max_len}, dim {dim} (benchmarks/quality.py)\n" + yaml.safe_dump(
        spec
    )
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    for feature in spec["features"]:  # vocabulary files travel with the spec (named relative to it)
        mapping = feature.get("mapping")
        vocab = mapping.get("file") if isinstance(mapping, dict) else None
        if vocab:
            (out.parent / vocab).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base.parent / vocab, out.parent / vocab)
    return out
