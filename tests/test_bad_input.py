"""Bad input, end to end (issue 11): every case exits with status 2 and one message that names the file,
column or feature and the fix. Also: scoring output tied to the checkpoint and input that produced it,
``prepare`` refusing foreign targets and replacing its output atomically, errors that surface through
torchrun / TorchX (the failing rank's error file, a quiet peer), and the components finding torchrun when
TorchX was started without its environment on PATH."""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from crossrank.features.errors import InputError
from crossrank.pipeline.cli.main import _print_error, _quiet_third_party, main
from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "synthetic.yaml"
TINY = SyntheticConfig(users=200, items_per_domain=100, rows=3000, max_len=20, seed=1, row_group_size=500)
MOVIES_CSV = "movieId,title,genres\n1,A,Action\n2,B,Comedy\n3,C,Drama\n4,D,Action\n"
RATINGS_CSV = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{m},{(u + m) % 5 + 1},{10 * u + m}\n" for u in range(1, 5) for m in range(1, 5)
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data") / "syn"
    prepare_synthetic(out, TINY)
    return out


def train_args(data: Path, run_dir: Path, train: Path | None = None, *extra: str) -> list[str]:
    sets = [
        f"data.spec={SPEC}",
        f"data.train={train or data / 'train'}",
        f"data.valid={data / 'valid'}",
        f"data.test={data / 'test'}",
        "data.batch_size=256",
        "train.epochs=1",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=10",
        f"run_dir={run_dir}",
        *extra,
    ]
    return ["train", "--config", str(REPO / "configs/demo.yaml"), *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run with several checkpoints (checkpoints/step-N, every 3 steps)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    assert main(train_args(data, run_dir)) == 0
    return run_dir


def checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob("step-*"))


def bad_copy(data: Path, folder: Path, change: Callable[[pa.Table], pa.Table], split: str = "train") -> Path:
    """``split`` of ``data`` with ``change`` applied, as one file in ``folder``."""
    path = folder / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(change(pq.read_table(data / split)), path, row_group_size=100_000)
    return path


def set_column(table: pa.Table, name: str, values: list[object]) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, pa.array(values, table.schema.field(name).type))


def with_null(table: pa.Table, name: str, row: int = 7) -> pa.Table:
    values = table.column(name).to_pylist()
    values[row] = None
    return set_column(table, name, values)


def with_duplicate_ids(table: pa.Table) -> pa.Table:
    ids = table.column("row_id").to_pylist()
    ids[9] = ids[3]
    return set_column(table, "row_id", ids)


def bad_spec(tmp: Path) -> Path:
    raw = copy.deepcopy(yaml.safe_load(SPEC.read_text()))
    raw["tables"][0]["pooling"] = "max"
    path = tmp / "bad_spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def foreign_folder(tmp: Path, name: str = "out") -> Path:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


def movielens_src(tmp: Path) -> Path:
    src = tmp / "ml-latest-small"
    src.mkdir(parents=True, exist_ok=True)
    (src / "movies.csv").write_text(MOVIES_CSV)
    (src / "ratings.csv").write_text(RATINGS_CSV)
    return src


def data_with_foreign_ranking(data: Path, tmp: Path) -> Path:
    copy_dir = tmp / "copy"
    shutil.copytree(data, copy_dir)
    foreign_folder(copy_dir, "ranking")
    return copy_dir


# Each case: (data, run, tmp) -> (argv, fragments the message must hold). Every message must also hold "Fix:".
Case = Callable[[Path, Path, Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {
    "features check: bad spec": lambda d, r, t: (
        ["features", "check", str(bad_spec(t))],
        [str(t / "bad_spec.yaml"), "pooling"],
    ),
    "features check: data without a column": lambda d, r, t: (
        [
            "features",
            "check",
            str(SPEC),
            "--data",
            str(bad_copy(d, t / "in", lambda x: x.drop_columns(["hist_B"]))),
        ],
        [str(t / "in" / "part-00000.parquet"), "hist_B"],
    ),
    "train: null label": lambda d, r, t: (
        train_args(d, t / "run", bad_copy(d, t / "in", lambda x: with_null(x, "label"))),
        [str(t / "in" / "part-00000.parquet"), "label column 'label'", "null"],
    ),
    "train: null row id": lambda d, r, t: (
        train_args(d, t / "run", bad_copy(d, t / "in", lambda x: with_null(x, "row_id"))),
        [str(t / "in" / "part-00000.parquet"), "row id column 'row_id'", "null"],
    ),
    "train: repeated row ids": lambda d, r, t: (
        train_args(d, t / "run", bad_copy(d, t / "in", with_duplicate_ids)),
        [str(t / "in" / "part-00000.parquet"), "row id column 'row_id'", "repeats 1 id(s)"],
    ),
    "train: model config that does not fit the spec": lambda d, r, t: (
        train_args(d, t / "run", None, "model.sequence_encoder=elastic", "model.encoder.num_heads=5"),
        ["num_heads 5", "model section", str(SPEC)],
    ),
    "score: null row id": lambda d, r, t: (
        [
            "score",
            "--checkpoint",
            str(r),
            "--input",
            str(bad_copy(d, t / "in", lambda x: with_null(x, "row_id"), "test").parent),
            "--output",
            str(t / "scores"),
        ],
        [str(t / "in" / "part-00000.parquet"), "row id column 'row_id'"],
    ),
    "score: output is a file": lambda d, r, t: (
        ["score", "--checkpoint", str(r), "--input", str(d / "test"), "--output", str(a_file(t))],
        [str(t / "a_file"), "is a file"],
    ),
    "score: output inside a file": lambda d, r, t: (
        ["score", "--checkpoint", str(r), "--input", str(d / "test"), "--output", str(a_file(t) / "out")],
        [str(t / "a_file" / "out"), "is a file"],
    ),
    "score: output folder with other files": lambda d, r, t: (
        ["score", "--checkpoint", str(r), "--input", str(d / "test"), "--output", str(foreign_folder(t))],
        [str(t / "out"), "notes.txt", "did not write"],
    ),
    "prepare synthetic: folder with other files": lambda d, r, t: (
        ["prepare", "synthetic", str(foreign_folder(t)), "--rows", "100"],
        [str(t / "out"), "notes.txt", "--overwrite"],
    ),
    "prepare synthetic --days: folder with other files": lambda d, r, t: (
        ["prepare", "synthetic", str(foreign_folder(t)), "--rows", "100", "--days", "2"],
        [str(t / "out"), "--overwrite"],
    ),
    "prepare synthetic: target is a file": lambda d, r, t: (
        ["prepare", "synthetic", str(a_file(t)), "--rows", "100"],
        [str(t / "a_file"), "is a file"],
    ),
    "prepare movielens: into synthetic data": lambda d, r, t: (
        ["prepare", "movielens", str(movielens_src(t)), str(d)],
        [str(d), "prepare movielens", "--overwrite"],
    ),
    "prepare ranking: ranking folder with other files": lambda d, r, t: (
        ["prepare", "ranking", str(data_with_foreign_ranking(d, t))],
        [str(t / "copy" / "ranking"), "notes.txt", "--overwrite"],
    ),
}


# --- damaged checkpoints and full disks (issue 11, items 6 and 9) -----------------------------------------


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def corrupt_zip_record(path: Path) -> None:
    """Zero the signature of the first zip end record in a DCP shard file (same size, unreadable bytes)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x05\x06")
    raw[at : at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(raw))


class Exploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("unpickled",))


Damage = Callable[[Path], object]
DAMAGES: dict[str, Damage] = {
    "no .metadata": lambda c: (c / ".metadata").unlink(),
    "truncated .metadata": lambda c: truncate(c / ".metadata"),
    "tampered .metadata": lambda c: (c / ".metadata").write_bytes(pickle.dumps(Exploit())),
    "truncated shard": lambda c: truncate(c / "__0_0.distcp"),
    "no shard": lambda c: (c / "__0_0.distcp").unlink(),
    "corrupt shard": lambda c: corrupt_zip_record(c / "__0_0.distcp"),
    "no spec.yaml": lambda c: (c / "spec.yaml").unlink(),
    "no meta.json": lambda c: (c / "meta.json").unlink(),
    "truncated meta.json": lambda c: truncate(c / "meta.json"),
    "meta.json without config": lambda c: (c / "meta.json").write_text('{"step": 3}'),
    "truncated RNG state": lambda c: truncate(c / "rng-rank0.npy"),
}


def damaged(run: Path, tmp: Path, damage: str) -> Path:
    """A copy of ``run``'s checkpoints (as ``tmp/run``) whose latest is damaged; returns that checkpoint."""
    copy = tmp / "run" / "checkpoints"
    shutil.copytree(run / "checkpoints", copy)
    latest = checkpoints(copy.parent)[-1]
    DAMAGES[damage](latest)
    return latest


def score_args(checkpoint: Path, data: Path, tmp: Path) -> list[str]:
    return [
        "score",
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(data / "test"),
        "--output",
        str(tmp / "o"),
    ]


def evaluate_args(checkpoint: Path, data: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data / "test")]


def resume_args(checkpoint: Path, data: Path, tmp: Path) -> list[str]:
    return [*train_args(data, tmp / "resumed"), "--resume", str(checkpoint)]


def damaged_best(run: Path, tmp: Path) -> Path:
    """A copy of ``run`` (checkpoints and best) whose best checkpoint has lost its ``.metadata``."""
    copy = tmp / "run"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    shutil.copytree(run / "best", copy / "best")
    (copy / "best" / ".metadata").unlink()
    return copy


_OTHER = "use another checkpoint of the run"


def _damaged_case(command: str, damage: str, fragments: Callable[[Path], list[str]]) -> Case:
    """A catalogue case: ``command`` (score, evaluate, resume) on the run's latest checkpoint, damaged."""

    def case(d: Path, r: Path, t: Path) -> tuple[list[str], list[str]]:
        ckpt = damaged(r, t, damage)
        if command == "score":
            argv = score_args(ckpt, d, t)
        elif command == "evaluate":
            argv = evaluate_args(ckpt, d)
        elif command == "resume (auto)":
            argv = train_args(d, ckpt.parents[1])
        elif command == "init-from":
            argv = [*train_args(d, t / "new"), "--init-from", str(ckpt)]
        else:
            argv = resume_args(ckpt, d, t)
        return argv, fragments(ckpt)

    return case


DAMAGED_CASES: dict[str, Case] = {
    "score: checkpoint without .metadata": _damaged_case(
        "score", "no .metadata", lambda c: [str(c / ".metadata"), "is missing", _OTHER]
    ),
    "score: checkpoint with a truncated .metadata": _damaged_case(
        "score", "truncated .metadata", lambda c: [str(c / ".metadata"), "cannot be read", _OTHER]
    ),
    "score: checkpoint with a tampered .metadata": _damaged_case(
        "score",
        "tampered .metadata",
        lambda c: [str(c / ".metadata"), "builtins.print, which is not allowed"],
    ),
    "score: checkpoint with a truncated shard file": _damaged_case(
        "score", "truncated shard", lambda c: [str(c / "__0_0.distcp"), "is truncated", _OTHER]
    ),
    "score: checkpoint without its shard file": _damaged_case(
        "score", "no shard", lambda c: [str(c / "__0_0.distcp"), "is missing", _OTHER]
    ),
    "score: checkpoint with a corrupt shard file": _damaged_case(
        "score", "corrupt shard", lambda c: [str(c / "__0_0.distcp"), "is damaged", _OTHER]
    ),
    "score: checkpoint without spec.yaml": _damaged_case(
        "score", "no spec.yaml", lambda c: [str(c / "spec.yaml"), "the checkpoint is incomplete", _OTHER]
    ),
    "score: checkpoint without meta.json": _damaged_case(
        "score", "no meta.json", lambda c: [str(c), "an incomplete checkpoint", _OTHER]
    ),
    "score: checkpoint with a truncated meta.json": _damaged_case(
        "score", "truncated meta.json", lambda c: [str(c / "meta.json"), "cannot be read", _OTHER]
    ),
    "score: checkpoint whose meta.json has no config": _damaged_case(
        "score", "meta.json without config", lambda c: [str(c / "meta.json"), "no training config", _OTHER]
    ),
    "score: run folder whose best checkpoint is damaged": lambda d, r, t: (
        score_args(damaged_best(r, t), d, t),
        [str(t / "run" / "best" / ".metadata"), "is missing", _OTHER],
    ),
    "evaluate: checkpoint without .metadata": _damaged_case(
        "evaluate", "no .metadata", lambda c: [str(c / ".metadata"), "is missing", _OTHER]
    ),
    "evaluate: checkpoint with a truncated shard file": _damaged_case(
        "evaluate", "truncated shard", lambda c: [str(c / "__0_0.distcp"), "is truncated", _OTHER]
    ),
    "evaluate: checkpoint without spec.yaml": _damaged_case(
        "evaluate", "no spec.yaml", lambda c: [str(c / "spec.yaml"), "the checkpoint is incomplete", _OTHER]
    ),
    "train: resuming from a latest checkpoint without .metadata": _damaged_case(
        "resume (auto)", "no .metadata", lambda c: [str(c / ".metadata"), "is missing", "move this folder"]
    ),
    "train --resume: checkpoint with a truncated shard file": _damaged_case(
        "resume", "truncated shard", lambda c: [str(c / "__0_0.distcp"), "is truncated", "move this folder"]
    ),
    "train --resume: checkpoint with a truncated RNG state": _damaged_case(
        "resume", "truncated RNG state", lambda c: [str(c / "rng-rank0.npy"), "RNG state cannot be read"]
    ),
    "train --resume: checkpoint without meta.json": _damaged_case(
        "resume", "no meta.json", lambda c: [str(c), "an incomplete checkpoint", _OTHER]
    ),
    "train --init-from: checkpoint without .metadata": _damaged_case(
        "init-from", "no .metadata", lambda c: [str(c), ".metadata"]
    ),
}
CASES.update(DAMAGED_CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_message_naming_where_and_the_fix(
    case: str, data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, fragments = CASES[case](data, run, tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in [*fragments, "Fix:"]:
        assert fragment in err, (fragment, err)


def _enospc(path: object = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def full_disk_for_parquet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Parquet write (what ``prepare`` and ``score`` write) fails: the disk is full."""

    class FullDisk(pq.ParquetWriter):
        def write_table(self, table: pa.Table, row_group_size: int | None = None) -> None:
            raise _enospc()

    monkeypatch.setattr(pq, "ParquetWriter", FullDisk)


def full_disk_on_fsync(monkeypatch: pytest.MonkeyPatch, name: Callable[[str], bool]) -> None:
    """Flushing a file whose name passes ``name`` fails as on a full disk (where delayed allocation
    reports it)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if name(Path(path).name):
            raise _enospc(path)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def full_disk_in_dcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """DCP's shard files fill the disk after their first 4 KiB (the file is left half-written)."""
    from torch.distributed.checkpoint import filesystem

    class Filling(io.FileIO):
        def write(self, b: Any) -> int:
            if self.tell() + memoryview(b).nbytes > 4096:
                raise _enospc(self.name)
            return super().write(b)

    @contextlib.contextmanager
    def create_stream(self: object, path: Any, mode: str) -> Iterator[Any]:
        if "w" in mode and str(path).endswith(".distcp"):
            with Filling(str(path), "wb") as f:
                yield f
        else:
            with Path(path).open(mode) as f:
                yield f

    monkeypatch.setattr(filesystem.FileSystem, "create_stream", create_stream)


# Each case: a fault (monkeypatch -> None) and (data, run, tmp) -> (argv, fragments, folder, names under
# ``folder`` that must not exist afterwards). Every message must also name ``folder`` and say "No space left
# on device" and "Fix: free space"; no hidden temporary file may be left behind either.
Fault = Callable[[pytest.MonkeyPatch], None]
DiskCase = Callable[[Path, Path, Path], tuple[list[str], list[str], Path, list[str]]]
SCORE_FINAL_NAMES = ["part-*.parquet", "_manifest/*.json"]
CHECKPOINT_FINAL_NAMES = ["step-*", ".tmp-step-*", ".old-step-*"]
DISK_FULL_CASES: dict[str, tuple[Fault, DiskCase]] = {
    "score: disk full writing a scores part": (
        full_disk_for_parquet,
        lambda d, r, t: (score_args(r, d, t), ["part-00000.parquet"], t / "o", SCORE_FINAL_NAMES),
    ),
    "score: disk full writing a manifest entry": (
        lambda mp: full_disk_on_fsync(mp, lambda name: name.startswith(".part-") and ".json.tmp-" in name),
        lambda d, r, t: (score_args(r, d, t), ["part-00000.json"], t / "o", SCORE_FINAL_NAMES),
    ),
    "score: disk full writing the job record": (
        lambda mp: full_disk_on_fsync(mp, lambda name: name.startswith("._job.json.tmp-")),
        lambda d, r, t: (score_args(r, d, t), ["_job.json"], t / "o", ["_job.json", *SCORE_FINAL_NAMES]),
    ),
    "train: disk full writing a checkpoint's shard file": (
        full_disk_in_dcp,
        lambda d, r, t: (
            train_args(d, t / "run"),
            ["cannot write the checkpoint"],
            t / "run" / "checkpoints",
            CHECKPOINT_FINAL_NAMES,
        ),
    ),
    "train: disk full writing a checkpoint's meta.json": (
        lambda mp: full_disk_on_fsync(mp, lambda name: name == "meta.json.tmp"),
        lambda d, r, t: (
            train_args(d, t / "run"),
            ["cannot write the checkpoint"],
            t / "run" / "checkpoints",
            CHECKPOINT_FINAL_NAMES,
        ),
    ),
    "prepare synthetic: disk full": (
        full_disk_for_parquet,
        lambda d, r, t: (
            ["prepare", "synthetic", str(t / "out"), "--rows", "300", "--users", "50"],
            ["cannot write part-00000.parquet", f"{t / 'out' / 'train'}: "],
            t,
            ["out"],
        ),
    ),
}


@pytest.mark.parametrize("case", list(DISK_FULL_CASES))
def test_a_full_disk_exits_2_naming_the_folder_and_leaves_nothing_half_written(
    case: str,
    data: Path,
    run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fault, make = DISK_FULL_CASES[case]
    argv, fragments, folder, final_names = make(data, run, tmp_path)
    fault(monkeypatch)
    capsys.readouterr()
    assert main(argv) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in [*fragments, str(folder), "No space left on device", "Fix: free space"]:
        assert fragment in err, (fragment, err)
    assert [p for pattern in final_names for p in folder.glob(pattern)] == []  # nothing under a final name
    assert [p for p in tmp_path.rglob(".*") if ".tmp" in p.name] == []  # nor half-written beside it


# --- scoring output tied to its checkpoint and input ------------------------------------------------------


def score(run: Path | str, source: Path, out: Path, *extra: str) -> int:
    return main(["score", "--checkpoint", str(run), "--input", str(source), "--output", str(out), *extra])


def row_ids(folder: Path) -> list[int]:
    return sorted(
        ds.dataset(folder, format="parquet").to_table(columns=["row_id"]).column("row_id").to_pylist()
    )


def test_other_checkpoint_or_input_refused_then_overwrite(
    data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = checkpoints(run)[:2]
    out = tmp_path / "scores"
    assert score(first, data / "test", out) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert score(second, data / "test", out) == 2
    err = capsys.readouterr().err
    assert (
        f"checkpoint {first.resolve()}" in err
        and f"not of {second.resolve()}" in err
        and "--overwrite" in err
    )
    assert score(first, data / "valid", out) == 2  # scores of another input
    assert "they score input" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched
    assert score(second, data / "test", out, "--overwrite") == 0
    assert row_ids(out) == row_ids(data / "test")
    entries = [json.loads(p.read_text()) for p in (out / "_manifest").glob("part-*.json")]
    assert entries and all(e["checkpoint"]["path"] == str(second.resolve()) for e in entries)


def test_changed_and_removed_input_files_leave_each_current_row_once(
    data: Path, run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "in", tmp_path / "scores"
    source.mkdir()
    table = pq.read_table(data / "train")
    pq.write_table(table.slice(0, 1000), source / "a.parquet", row_group_size=250)
    pq.write_table(table.slice(1000, 1200), source / "b.parquet", row_group_size=300)
    assert score(run, source, out) == 0
    assert row_ids(out) == row_ids(source)
    pq.write_table(
        table.slice(1000, 600), source / "b.parquet", row_group_size=200
    )  # halved, other row groups
    capsys.readouterr()
    assert score(run, source, out) == 0
    assert "(3 unit(s), 4 already done, 4 stale part(s) removed)" in capsys.readouterr().out
    assert row_ids(out) == row_ids(source)  # every current row exactly once: none stale, none twice
    (source / "a.parquet").unlink()
    assert score(run, source, out) == 0
    assert row_ids(out) == row_ids(source)
    assert len(list(out.glob("part-*.parquet"))) == len(list((out / "_manifest").glob("part-*.json"))) == 3


# --- prepare: refusal, --overwrite, atomic replace --------------------------------------------------------


def test_prepare_overwrite_replaces_a_foreign_folder_but_never_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = foreign_folder(tmp_path)
    assert main(["prepare", "synthetic", str(out), "--rows", "300", "--users", "50", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["oracle.json", "summary.json", "test", "train", "valid"]
    assert main(["prepare", "synthetic", str(out), "--rows", "200", "--users", "50"]) == 0  # its own output
    monkeypatch.chdir(foreign_folder(tmp_path, "cwd"))
    capsys.readouterr()
    assert main(["prepare", "synthetic", ".", "--rows", "100", "--overwrite"]) == 2
    assert "refusing to replace the current folder" in capsys.readouterr().err
    assert (tmp_path / "cwd" / "notes.txt").exists()


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, module: object, name: str, n: int) -> None:
    """Make ``module.name`` raise on its ``n``-th call (after earlier calls wrote some files)."""
    original, calls = getattr(module, name), []

    def failing(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == n:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("preparer", ["movielens", "synthetic --days", "ranking"])
def test_a_failed_prepare_leaves_the_earlier_output_as_it_was(
    preparer: str, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crossrank.pipeline.prepare import ranking_set
    from crossrank.pipeline.prepare.movielens import job as movielens_job
    from crossrank.pipeline.prepare.synthetic import daily

    if preparer == "movielens":
        out, argv = (
            tmp_path / "ml",
            ["prepare", "movielens", str(movielens_src(tmp_path)), str(tmp_path / "ml")],
        )
        argv += ["--n-test", "1", "--n-valid", "1"]
        target, fail = out, (movielens_job, "write_split", 2)
    elif preparer == "ranking":
        out = tmp_path / "syn"
        prepare_synthetic(out, TINY)
        argv = ["prepare", "ranking", str(out), "--negatives", "9"]
        target, fail = out, (ranking_set, "_expand_groups", 1)
    else:
        out = tmp_path / "daily"
        argv = ["prepare", "synthetic", str(out), "--rows", "600", "--users", "50", "--days", "2"]
        argv += ["--new-item-frac", "0.2"]
        target, fail = out, (daily, "_visible_on_first_day", 1)
    assert main(argv) == 0
    before = _snapshot(target)
    _fail_on_call(monkeypatch, *fail)
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)
    assert _snapshot(target) == before
    hidden = [p.name for p in target.parent.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert hidden == []


# --- errors through torchrun / TorchX ---------------------------------------------------------------------


def test_under_torchrun_the_failing_rank_writes_the_error_file_and_its_peer_one_line(
    data: Path, tmp_path: Path
) -> None:
    # Two files, one per rank (the larger to rank 0); rank 1's has a null id inside a history list in its
    # first batch: invisible to the metadata pre-flight (which every rank runs over every file), so only
    # rank 1 finds it, mid-job, and rank 0 is left waiting in a collective.
    train = tmp_path / "train"
    table = pq.read_table(data / "train")

    def null_in_history(t: pa.Table) -> pa.Table:
        lists = t.column("hist_A").to_pylist()
        lists[3] = [*(lists[3] or []), None]
        return set_column(t, "hist_A", lists)

    bad_copy(data, train / "b", lambda x: null_in_history(x.slice(1200, 800)))
    pq.write_table(table.slice(0, 1200), train / "a.parquet")
    error_file = tmp_path / "error.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--rdzv-backend=c10d"]
    cmd += ["--rdzv-endpoint=localhost:0", f"--log-dir={tmp_path / 'logs'}", "--redirects=3"]
    cmd += ["-m", "crossrank.pipeline.cli", *train_args(data, tmp_path / "run", train)]
    env = {**os.environ, "TORCHELASTIC_ERROR_FILE": str(error_file), "LOGLEVEL": "WARNING"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    message = json.loads(error_file.read_text())["message"]["message"]
    bad = train / "b" / "part-00000.parquet"
    assert message.startswith(f"{bad} (row group 0): [hist_A] ") and "null" in message
    assert "Fix:" in message and "Traceback" not in message
    logs = {p.parent.name: p.read_text() for p in (tmp_path / "logs").rglob("stderr.log")}
    assert "crossrank: error: " + message in logs["1"] and "Traceback" not in logs["1"]
    peer = [line for line in logs["0"].splitlines() if line.strip() and "it/s]" not in line]
    assert "Traceback" not in logs["0"] and len(peer) <= 3, logs["0"]
    assert any("rank 0 stopped: a collective failed" in line for line in peer), logs["0"]


def _component_prefix(monkeypatch: pytest.MonkeyPatch, python: str) -> str:
    from torchx_components import crossrank

    monkeypatch.setattr(crossrank.sys, "executable", python)
    cmd = crossrank.train(j="1x2").roles[0].args[1]
    return cmd[: cmd.index("torchrun --rdzv_backend")]


def test_components_find_torchrun_without_the_environment_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prefix = _component_prefix(monkeypatch, sys.executable)
    env = {"PATH": "/usr/bin:/bin", "TORCHELASTIC_ERROR_FILE": str(tmp_path / "e.json")}
    found = subprocess.run(
        ["bash", "-c", prefix + "command -v torchrun"], env=env, capture_output=True, text=True
    )
    assert found.stdout.strip() == str(Path(sys.executable).parent / "torchrun")
    prefix = _component_prefix(monkeypatch, str(tmp_path / "no-venv" / "python"))
    failed = subprocess.run(["bash", "-c", prefix + "echo ran"], env=env, capture_output=True, text=True)
    assert failed.returncode == 127 and "ran" not in failed.stdout
    assert "torchrun is not on PATH" in failed.stderr and "Fix:" in failed.stderr
    message = json.loads((tmp_path / "e.json").read_text())["message"]
    assert (
        "Fix: activate the environment" in message["message"] and int(message["extraInfo"]["timestamp"]) > 0
    )


# --- warnings, error lines, the ValueError mapping --------------------------------------------------------


def test_warnings_stay_visible_except_the_named_noise() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _quiet_third_party()
        warnings.warn_explicit(
            "`broadcast_buffers` is deprecated.",
            FutureWarning,
            "x.py",
            1,
            module="torchrec.distributed.model_parallel",
        )
        warnings.warn_explicit(
            "something else", FutureWarning, "x.py", 1, module="torchrec.distributed.model_parallel"
        )
        warnings.warn_explicit("soon gone", DeprecationWarning, "y.py", 1, module="crossrank.models.ranker")
    assert [str(w.message) for w in seen] == ["something else", "soon gone"]


def test_an_error_starts_on_a_line_of_its_own_after_a_progress_bar(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tqdm import tqdm

    bar = tqdm(total=10, file=sys.stderr, mininterval=0)
    bar.update(3)
    _print_error("crossrank: error: bad")
    lines = capsys.readouterr().err.replace("\r", "\n").split("\n")
    assert "crossrank: error: bad" in lines


def test_a_value_error_from_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the model code's own checks (``raise ValueError`` in crossrank.models, e.g. the num_heads case
    above) become an InputError; any other ValueError while building the model is a bug, raised as it is."""
    from crossrank.features.spec import load_spec
    from crossrank.pipeline.core.distributed import init_distributed
    from crossrank.pipeline.training import sharding
    from crossrank.pipeline.training.config import load_config

    cfg, spec = load_config(REPO / "configs/demo.yaml", [f"data.spec={SPEC}"]), load_spec(SPEC)
    monkeypatch.setattr(sharding, "build_ranker", lambda *a, **k: int("not a number"))
    with pytest.raises(ValueError, match="invalid literal") as e:
        sharding.build_sharded_model(spec, cfg, init_distributed())
    assert not isinstance(e.value, InputError)
