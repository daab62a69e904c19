"""Shared fixtures: small synthetic data (seconds to make) and the real MovieLens folders."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from crossrank.pipeline.core.distributed import launch_local
from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package). It is registered in
    ``sys.modules`` while it runs, because dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


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


# The local multi-process launcher the tests share (a file rendezvous, no fixed ports).
launch = launch_local
