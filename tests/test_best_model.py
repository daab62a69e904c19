"""Validation rounds: every ``train.validate_every`` steps and at epoch ends, a checkpoint first, the best one
copied to ``RUN_DIR/best`` (crash-safe), early stopping, exact resume of all of it, ``score`` / ``evaluate``
of a run folder using its best checkpoint, and TensorBoard scalars."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import crossrank.pipeline.training.loop as loop_mod
from crossrank.features.errors import InputError
from crossrank.features.spec import load_spec
from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.scoring.evaluate import run_evaluate
from crossrank.pipeline.scoring.score import run_score
from crossrank.pipeline.training import checkpoint as ckpt_mod
from crossrank.pipeline.training.checkpoint import (
    best_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    promote_best,
    read_meta,
    resolve_checkpoint,
)
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import TrainResult, check_select_metric, train

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "synthetic.yaml"
EPOCH = 10  # steps per epoch (train.max_steps)
EVERY = 4  # train.validate_every
PATIENCE = 2


def overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """A short run whose huge learning rates make validation stop improving after a few rounds."""
    return [
        f"data.spec={SPEC}",
        f"data.train={data / 'train'}",
        f"data.valid={data / 'valid'}",
        f"data.test={data / 'test'}",
        "data.batch_size=64",
        "model.encoder.memory_size=256",
        "train.epochs=3",
        f"train.max_steps={EPOCH}",
        "train.log_every=1",
        f"train.validate_every={EVERY}",
        f"train.early_stop_patience={PATIENCE}",
        "train.dense_lr=0.3",
        "train.sparse_lr=5.0",
        "train.keep_checkpoints=50",
        f"run_dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def diverging(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    run_dir = tmp_path_factory.mktemp("diverging") / "run"
    return run_dir, train(load_config(None, overrides(small_synthetic, run_dir)))


def schedule() -> list[int]:
    """Global steps of the rounds of 3 epochs of 10 steps, validating every 4 steps and at epoch ends."""
    return sorted({s for s in range(1, 3 * EPOCH + 1) if s % EVERY == 0 or s % EPOCH == 0})


def expected_selection(values: list[float], higher: bool, patience: int) -> tuple[int, int | None]:
    """(index of the best round, index of the round that stops the run or None), recomputed from values."""
    best, bad, stop = 0, 0, None
    for i, v in enumerate(values):
        if i == 0 or (v > values[best] if higher else v < values[best]):
            best, bad = i, 0
        else:
            bad += 1
        if patience and bad >= patience:
            stop = i
            break
    return best, stop


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def by_step_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:09d}"


def test_best_checkpoint_and_early_stopping_follow_the_recorded_rounds(
    diverging: tuple[Path, TrainResult], small_synthetic: Path
) -> None:
    run_dir, result = diverging
    rounds = result.rounds
    steps = [r["step"] for r in rounds]
    assert steps == schedule()[: len(rounds)]  # mid-epoch and epoch-end rounds, the same on every epoch
    values = [r["value"] for r in rounds]
    assert values == [v["auc"] for v in result.valid]
    b, stop = expected_selection(values, higher=True, patience=PATIENCE)
    assert stop is not None and b < stop  # the scenario: a best round, later worse ones, an early stop
    assert result.steps == steps[stop] < 3 * EPOCH
    assert result.stopped_early == {"step": steps[stop], "epoch": rounds[stop]["epoch"], "patience": PATIENCE}
    assert [r["rounds_without_improvement"] for r in rounds][stop] == PATIENCE
    assert result.best == {
        "metric": "auc",
        "value": values[b],
        "step": steps[b],
        "epoch": rounds[b]["epoch"],
        "path": str(run_dir / "best"),
    }
    best = read_meta(run_dir / "best")
    assert best["step"] == steps[b] and best["result"]["best"]["step"] == steps[b]
    assert best["result"]["valid"][-1]["auc"] == values[b] and best["validation_due"] is None
    assert (run_dir / "best" / "__0_0.distcp").read_bytes() == (
        run_dir / "checkpoints" / f"step-{steps[b]:09d}" / "__0_0.distcp"
    ).read_bytes()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best"] == result.best and metrics["stopped_early"] == result.stopped_early
    assert metrics["test"]["auc"] == result.test["auc"]  # the test split still ran
    # ... on the best checkpoint's weights, not the last (later, worse) ones
    assert metrics["test_step"] == steps[b] != result.steps
    best_on_test = run_evaluate(str(run_dir), str(small_synthetic / "test"), None, 2048)
    assert result.test["auc"] == pytest.approx(best_on_test["auc"], abs=1e-6)
    last_on_test = run_evaluate(
        str(by_step_path(run_dir, steps[stop])), str(small_synthetic / "test"), None, 2048
    )
    assert abs(last_on_test["auc"] - result.test["auc"]) > 1e-4  # the scenario tells them apart
    # a checkpoint before each round, with the position a resume continues from (epoch ends: next epoch)
    by_step = {read_meta(c)["step"]: read_meta(c) for c in complete_checkpoints(run_dir)}
    assert (
        sorted(by_step) == steps
        and latest_checkpoint(run_dir) == run_dir / "checkpoints" / f"step-{steps[stop]:09d}"
    )
    for s, meta in by_step.items():
        assert (meta["epoch"], meta["epoch_step"]) == (
            (s // EPOCH, 0) if s % EPOCH == 0 else divmod(s, EPOCH)
        )
        assert meta["validation_due"] is None and meta["result"]["rounds"][-1]["step"] == s
    assert by_step[steps[stop]]["result"]["stopped_early"] == result.stopped_early


def test_validation_rounds_leave_training_unchanged(
    diverging: tuple[Path, TrainResult], small_synthetic: Path, tmp_path: Path
) -> None:
    """The pipeline runs dry before each mid-epoch round: the same losses as a run without validation. Without a
    valid split there is nothing to select on: no rounds, no best folder, a note."""
    _, reference = diverging
    run_dir = tmp_path / "novalid"
    cfg = load_config(
        None, overrides(small_synthetic, run_dir, "data.valid=", "train.epochs=1", "train.tensorboard=false")
    )
    result = train(cfg)
    assert result.loss_curve == reference.loss_curve[:EPOCH]
    assert result.rounds == [] and result.best is None and result.stopped_early is None
    assert "no valid split" in result.selection_note
    assert best_checkpoint(run_dir) is None and not (run_dir / "best").exists()
    assert resolve_checkpoint(run_dir) == latest_checkpoint(run_dir)
    assert not (run_dir / "tensorboard").exists()


def test_a_lower_is_better_metric_keeps_its_lowest_round(small_synthetic: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "logloss"
    extra = ["train.epochs=1", "train.max_steps=6", "train.validate_every=2", "train.early_stop_patience=0"]
    extra += [
        "model.sequence_encoder=mean",  # pinned: this seeded mean run's logloss rises after round 0
        "train.select_metric=logloss",
        "train.dense_lr=0.03",
        "train.sparse_lr=0.5",
        "train.tensorboard=false",
    ]
    result = train(load_config(None, overrides(small_synthetic, run_dir, *extra)))
    values = [r["value"] for r in result.rounds]
    assert [r["step"] for r in result.rounds] == [2, 4, 6] and values == [v["logloss"] for v in result.valid]
    b, stop = expected_selection(values, higher=False, patience=0)
    assert stop is None and b < len(values) - 1 and values[-1] > values[b]  # the last round is worse
    assert result.best is not None and result.best["step"] == result.rounds[b]["step"]
    assert read_meta(run_dir / "best")["step"] == result.rounds[b]["step"]
    assert result.stopped_early is None and result.steps == 6


def test_score_and_evaluate_of_a_run_folder_use_its_best_checkpoint(
    diverging: tuple[Path, TrainResult],
    small_synthetic: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir, result = diverging
    assert result.best is not None
    assert resolve_checkpoint(run_dir) == run_dir / "best"
    assert resolve_checkpoint(run_dir / "checkpoints") == latest_checkpoint(run_dir)
    assert loop_mod._resume_source(
        load_config(None, overrides(small_synthetic, tmp_path, f"train.resume={run_dir}"))
    ) == latest_checkpoint(run_dir)  # resume: latest
    metrics = run_evaluate(str(run_dir), str(small_synthetic / "valid"), None, 2048)
    assert metrics["auc"] == pytest.approx(result.best["value"], abs=1e-9)
    out = capsys.readouterr().out
    assert f"using checkpoint {run_dir / 'best'} (the best of {run_dir}: valid auc" in out
    run_score(str(run_dir), str(small_synthetic / "valid"), str(tmp_path / "scores"), 2048, [])
    assert f"using checkpoint {run_dir / 'best'}" in capsys.readouterr().out


def test_resume_continues_best_and_patience_and_a_failed_validation_loses_no_step(
    diverging: tuple[Path, TrainResult],
    small_synthetic: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resume from the round before the early stop (one round without improvement recorded there); the
    stopping round's validation fails after its checkpoint; a second resume runs that round and stops exactly
    where the uninterrupted run stopped. TensorBoard appends, dropping what followed each checkpoint."""
    reference_dir, reference = diverging
    assert reference.stopped_early is not None and reference.best is not None
    start, last = reference.rounds[-2:]
    assert start["rounds_without_improvement"] == PATIENCE - 1  # so the restored counter decides the stop
    name = f"step-{start['step']:09d}"
    run_dir = tmp_path / "resumed"
    shutil.copytree(reference_dir / "checkpoints" / name, run_dir / "checkpoints" / name)
    shutil.copytree(reference_dir / "best", run_dir / "best")
    shutil.copytree(reference_dir / "tensorboard", run_dir / "tensorboard")
    cfg = load_config(None, overrides(small_synthetic, run_dir))

    def failing(*args: Any, **kwargs: Any) -> dict[str, float]:
        raise OSError("valid split unreadable")

    monkeypatch.setattr(loop_mod, "evaluate", failing)
    with pytest.raises(OSError, match="unreadable"):
        train(cfg)
    monkeypatch.undo()
    due = read_meta(latest_checkpoint(run_dir))  # the stopping round's checkpoint: its steps are kept
    assert due["step"] == last["step"] and due["validation_due"] == last["epoch"]
    assert read_meta(run_dir / "best")["step"] == reference.best["step"]
    result = train(cfg)
    assert result.loss_curve == reference.loss_curve and result.steps == reference.steps
    assert result.rounds == reference.rounds and result.valid == reference.valid
    assert result.stopped_early == reference.stopped_early
    assert result.best == {**reference.best, "path": str(run_dir / "best")}
    assert result.test["auc"] == reference.test["auc"]
    assert read_meta(latest_checkpoint(run_dir))["validation_due"] is None
    got, want = scalars(run_dir), scalars(reference_dir)
    for tag in ("train/loss", "valid/auc", "valid/ne", "test/auc"):
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # each step exactly once
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag


def test_a_crash_while_copying_the_best_keeps_the_previous_best(
    diverging: tuple[Path, TrainResult], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = diverging
    run_dir = tmp_path / "run"
    shutil.copytree(source / "checkpoints", run_dir / "checkpoints")
    shutil.copytree(source / "best", run_dir / "best")
    before = read_meta(run_dir / "best")
    other = latest_checkpoint(run_dir)
    assert other is not None and read_meta(other)["step"] != before["step"]
    ctx = init_distributed()
    copied: list[str] = []
    real_copy = ckpt_mod._copy_file

    def crash_mid_copy(src: Path, dst: Path) -> None:
        if copied:
            raise KeyboardInterrupt("killed while copying")
        copied.append(src.name)
        real_copy(src, dst)

    monkeypatch.setattr(ckpt_mod, "_copy_file", crash_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        promote_best(run_dir, other, {"note": "new"}, ctx)
    assert (run_dir / ".tmp-best").is_dir() and copied  # a partial copy, left behind...
    assert (
        read_meta(run_dir / "best") == before and resolve_checkpoint(run_dir) == run_dir / "best"
    )  # ...ignored
    monkeypatch.setattr(ckpt_mod, "_copy_file", real_copy)
    # killed between the two renames: the previous best waits at .old-best and still counts
    real_replace, calls = ckpt_mod.os.replace, []

    def crash_on_second_rename(a: Any, b: Any) -> None:
        calls.append(b)
        if Path(b).name == "best":
            raise KeyboardInterrupt("killed between renames")
        real_replace(a, b)

    monkeypatch.setattr(ckpt_mod.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        promote_best(run_dir, other, {"note": "new"}, ctx)
    monkeypatch.undo()
    assert not (run_dir / "best").exists() and best_checkpoint(run_dir) == run_dir / ".old-best"
    assert read_meta(resolve_checkpoint(run_dir)) == before
    # the next promotion completes and cleans up
    assert promote_best(run_dir, other, {"note": "new"}, ctx) == run_dir / "best"
    meta = read_meta(run_dir / "best")
    assert meta["note"] == "new" and meta["step"] == read_meta(other)["step"]
    assert not (run_dir / ".tmp-best").exists() and not (run_dir / ".old-best").exists()
    assert sorted(p.name for p in (run_dir / "best").iterdir()) == sorted(p.name for p in other.iterdir())


def test_tensorboard_holds_the_scalars(diverging: tuple[Path, TrainResult]) -> None:
    run_dir, result = diverging
    got = scalars(run_dir)
    assert got["train/loss"] == [(i + 1, pytest.approx(v, rel=1e-6)) for i, v in enumerate(result.loss_curve)]
    assert [s for s, _ in got["train/samples_per_s"]] == list(range(1, result.steps + 1))
    assert got["train/lr/dense"] and all(v == pytest.approx(0.3) for _, v in got["train/lr/dense"])
    assert got["train/lr/sparse"] and all(v == pytest.approx(5.0) for _, v in got["train/lr/sparse"])
    round_steps = [r["step"] for r in result.rounds]
    directions = [k.removeprefix("ortho/") for k in result.valid[0] if k.startswith("ortho/")]
    assert directions  # the fusion's |cos(X, X')| per direction
    for name in ("auc", "ne", "logloss", "auc/A", "auc/B", *(f"ortho/{d}" for d in directions)):
        want = [(s, v[name]) for s, v in zip(round_steps, result.valid, strict=True)]
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v in want] == got[f"valid/{name}"], name
    assert got["test/auc"] == [(result.steps, pytest.approx(result.test["auc"], rel=1e-6))]
    assert "valid/rows" not in got and "test/rows/A" not in got


def test_select_metric_must_name_a_domain(small_synthetic: Path, tmp_path: Path) -> None:
    cfg = load_config(None, overrides(small_synthetic, tmp_path, "train.select_metric=auc/C"))
    with pytest.raises(InputError, match=r"names no domain.*auc/A"):
        check_select_metric(cfg, load_spec(SPEC))
    check_select_metric(
        load_config(None, overrides(small_synthetic, tmp_path, "train.select_metric=auc/B")), load_spec(SPEC)
    )
    assert not loop_mod._improves(float("nan"), None, True) and loop_mod._improves(0.1, {"value": 0.2}, False)
