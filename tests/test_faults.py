"""Faults (issue 11): a 2-process training job SIGKILLed between two shard files of a checkpoint write
resumes to the exact result of an uninterrupted run; a scoring job SIGKILLed while a part is written
leaves every row exactly once after a rerun; a damaged checkpoint is one paragraph on stderr through the
real CLI (no DCP or torch traceback); a re-save of a step never leaves the step without a complete copy;
a rotation that cannot remove a folder says so; DCP's private names that crossrank relies on are pinned.

Full-disk and damaged-checkpoint inputs are cases of the catalogue in ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from torch.distributed.checkpoint import FileSystemReader, filesystem

from crossrank.pipeline.cli.main import main
from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic
from crossrank.pipeline.scoring.model import load_for_inference
from crossrank.pipeline.training import checkpoint as ckpt_mod
from crossrank.pipeline.training.checkpoint import (
    METADATA_FILE,
    check_checkpoint_files,
    complete_checkpoints,
    latest_checkpoint,
    read_meta,
    save_checkpoint,
)
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.conftest import launch

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "synthetic.yaml"
EVERY = 2  # checkpoint every EVERY steps
KILL_STEP = 2 * EVERY  # the checkpoint whose write is killed (the previous one is at step EVERY)
TINY = SyntheticConfig(users=200, items_per_domain=100, rows=3000, max_len=20, seed=1, row_group_size=500)


def overrides(data: Path, run_dir: Path) -> list[str]:
    return [
        f"data.spec={SPEC}",
        f"data.train={data / 'train'}",
        f"data.valid={data / 'valid'}",
        f"data.test={data / 'test'}",
        "data.batch_size=256",
        "train.epochs=1",
        "train.log_every=2",
        f"train.checkpoint_every={EVERY}",
        "train.keep_checkpoints=20",
        "model.encoder.memory_size=256",
        f"run_dir={run_dir}",
    ]


def _train_job(cfg):  # type: ignore[no-untyped-def]
    return train(cfg).test


def _train_then_train_killed_between_shards(reference, killed, marker: str):  # type: ignore[no-untyped-def]
    """A rank of a job that trains the uninterrupted ``reference`` run, then the ``killed`` one, in which
    both ranks are SIGKILLed while checkpoint KILL_STEP is written: rank 0's shard file is complete, rank
    1's is not begun, ``.metadata`` is not written. (One job for both runs: one process start-up.)"""
    train(reference)
    original = filesystem.FileSystemWriter.write_data

    def write_data(self, plan, planner):  # type: ignore[no-untyped-def]
        if Path(self.checkpoint_id).name != f".tmp-step-{KILL_STEP:09d}":
            return original(self, plan, planner)
        done = Path(marker)
        if int(os.environ["RANK"]) == 0:
            result = original(self, plan, planner)  # the first shard file, written and fsynced
            done.with_suffix(".tmp").write_text(str(os.getpid()))
            done.with_suffix(".tmp").rename(done)
            time.sleep(120)  # until rank 1 kills it
            return result
        deadline = time.time() + 120
        while not done.exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(int(done.read_text()), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    filesystem.FileSystemWriter.write_data = write_data
    return train(killed).test


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    prepare_synthetic(out, TINY)
    return out


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 2-process run, and the same run killed while its second checkpoint was written."""
    work = tmp_path_factory.mktemp("runs")
    reference, killed = work / "reference", work / "killed"
    cfgs = [load_config(None, overrides(data, run)) for run in (reference, killed)]
    with pytest.raises(Exception, match=r"(?i)fail"):  # the launcher reports the killed workers
        launch(2, work, _train_then_train_killed_between_shards, *cfgs, str(work / "rank0-shard-written"))
    return reference, killed


@pytest.fixture(scope="module")
def reference(runs: tuple[Path, Path]) -> Path:
    assert (runs[0] / "metrics.json").is_file()
    return runs[0]


def test_two_process_job_killed_between_two_shard_files_resumes_exactly(
    reference: Path, runs: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    run = runs[1]
    cfg = load_config(None, overrides(data, run))
    tmp = run / "checkpoints" / f".tmp-step-{KILL_STEP:09d}"
    assert sorted(p.name for p in tmp.iterdir()) == ["__0_0.distcp"]  # killed between the two shard files
    assert not (run / "checkpoints" / f"step-{KILL_STEP:09d}").exists()
    previous = latest_checkpoint(run)
    assert previous is not None and read_meta(previous)["step"] == KILL_STEP - EVERY  # intact, complete
    check_checkpoint_files(previous)  # every shard file it names is there, whole
    launch(2, tmp_path, _train_job, cfg)  # resume: auto
    ref = json.loads((reference / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert got["steps"] == ref["steps"] and got["loss_curve"] == ref["loss_curve"]  # bit for bit
    assert got["test"] == ref["test"] and got["valid"] == ref["valid"]
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the leftover was removed by the next save


# One interpreter (a process start-up is most of the cost) runs the real CLI: first on damaged checkpoints,
# each command's stderr captured at file descriptor 2 (so that DCP's logging and anything torch prints are
# seen too) and written to RESULTS; then a scoring job whose third part write is SIGKILLed half-way.
_CHILD = """
import json, os, signal, sys, tempfile
import pyarrow.parquet as pq
from crossrank.pipeline.cli.main import main

damaged, score, results_path = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
results = []
for argv in damaged:
    sys.stderr.flush()
    with tempfile.TemporaryFile(mode="w+") as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            code = main(argv)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append({"code": code, "stderr": err.read()})
with open(results_path, "w") as f:
    json.dump(results, f)

calls = []

class DyingWriter(pq.ParquetWriter):  # the third part: half its rows on disk, then SIGKILL
    def write_table(self, table, row_group_size=None):
        calls.append(1)
        if len(calls) == 3:
            super().write_table(table.slice(0, table.num_rows // 2), row_group_size=row_group_size)
            os.kill(os.getpid(), signal.SIGKILL)
        super().write_table(table, row_group_size=row_group_size)

pq.ParquetWriter = DyingWriter
main(score)
"""


def _damage(checkpoint: Path, kind: str) -> Path:
    if kind == "truncated shard":
        shard = checkpoint / "__0_0.distcp"
        os.truncate(shard, shard.stat().st_size // 2)
        return shard
    if kind == "no .metadata":
        (checkpoint / METADATA_FILE).unlink()
        return checkpoint / METADATA_FILE
    (checkpoint / "spec.yaml").unlink()
    return checkpoint / "spec.yaml"


@dataclass
class CliChild:
    damaged: list[list[str]]  # the commands run on damaged checkpoints
    expected: list[tuple[Path, list[str]]]  # for each, the damaged file and what its message must hold
    results: list[dict[str, Any]]  # for each, its exit code and stderr
    score: list[str]  # the scoring command that was killed
    proc: subprocess.CompletedProcess[str]
    work: Path


def _damaged_commands(reference: Path, data: Path, work: Path) -> tuple[list[list[str]], list[Any]]:
    """``score`` / ``evaluate`` / ``train --resume`` on copies of the latest checkpoint, each damaged."""
    latest = latest_checkpoint(reference)
    assert latest is not None
    runs: list[list[str]] = []
    expected: list[Any] = []
    for kind, fragment in {
        "truncated shard": "is truncated",
        "no .metadata": "is missing",
        "no spec.yaml": "the checkpoint is incomplete",
    }.items():
        folder = work / kind.replace(" ", "-") / "run"
        shutil.copytree(latest, folder / "checkpoints" / latest.name)
        bad = _damage(folder / "checkpoints" / latest.name, kind)
        ckpt = str(folder / "checkpoints" / latest.name)
        runs.append(
            ["score", "--checkpoint", ckpt, "--input", str(data / "test"), "--output", str(work / "o")]
        )
        runs.append(["evaluate", "--checkpoint", ckpt, "--data", str(data / "test")])
        if kind != "no spec.yaml":  # training reads its own spec, not the checkpoint's
            runs.append(
                ["train", *[a for o in overrides(data, folder) for a in ("--set", o)], "--resume", ckpt]
            )
        expected += [(bad, [fragment, "Fix: use another checkpoint"])] * (len(runs) - len(expected))
    return runs, expected


@pytest.fixture(scope="module")
def cli_child(reference: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> CliChild:
    work = tmp_path_factory.mktemp("cli")
    damaged, expected = _damaged_commands(reference, data, work)
    score = ["score", "--checkpoint", str(reference), "--input", str(data / "train")]
    score += ["--output", str(work / "scores"), "--batch-size", "512"]
    results = work / "results.json"
    argv = [sys.executable, "-c", _CHILD, json.dumps(damaged), json.dumps(score), str(results)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert results.is_file(), proc.stderr[-3000:]
    return CliChild(damaged, expected, json.loads(results.read_text()), score, proc, work)


def test_damaged_checkpoints_are_one_paragraph_on_stderr_through_the_cli(cli_child: CliChild) -> None:
    for argv, result, (bad, fragments) in zip(
        cli_child.damaged, cli_child.results, cli_child.expected, strict=True
    ):
        err = result["stderr"].strip()
        assert result["code"] == 2, (argv, err)
        assert err.startswith("crossrank: error: ") and "\n" not in err, (argv, err)  # one paragraph only
        for fragment in [str(bad), *fragments]:
            assert fragment in err, (argv, fragment, err)
    assert not (cli_child.work / "o").exists()  # nothing was scored


def _row_ids(folder: Path) -> list[int]:
    table = ds.dataset(folder, format="parquet").to_table(columns=["row_id"])  # hidden files are skipped
    return sorted(table.column("row_id").to_pylist())


def test_scoring_killed_while_writing_a_part_leaves_every_row_once_after_a_rerun(
    cli_child: CliChild, data: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, source = cli_child.work / "scores", data / "train"
    assert cli_child.proc.returncode == -signal.SIGKILL, cli_child.proc.stderr[-3000:]
    half_written = [p.name for p in out.iterdir() if p.name.startswith(".part-")]
    assert len(half_written) == 1  # the part being written, under its temporary name only
    entries = sorted(p.stem for p in (out / "_manifest").glob("part-*.json"))
    assert sorted(p.stem for p in out.glob("part-*.parquet")) == entries == ["part-00000", "part-00001"]
    visible = _row_ids(out)  # what a reader sees now: the finished parts, each once
    assert len(visible) == len(set(visible)) and set(visible) < set(_row_ids(source))
    capsys.readouterr()
    assert main(cli_child.score) == 0  # the rerun skips the two finished units
    best = reference / "best"
    assert f"feature spec: {best / 'spec.yaml'} (the checkpoint's own" in capsys.readouterr().out
    assert _row_ids(out) == _row_ids(source)  # every row exactly once
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --- the checkpoint commit, rotation, and the pinned DCP internals ----------------------------------------


def _save(run_dir: Path, model: Any, meta: dict[str, Any], step: int, keep: int = 20) -> Path:
    return save_checkpoint(run_dir, step, model, None, meta, str(SPEC), init_distributed(), keep)


def _model_and_meta(reference: Path) -> tuple[Any, dict[str, Any]]:
    loaded = load_for_inference(reference, init_distributed())
    return loaded.sharded.model, read_meta(loaded.checkpoint)


def test_a_resave_of_a_step_keeps_a_complete_copy_at_every_moment(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta = _model_and_meta(reference)
    run, step = tmp_path / "run", 7
    first = _save(run, model, meta, step)
    first_meta = read_meta(first)
    real_replace = ckpt_mod.os.replace

    def killed_between_the_renames(src: Any, dst: Any) -> None:
        if Path(src).name.startswith(".tmp-step-"):
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", killed_between_the_renames)
    with pytest.raises(KeyboardInterrupt):
        _save(run, model, meta, step)
    monkeypatch.undo()
    old = run / "checkpoints" / f".old-step-{step:09d}"
    assert not first.exists() and old.is_dir()  # the first copy, renamed aside, still complete...
    assert complete_checkpoints(run) == [old] and latest_checkpoint(run) == old  # ...and used
    assert read_meta(old) == first_meta
    check_checkpoint_files(old)
    load_for_inference(old, init_distributed())
    assert _save(run, model, meta, step) == first  # the next save completes and tidies up
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [first.name]
    assert complete_checkpoints(run) == [first]


def test_a_rotation_that_cannot_remove_a_folder_says_so(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model, meta = _model_and_meta(reference)
    run = tmp_path / "run"
    oldest = _save(run, model, meta, 1)
    (run / "checkpoints" / ".tmp-step-000000002").mkdir()  # left by a crashed write
    real_rmtree = ckpt_mod.shutil.rmtree

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path) == oldest:
            raise PermissionError(13, "Permission denied", str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", refuse)
    capsys.readouterr()
    _save(run, model, meta, 3, keep=1)
    err = capsys.readouterr().err
    assert f"crossrank: warning: could not remove old checkpoint {oldest} (Permission denied)" in err
    assert "Fix: remove it by hand" in err
    assert oldest.is_dir() and not (run / "checkpoints" / ".tmp-step-000000002").exists()


def test_the_dcp_internals_crossrank_relies_on_are_pinned(reference: Path) -> None:
    """crossrank reads ``.metadata`` itself (with an allowlist unpickler) and checks shard sizes from DCP's
    storage entries. These are DCP internals: if an upgrade renames them, this fails loudly."""
    latest = latest_checkpoint(reference)
    assert latest is not None
    assert filesystem._metadata_fn == METADATA_FILE  # DCP's private name for the global metadata file
    assert (latest / METADATA_FILE).is_file()
    ours, stock = check_checkpoint_files(latest).read_metadata(), FileSystemReader(latest).read_metadata()
    assert ours.state_dict_metadata.keys() == stock.state_dict_metadata.keys()
    assert ours.storage_data == stock.storage_data and ours.storage_data
    files = {p.name: p.stat().st_size for p in latest.glob("*.distcp")}
    ends: dict[str, int] = {}
    for info in ours.storage_data.values():  # filesystem._StorageInfo: relative_path, offset, length
        assert type(info).__name__ == "_StorageInfo" and info.relative_path in files
        ends[info.relative_path] = max(ends.get(info.relative_path, 0), info.offset + info.length)
    assert ends == files  # every shard file is named, and its entries end where the file ends
