"""The quality study's datasets, prepared once under ``data/quality/`` (each a folder with ``train/ valid/
test/``, ``summary.json`` and, for MovieLens, the 99-negative ranking protocol)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "data" / "quality"
SHARED = REPO.parent / "shared" / "data"


def movielens(name: str, max_len: int, ranking_users: int = 1000) -> Path:
    """``../shared/data/<name>`` prepared with histories up to ``max_len``, plus its ranking protocol."""
    from crossrank.pipeline.prepare.movielens import prepare_movielens
    from crossrank.pipeline.prepare.ranking_set import prepare_ranking

    out = WORK / f"{name}-len{max_len}"
    if not (out / "summary.json").exists() or not _current_contract(out):
        print(prepare_movielens(SHARED / name, out, max_len=max_len, overwrite=True).format())
    if not (out / "ranking.json").exists():
        print(prepare_ranking(out, negatives=99, users=ranking_users, seed=0, overwrite=True).format())
    return out


def _current_contract(out: Path) -> bool:
    """Whether a prepared MovieLens folder has today's columns (an older ``prepare`` wrote fewer)."""
    import pyarrow.parquet as pq

    from crossrank.pipeline.prepare.movielens import output_schema

    domains = json.loads((out / "summary.json").read_text())["domains"]
    return pq.read_schema(out / "train" / "part-00000.parquet").equals(output_schema(domains))


def synthetic(tag: str, **config: object) -> Path:
    """Synthetic data (``SyntheticConfig(**config)``), which carries its oracle AUC in ``summary.json``."""
    from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic

    out = WORK / f"synthetic-{tag}"
    if not (out / "summary.json").exists():
        cfg = SyntheticConfig(**config)  # type: ignore[arg-type]
        print(f"preparing {out}: {dataclasses.asdict(cfg)}")
        prepare_synthetic(out, cfg, overwrite=True)
    return out


def oracle_auc(data: Path) -> float:
    """The test split's oracle AUC (the true click probabilities as scores) of a synthetic set."""
    return float(json.loads((data / "summary.json").read_text())["splits"]["test"]["oracle_auc"])
