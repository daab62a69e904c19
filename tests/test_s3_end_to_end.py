"""Object storage end to end (issue 13): a real S3-compatible server (moto's, on a free localhost port) holds
everything: ``prepare synthetic s3://...`` -> a 2-process training job (config, spec, data and run folder on
S3) that checkpoints -> a second job that resumes from the latest checkpoint on S3 -> ``score`` into an S3
folder -> a restarted scoring job after a crash between a part and its manifest entry, which rescores only
that unit: every test row exactly once. Nothing is written locally except the cache folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from crossrank.features.storage import as_path
from crossrank.pipeline.cli.main import main
from crossrank.pipeline.scoring.score import run_score
from crossrank.pipeline.training.config import load_config
from crossrank.pipeline.training.loop import train
from tests.conftest import launch

REPO = Path(__file__).resolve().parents[1]
BUCKET = "crossrank-test"
ROOT = f"s3://{BUCKET}"
CONFIG = f"""\
data:
  spec: {ROOT}/specs/synthetic.yaml
  train: {ROOT}/data/train
  valid: {ROOT}/data/valid
  test: {ROOT}/data/test
  batch_size: 256
model:
  encoder: {{memory_size: 256}}
train:
  epochs: 1
  checkpoint_every: 3
  log_every: 2
run_dir: {ROOT}/run
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """moto's S3 server on a free port, with the environment every client (and spawned rank) reads; yields
    the local cache folder (the only local place a job may write)."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    cache = tmp_path_factory.mktemp("cache")
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "CROSSRANK_CACHE": str(cache),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    S3FileSystem.clear_instance_cache()  # fsspec keeps clients per process: not one of an earlier server
    as_path(ROOT).fs.mkdir(BUCKET)
    try:
        yield cache
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        S3FileSystem.clear_instance_cache()


def _rows(uri: str) -> list[int]:
    """The row ids of a Parquet folder on S3, read with pyarrow's own S3 file system."""
    fs, path = pafs.FileSystem.from_uri(uri)
    files = [
        f.path
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if f.path.endswith(".parquet")
    ]
    return sorted(ds.dataset(files, filesystem=fs).to_table(columns=["row_id"])["row_id"].to_pylist())


def _job(scores: str) -> dict[str, Any]:
    """One rank: train (checkpoints on S3), train again with a second epoch (resumes from S3), score, then
    score again after a simulated crash between a part and its manifest entry."""
    first = train(load_config(f"{ROOT}/config.yaml"))
    second = train(load_config(f"{ROOT}/config.yaml", ["train.epochs=2"]))
    scored = run_score(f"{ROOT}/run", f"{ROOT}/data/test", scores, 512, ["label"])
    if int(os.environ["RANK"]) == 0:
        (as_path(scores) / "_manifest" / "part-00000.json").unlink()  # the crash: a part without its entry
    import torch.distributed as dist

    dist.barrier()
    rescored = run_score(f"{ROOT}/run", f"{ROOT}/data/test", scores, 512, ["label"])
    return {
        "steps": (first.steps, second.steps),
        "load_s": second.checkpoint_load_s,
        "scored": (scored.units_scored, scored.units_skipped),
        "rescored": (rescored.units_scored, rescored.units_skipped),
    }


def test_prepare_train_resume_score_and_rescore_all_on_s3(
    s3: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder
    prepare = ["prepare", "synthetic", f"{ROOT}/data", "--users", "200", "--items-per-domain", "100"]
    assert main(
        [*prepare, "--rows", "2000", "--max-len", "20", "--seed", "1", "--row-group-size", "500"]
    ) in (0, None)
    root = as_path(ROOT)
    assert (root / "data" / "summary.json").is_file()  # the commit marker, uploaded last
    (root / "specs" / "synthetic.yaml").write_text(
        (REPO / "features" / "specs" / "synthetic.yaml").read_text()
    )
    (root / "config.yaml").write_text(CONFIG)

    work = tmp_path / "launcher"
    work.mkdir()
    out = launch(2, work, _job, f"{ROOT}/scores")[0]

    assert out["steps"][1] > out["steps"][0] > 0 and out["load_s"] > 0  # the second job resumed from S3
    steps = sorted(p.name for p in (root / "run" / "checkpoints").iterdir())
    assert steps and all((root / "run" / "checkpoints" / s / "meta.json").is_file() for s in steps)
    assert len(list((root / "run" / "checkpoints" / steps[-1]).glob("*.distcp"))) == 2  # each rank's shards
    assert (root / "run" / "best" / "meta.json").is_file() and (root / "run" / "metrics.json").is_file()
    assert list((root / "run" / "tensorboard").glob("events.out.tfevents.*"))
    units = sum(out["scored"])
    assert out["scored"] == (units, 0) and out["rescored"] == (1, units - 1)  # only the crashed unit again
    assert _rows(f"{ROOT}/scores") == _rows(f"{ROOT}/data/test")  # every row exactly once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launcher"]  # nothing else written locally
    assert sorted(p.name for p in work.iterdir() if not p.name.startswith("rdzv-")) == []
