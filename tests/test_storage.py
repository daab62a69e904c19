"""The storage layer (issue 13): URIs become ObjectPaths that do their I/O on the remote file system (here a
real moto S3 server on a free localhost port), local paths and ``file://`` stay plain paths, atomic writers and
the checkpoint commit work there, an ``hdfs://`` URI goes to pyarrow's HadoopFileSystem and fails clearly
without libhdfs, and a job of several nodes refuses a local output folder unless it is declared shared.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from crossrank.features.errors import InputError
from crossrank.features.files import list_parquet_files, open_parquet
from crossrank.features.storage import ObjectPath, as_path, is_remote, rmtree
from crossrank.pipeline.core.atomic import write_json_atomic, write_parquet_atomic
from crossrank.pipeline.core.distributed import check_shared_storage
from crossrank.pipeline.training.checkpoint import complete_checkpoints, latest_checkpoint

BUCKET = "storage-test"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty bucket on moto's S3 server, reached through AWS_ENDPOINT_URL like any S3-compatible store."""
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "CROSSRANK_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    S3FileSystem.clear_instance_cache()  # fsspec keeps clients per process: not one of an earlier server
    root = as_path(f"s3://{BUCKET}")
    root.fs.mkdir(BUCKET)
    try:
        yield root
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()
        S3FileSystem.clear_instance_cache()


def test_a_uri_is_an_object_path_and_a_local_path_stays_local(tmp_path: Path) -> None:
    p = as_path("s3://b/runs/demo")
    assert isinstance(p, ObjectPath) and is_remote(p)
    assert str(p / "checkpoints" / "step-1") == "s3://b/runs/demo/checkpoints/step-1"
    assert str(p.parent) == "s3://b/runs" and p.name == "demo"
    assert str(as_path(Path(str(p)))) == "s3://b/runs/demo"  # a plain Path of a URI becomes one again
    assert type(as_path(f"file://{tmp_path}")) is type(tmp_path) and as_path(f"file://{tmp_path}") == tmp_path
    assert type(as_path("runs/demo")) is type(Path("runs/demo"))
    with pytest.raises(TypeError, match="not a local path"):
        open(p)  # noqa: SIM115 (a local-only call on a URI fails loudly, never writes a folder "s3:")


def test_hdfs_goes_to_pyarrow_and_fails_clearly_without_libhdfs() -> None:
    with pytest.raises(InputError, match=r"hdfs://nn:8020/x: .*HadoopFileSystem.*libhdfs"):
        as_path("hdfs://nn:8020/x").exists()


def test_files_atomic_writers_and_listing_on_s3(bucket: Path) -> None:
    folder = bucket / "unit" / "data"
    table = pa.table({"row_id": list(range(10)), "x": [0.5] * 10})
    write_parquet_atomic(table, folder / "train" / "part-00000.parquet", row_group_size=4)
    write_parquet_atomic(table, folder / "train" / "sub" / "part-00001.parquet", row_group_size=10)
    write_json_atomic({"a": 1}, folder / "summary.json")
    assert json.loads((folder / "summary.json").read_text()) == {"a": 1}
    files = list_parquet_files(str(folder / "train"))
    assert [str(f) for f in files] == [
        f"s3://{BUCKET}/unit/data/train/part-00000.parquet",
        f"s3://{BUCKET}/unit/data/train/sub/part-00001.parquet",
    ]
    assert list_parquet_files(f"s3://{BUCKET}/unit/data/train/*.parquet") == files[:1]  # a glob
    assert open_parquet(files[0]).num_row_groups == 3 and files[0].stat().st_size > 0
    with pytest.raises(InputError, match="no such file or folder"):
        list_parquet_files(f"s3://{BUCKET}/unit/missing")
    rmtree(folder)
    assert not folder.exists()


def test_latest_on_s3_is_the_newest_step_whose_meta_json_exists(bucket: Path) -> None:
    """meta.json is the commit marker on a store without rename: a step without it does not count."""
    root = bucket / "commit" / "checkpoints"
    for step, committed in ((1, True), (2, True), (3, False)):
        (root / f"step-{step:09d}" / "__0_0.distcp").write_bytes(b"x")
        if committed:
            (root / f"step-{step:09d}" / "meta.json").write_text(json.dumps({"step": step}))
    assert [p.name for p in complete_checkpoints(bucket / "commit")] == ["step-000000001", "step-000000002"]
    assert (
        str(latest_checkpoint(str(bucket / "commit"))) == f"s3://{BUCKET}/commit/checkpoints/step-000000002"
    )


@pytest.mark.parametrize(
    ("env", "location", "refused"),
    [
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "runs/x", True),  # 2 nodes, a local folder
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "file:///mnt/x", True),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, "s3://b/runs/x", False),
        ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "CROSSRANK_SHARED_FS": "1"}, "/nfs/runs/x", False),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "runs/x", False),  # one node
        ({}, "runs/x", False),  # no launcher
    ],
)
def test_a_multi_node_job_needs_shared_storage(
    env: dict[str, str], location: str, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "CROSSRANK_SHARED_FS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if not refused:
        check_shared_storage(location, "run_dir")
        return
    with pytest.raises(InputError) as e:
        check_shared_storage(location, "run_dir")
    assert "WORLD_SIZE=4 > LOCAL_WORLD_SIZE=2" in str(e.value) and "run_dir is a local path" in str(e.value)
    assert "s3://" in e.value.fix and "CROSSRANK_SHARED_FS=1" in e.value.fix


def test_train_and_score_of_several_nodes_stop_at_start_on_a_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check runs first, before the process group, the data or the checkpoint is touched."""
    from crossrank.pipeline.scoring.score import run_score
    from crossrank.pipeline.training.config import load_config
    from crossrank.pipeline.training.loop import train

    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.delenv("CROSSRANK_SHARED_FS", raising=False)
    with pytest.raises(InputError, match=r"run_dir is a local path.*Fix: set run_dir to shared storage"):
        train(load_config(None, [f"run_dir={tmp_path / 'run'}", f"data.train={tmp_path / 'none'}"]))
    with pytest.raises(InputError, match=r"--output is a local path.*CROSSRANK_SHARED_FS=1"):
        run_score(str(tmp_path / "ckpt"), str(tmp_path / "in"), str(tmp_path / "scores"), 512, [])
