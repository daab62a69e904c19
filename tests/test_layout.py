"""The code's shape: pipeline stages import only earlier stages, preparation never imports torch, every package
is installed under ``crossrank.``, and no function grows past 80 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
# Bottom to top: a module may import its own stage and the stages before it, never a later one.
LAYERS = [
    "crossrank.features",
    "crossrank.models",
    "crossrank.pipeline.core",
    "crossrank.pipeline.prepare",
    "crossrank.pipeline.reading",
    "crossrank.pipeline.evaluation",
    "crossrank.pipeline.training",
    "crossrank.pipeline.scoring",
    "crossrank.pipeline.cli",
]
FOLDERS = {"features": "crossrank.features", "models": "crossrank.models", "pipeline": "crossrank.pipeline"}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            out.append((".".join([package, *rel.parts]).removesuffix(".__init__"), path))
    return out


def _layer(module: str) -> int | None:
    for i, prefix in reversed(list(enumerate(LAYERS))):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_stages_import_only_earlier_stages() -> None:
    bad = []
    for module, path in _modules():
        own = _layer(module)
        assert own is not None or module == "crossrank.pipeline", module
        for name in _imports(path):
            layer = _layer(name)
            if layer is not None and own is not None and layer > own:
                bad.append(f"{path.relative_to(REPO)} imports {name}")
            if name.split(".")[0] in FOLDERS:  # the generic top-level names are never imported
                bad.append(f"{path.relative_to(REPO)} imports {name} (use crossrank.{name})")
    assert not bad, "\n".join(bad)


def test_the_layer_check_can_fail() -> None:
    assert _layer("crossrank.pipeline.training.loop") > _layer("crossrank.pipeline.evaluation.predict")  # type: ignore[operator]
    assert _layer("crossrank.pipeline.prepare.synthetic") == LAYERS.index("crossrank.pipeline.prepare")
    assert _layer("torch") is None


def test_preparation_never_imports_torch() -> None:
    code = (
        "import sys, pkgutil, importlib, crossrank.pipeline.prepare as p\n"
        "for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'): importlib.import_module(m.name)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchrec', 'fbgemm_gpu'))\n"
        "assert not loaded, loaded[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO / "tests")


def test_every_package_is_installed_under_crossrank() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {**FOLDERS, "torchx_components": "crossrank.torchx_components"}
    assert config["package-dir"] == {v: k for k, v in folders.items()}
    found = set()
    for folder, package in folders.items():
        for init in (REPO / folder).rglob("__init__.py"):
            found.add(".".join([package, *init.parent.relative_to(REPO / folder).parts]))
    assert set(config["packages"]) == found


@pytest.mark.parametrize("folder", ["features", "models", "pipeline"])
def test_no_function_over_80_lines(folder: str) -> None:
    long = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
