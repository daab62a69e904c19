"""Shared fixtures: small synthetic data (seconds to make) and the real MovieLens folders."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from pipeline.synthetic import SyntheticConfig, prepare_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-domain synthetic set with several row groups per split (so ranks get uneven shares)."""
    out = tmp_path_factory.mktemp("synthetic")
    prepare_synthetic(
        out,
        SyntheticConfig(users=400, items_per_domain=300, rows=12000, max_len=40, seed=3, row_group_size=1500),
    )
    return out


@pytest.fixture(scope="session")
def synthetic_spec() -> Path:
    return REPO / "features" / "specs" / "synthetic.yaml"


def launch(nproc: int, tmp_path: Path, fn: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` gloo processes with a file rendezvous (no fixed ports), as TorchRec's
    own DLRM tests do; returns each rank's return value."""
    lc = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint=str(tmp_path / f"rdzv-{uuid.uuid4().hex}"),
        rdzv_configs={"store_type": "file"},
        start_method="spawn",
        monitor_interval=1,
        max_restarts=0,
    )
    return elastic_launch(lc, entrypoint=fn)(*args)
