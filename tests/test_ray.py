"""The 2-process training job end to end on Ray: README's Ray commands against a Ray head started here.

The test runs the README's commands as written, with free ports instead of 6379 / 8265 and a temporary
folder instead of /tmp/crossrank-ray. It starts the head with `ray start --head --block` in its own process
group and stops that group as `ray stop` stops Ray's processes (SIGTERM, then SIGKILL after a grace period),
but by process group: `ray stop` itself would stop every Ray process of the user on the machine. 1.5
minutes on 2 idle cores (the head's start is ~25 s of it), 3 loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_torchx_config import REPO, cluster_blocks, venv_env

README_DIR = "/tmp/crossrank-ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replace(words: list[str], old: str, new: str) -> list[str]:
    return [word.replace(old, new) for word in words]


def _group_alive(pgid: int) -> bool:
    """Whether a live process (not a zombie waiting for its reaper) of the process group is left."""
    table = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True).stdout
    return any(
        int(group) == pgid and not stat.startswith("Z") for group, stat in map(str.split, table.splitlines())
    )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the head's process group, then SIGKILL to what is left of it after 10 s (Ctrl-C, SIGINT,
    leaves the GCS server and the raylet running)."""
    os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for_dashboard(port: int, head: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Ray dashboard did not answer on port {port}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def work() -> Iterator[Path]:
    # Short: Ray's Unix sockets live under its --temp-dir, and socket paths are limited to ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="crx-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_readme_ray_job_trains_on_two_processes(work: Path) -> None:
    _, prepare, start, run = (words for _, words in cluster_blocks()[-1])
    gcs, dashboard = _free_port(), _free_port()
    data = str(work / "demo")
    prepare = _replace(prepare, README_DIR, data)
    start = _replace(_replace(start, "6379", str(gcs)), "8265", str(dashboard))
    start += ["--temp-dir", str(work / "ray")]
    run = _replace(_replace(run, README_DIR, data), "127.0.0.1:8265", f"127.0.0.1:{dashboard}")
    env = venv_env()
    log = work / "ray-start.log"
    with log.open("wb") as out:
        head = subprocess.Popen(
            start, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    began = time.monotonic()
    try:
        made = subprocess.run(prepare, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stdout + made.stderr
        _wait_for_dashboard(dashboard, head, log)
        up = time.monotonic()
        job = subprocess.run(run, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
        output = job.stdout + job.stderr
        assert job.returncode == 0 and "Job finished: SUCCEEDED" in output, output[-4000:]
        # The training log is the Ray job's: README's `ray job logs` with the job id from the app handle.
        job_id = re.search(rf"ray://torchx/127\.0\.0\.1:{dashboard}-(\S+)", output)[1]  # type: ignore[index]
        logs = subprocess.run(
            ["ray", "job", "logs", "--address", f"http://127.0.0.1:{dashboard}", job_id],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "metrics in " + str(work / "demo" / "run" / "metrics.json") in logs.stdout, logs.stdout[-3000:]
        # Where the time goes (pytest -s shows it).
        print(f"Ray head up after {up - began:.0f} s, job and its logs {time.monotonic() - up:.0f} s")
    finally:
        _stop_group(head)
    metrics = json.loads((work / "demo" / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] > 0
    assert 0.0 < metrics["test"]["auc"] < 1.0 and [v["epoch"] for v in metrics["valid"]] == [0]
    assert not _group_alive(head.pid)
