"""Checkpoints: exact resume (also after SIGKILL of a 2-process job), crash-safe writes, resharding,
offline scoring with exactly-once output, and no arbitrary unpickling."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from crossrank.features.errors import InputError
from crossrank.pipeline.core.distributed import init_distributed
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.scoring.model import checkpoint_config, load_for_inference
from crossrank.pipeline.scoring.score import run_score, score
from crossrank.pipeline.training import checkpoint as ckpt_mod
from crossrank.pipeline.training.checkpoint import complete_checkpoints, latest_checkpoint, resolve_checkpoint
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.conftest import launch

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "synthetic.yaml"


def overrides(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.spec={SPEC}",
        f"data.train={data / 'train'}",
        f"data.valid={data / 'valid'}",
        f"data.test={data / 'test'}",
        "data.batch_size=128",
        "train.epochs=2",
        "train.log_every=5",
        "train.checkpoint_every=10",
        "train.keep_checkpoints=20",
        "model.encoder.memory_size=256",
        f"run_dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def single_run(small_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("single") / "run"
    train(load_config(None, overrides(small_synthetic, run_dir)))
    return run_dir


def test_resume_from_a_mid_run_checkpoint_is_exact(
    single_run: Path, small_synthetic: Path, tmp_path: Path
) -> None:
    mid = complete_checkpoints(single_run)[1]  # step 20
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(mid, resumed / "checkpoints" / mid.name)
    result = train(load_config(None, overrides(small_synthetic, resumed)))  # resume: auto
    full = json.loads((single_run / "metrics.json").read_text())
    assert result.loss_curve == full["loss_curve"]  # the same trajectory, bit for bit
    assert result.test["auc"] == full["test"]["auc"] and result.steps == full["steps"]


def test_checkpoints_hold_everything_to_resume(single_run: Path) -> None:
    latest = latest_checkpoint(single_run)
    meta = json.loads((latest / "meta.json").read_text())
    assert meta["epoch"] == 2 and meta["epoch_step"] == 0 and meta["world_size"] == 1
    assert meta["config"]["model"]["encoder"]["memory_size"] == 256
    assert (latest / "spec.yaml").read_text() == SPEC.read_text()
    assert np.load(latest / "rng-rank0.npy", allow_pickle=False).dtype == np.uint8
    assert len(complete_checkpoints(single_run)) == len(list((single_run / "checkpoints").glob("step-*")))


def test_crash_during_checkpoint_write_keeps_the_previous_one(
    single_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(single_run / "checkpoints", run_dir / "checkpoints")
    before = latest_checkpoint(run_dir)
    loaded = load_for_inference(before, init_distributed())

    def crash(tmp: Path, final: Path) -> None:
        raise RuntimeError("killed while writing")

    monkeypatch.setattr(ckpt_mod, "_commit", crash)
    with pytest.raises(RuntimeError, match="killed while writing"):
        ckpt_mod.save_checkpoint(
            run_dir,
            999,
            loaded.sharded.model,
            None,
            {"epoch": 0, "epoch_step": 0},
            str(SPEC),
            init_distributed(),
        )
    assert (run_dir / "checkpoints" / ".tmp-step-000000999").is_dir()  # the half-written one is left behind
    assert latest_checkpoint(run_dir) == before  # ...and ignored
    load_for_inference(run_dir, init_distributed())  # the previous one still loads
    # an incomplete folder with the right name (no meta.json) is ignored too
    (run_dir / "checkpoints" / "step-000001000").mkdir()
    assert latest_checkpoint(run_dir) == before


def test_loading_never_unpickles_arbitrary_objects(single_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(latest_checkpoint(single_run), bad)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    (bad / ".metadata").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(
        InputError, match=r"cannot load the checkpoint: .*posix\.system, which is not allowed"
    ):
        load_for_inference(bad, init_distributed())
    assert not marker.exists()


def test_resolve_checkpoint_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path)


def test_scores_equal_the_model_forward(single_run: Path, small_synthetic: Path, tmp_path: Path) -> None:
    ctx = init_distributed()
    loaded = load_for_inference(single_run, ctx)
    score(loaded, small_synthetic / "test", tmp_path / "out", ctx, batch_size=100, passthrough=["label"])
    out = ds.dataset(tmp_path / "out", format="parquet").to_table().to_pandas().set_index("row_id")
    reader = ParquetBatchReader(loaded.spec, small_synthetic / "test", 256)
    with torch.no_grad():
        for batch in reader.batches():
            _, (_, logits, *_) = loaded.sharded.model(batch)
            real = batch.weights > 0
            expected = torch.sigmoid(logits[real]).numpy()
            got = out.loc[batch.row_ids[real].numpy(), "score"].to_numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    test = (
        ds.dataset(small_synthetic / "test", format="parquet")
        .to_table(columns=["row_id", "label"])
        .to_pandas()
    )
    assert (out.loc[test.row_id, "label"].to_numpy() == test.label.to_numpy()).all()  # passthrough kept


def test_scoring_killed_midway_and_restarted_scores_every_row_once(
    single_run: Path, small_synthetic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = init_distributed()
    loaded = load_for_inference(single_run, ctx)
    source = small_synthetic / "train"  # several row groups = several units
    out = tmp_path / "out"
    import crossrank.pipeline.scoring.score as score_mod

    calls = {"n": 0}
    original = score_mod.write_json_atomic

    def crash_on_third_manifest(obj, path):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the 3rd unit's scores are on disk, its manifest entry is not
            raise KeyboardInterrupt("killed")
        return original(obj, path)

    monkeypatch.setattr(score_mod, "write_json_atomic", crash_on_third_manifest)
    with pytest.raises(KeyboardInterrupt):
        score(loaded, source, out, ctx, batch_size=512)
    finished = len(list((out / "_manifest").glob("*.json")))
    units = len(ParquetBatchReader(loaded.spec, source, 512).units)
    assert 2 <= finished < units  # stopped mid-way
    monkeypatch.setattr(score_mod, "write_json_atomic", original)
    result = score(loaded, source, out, ctx, batch_size=512)
    assert result.units_skipped == finished and result.units_scored == units - finished
    got = ds.dataset(out, format="parquet").to_table(columns=["row_id"]).column("row_id").to_numpy()
    expected = ds.dataset(source, format="parquet").to_table(columns=["row_id"]).column("row_id").to_numpy()
    assert len(got) == len(expected) and sorted(got) == sorted(expected)


def _score_job(checkpoint: str, data: str, out: str) -> None:
    run_score(checkpoint, data, out, 300, [])


def _train_job(cfg):  # type: ignore[no-untyped-def]
    return train(cfg).test


def _scores(out: Path) -> dict[int, float]:
    table = ds.dataset(out, format="parquet").to_table().to_pandas()
    return dict(zip(table.row_id, table.score, strict=True))


def test_reshard_one_to_two_and_two_to_one_give_identical_scores(
    single_run: Path, small_synthetic: Path, tmp_path: Path
) -> None:
    data = small_synthetic / "train"
    # 1 -> 2: a single-process checkpoint scored by 1 and by 2 processes.
    one = latest_checkpoint(single_run)
    _score_job(str(one), str(data), str(tmp_path / "1on1"))
    launch(2, tmp_path, _score_job, str(one), str(data), str(tmp_path / "1on2"))
    a, b = _scores(tmp_path / "1on1"), _scores(tmp_path / "1on2")
    assert a.keys() == b.keys()
    np.testing.assert_allclose([a[k] for k in a], [b[k] for k in a], rtol=1e-5, atol=1e-6)
    # 2 -> 1: a checkpoint written by 2 processes, scored by 2 and by 1.
    two_run = tmp_path / "two"
    launch(2, tmp_path, _train_job, load_config(None, overrides(small_synthetic, two_run, "train.epochs=1")))
    two = latest_checkpoint(two_run)
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    launch(2, tmp_path, _score_job, str(two), str(data), str(tmp_path / "2on2"))
    _score_job(str(two), str(data), str(tmp_path / "2on1"))
    c, d = _scores(tmp_path / "2on2"), _scores(tmp_path / "2on1")
    assert c.keys() == d.keys() == a.keys()
    np.testing.assert_allclose([c[k] for k in c], [d[k] for k in c], rtol=1e-5, atol=1e-6)


def _torchrun(run_dir: Path, data: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "crossrank.pipeline.cli",
        "train",
    ]
    for o in overrides(data, run_dir, "train.checkpoint_every=5", "data.batch_size=64"):
        cmd += ["--set", o]
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _kill_job(run_dir: Path) -> None:
    """SIGKILL every process of the job: torchrun starts each worker in a session of its own, so killing
    the launcher's process group would leave the workers running (and writing checkpoints)."""
    victims = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if f"run_dir={run_dir}".encode() in cmdline.read_bytes():
                victims.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    assert victims, "no process of the job found"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and any(
        Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in victims
    ):
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def _finish(proc: subprocess.Popen[str], run_dir: Path) -> None:
    code = proc.wait(timeout=600)
    assert code == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]


def test_two_process_job_killed_mid_training_resumes_to_the_same_result(
    small_synthetic: Path, tmp_path: Path
) -> None:
    reference = tmp_path / "reference"
    _finish(_torchrun(reference, small_synthetic), reference)
    run = tmp_path / "killed"
    proc = _torchrun(run, small_synthetic)
    deadline = time.time() + 600
    while time.time() < deadline and len(complete_checkpoints(run)) < 2:
        assert proc.poll() is None, "the job finished before it could be killed"
        time.sleep(0.05)
    _kill_job(run)  # the launcher and both workers, no clean-up
    proc.wait()
    assert not (run / "metrics.json").exists()
    killed_at = json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"]
    _finish(_torchrun(run, small_synthetic), run)  # resume: auto
    ref = json.loads((reference / "metrics.json").read_text())
    got = json.loads((run / "metrics.json").read_text())
    assert 0 < killed_at < ref["steps"]
    assert got["steps"] == ref["steps"]
    np.testing.assert_allclose(got["loss_curve"], ref["loss_curve"], rtol=1e-5)
    for key in ("auc", "ne", "logloss", "auc/A", "auc/B"):
        assert got["test"][key] == pytest.approx(ref["test"][key], rel=1e-5), key


def test_an_older_checkpoint_keeps_the_encoder_it_was_trained_as(tmp_path: Path) -> None:
    """A checkpoint written before ``event_residual`` and ``query_init_std`` existed rebuilds the ELASTIC
    of its day (no residual), whatever today's defaults; a newer checkpoint keeps what it saved."""
    config = load_config(REPO / "configs" / "demo.yaml").to_dict()
    config["model"]["encoder"]["event_residual"] = True
    (tmp_path / "meta.json").write_text(json.dumps({"config": config}))
    assert checkpoint_config(tmp_path).model.encoder.event_residual is True
    for key in ("event_residual", "query_init_std", "recency_prior"):
        del config["model"]["encoder"][key]
    (tmp_path / "meta.json").write_text(json.dumps({"config": config}))
    encoder = checkpoint_config(tmp_path).model.encoder
    assert encoder.event_residual is False and encoder.query_init_std == 0.02 and encoder.recency_prior == 0
