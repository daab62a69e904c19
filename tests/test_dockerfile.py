"""The cluster image installs the Makefile's pinned stack: both files parsed, no Docker needed.

The Dockerfile leaves out only the development tools; a pin added to or changed in the Makefile's DEPS,
STORAGE_DEPS or CLUSTER_DEPS without the Dockerfile (or the other way round) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# In the Makefile for the tests, lint and benchmarks, not needed by a job.
DEV_ONLY = {"pytest", "ruff", "mypy", "types-pyyaml", "pandas-stubs", "matplotlib", "moto"}


def _pins(words: list[str]) -> dict[str, str]:
    """{normalized name: version} of every ``name[extras]==version`` word."""
    pins = {}
    for word in words:
        if m := re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[a-z,]+\])?==(\S+)", word):
            pins[m[1].lower().replace("_", "-")] = m[3]
    return pins


def makefile_variables() -> dict[str, list[str]]:
    """The Makefile's ``NAME := words`` assignments (continuation lines joined), as shell words."""
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    return {m[1]: shlex.split(m[2]) for m in re.finditer(r"^([A-Z_]+) :=(.*)$", text, flags=re.M)}


def dockerfile_runs() -> list[str]:
    """The Dockerfile's RUN instructions, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def _variant_branches(run: str) -> dict[str, str]:
    """``case "$VARIANT" in cpu) ...;; cuda) ...;; esac`` -> {"cpu": "...", "cuda": "..."}."""
    body = run.split('case "$VARIANT" in', 1)[1].rsplit("esac", 1)[0]
    return {m[1]: m[2] for m in re.finditer(r"(\w+|\*)\)\s*(.*?);;", body)}


def test_the_variants_install_the_makefiles_torch_and_fbgemm() -> None:
    make = makefile_variables()
    torch_pins = _pins(make["TORCH"])  # torch and fbgemm-gpu-cpu
    (case,) = [run for run in dockerfile_runs() if "$VARIANT" in run]
    branches = _variant_branches(case)
    assert set(branches) == {"cpu", "cuda", "*"} and "exit 2" in branches["*"]
    assert _pins(shlex.split(branches["cpu"])) == torch_pins
    assert "download.pytorch.org/whl/cpu" in (REPO / "Dockerfile").read_text()
    # CUDA: the same torch, and the CUDA fbgemm-gpu of fbgemm-gpu-cpu's version, from the CUDA index.
    cuda = _pins(shlex.split(branches["cuda"]))
    assert cuda == {"torch": torch_pins["torch"], "fbgemm-gpu": torch_pins["fbgemm-gpu-cpu"]}
    assert '--index-url "$CUDA_INDEX"' in branches["cuda"]
    assert re.search(
        r"^ARG CUDA_INDEX=https://download\.pytorch\.org/whl/cu\d+$", (REPO / "Dockerfile").read_text(), re.M
    )
    assert re.search(r"^ARG VARIANT=cpu$", (REPO / "Dockerfile").read_text(), re.M)


def test_torchrec_goes_in_without_its_dependencies() -> None:
    make = makefile_variables()
    (run,) = [run for run in dockerfile_runs() if "torchrec==" in run]
    assert shlex.split(run) == ["pip", "install", "--no-deps", *make["TORCHREC"]]


def test_the_rest_of_the_stack_is_the_makefiles_less_the_dev_tools() -> None:
    make = makefile_variables()
    stack = _pins(make["DEPS"] + make["STORAGE_DEPS"] + make["CLUSTER_DEPS"])
    assert set(stack) >= DEV_ONLY, DEV_ONLY - set(stack)  # a renamed dev tool must be renamed here too
    expected = {name: version for name, version in stack.items() if name not in DEV_ONLY}
    (run,) = [run for run in dockerfile_runs() if "torchx==" in run]
    words = shlex.split(run)
    assert words[:2] == ["pip", "install"]
    assert _pins(words) == expected  # one resolution, as in the Makefile (torchx caps urllib3)
    assert "ray[default]==" + stack["ray"] in words  # extras kept


def test_crossrank_is_installed_from_its_sources_and_imports() -> None:
    text = (REPO / "Dockerfile").read_text()
    for folder in ("features", "models", "pipeline", "torchx_components", "configs"):
        assert re.search(rf"^COPY {folder} {folder}$", text, re.M), folder
    assert "WORKDIR /opt/crossrank" in text
    (run,) = [run for run in dockerfile_runs() if "pip install --no-deps ." in run]
    assert "import torch, fbgemm_gpu, torchrec, torchx, crossrank.pipeline.cli" in run
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "data", "runs", ".git"} <= set(ignored)
