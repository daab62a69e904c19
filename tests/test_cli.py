"""The CLI end to end: bad input ends with one paragraph and status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crossrank.pipeline.cli import main
from crossrank.pipeline.training.config import load_config

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crossrank.pipeline.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def test_train_on_missing_data_is_one_paragraph_without_traceback(tmp_path: Path) -> None:
    proc = run_cli("train", "--config", "configs/demo.yaml", "--set", f"data.train={tmp_path / 'nope'}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{tmp_path / 'nope'}: no such file or folder" in proc.stderr and "Fix:" in proc.stderr


def test_train_on_data_with_a_missing_column_names_file_feature_and_spec(
    small_synthetic: Path, tmp_path: Path
) -> None:
    table = pq.read_table(small_synthetic / "test").drop_columns(["hist_B"])
    pq.write_table(table, tmp_path / "bad.parquet")
    code = main(["train", "--config", "configs/demo.yaml", "--set", f"data.train={tmp_path / 'bad.parquet'}"])
    assert code == 2


def test_cli_error_message_names_column(
    small_synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pq.read_table(small_synthetic / "test")
    pq.write_table(table.drop_columns(["hist_count_A"]), tmp_path / "bad.parquet")
    main(["train", "--config", "configs/demo.yaml", "--set", f"data.train={tmp_path / 'bad.parquet'}"])
    err = capsys.readouterr().err
    assert "bad.parquet: [hist_count_A] column 'hist_count_A' is missing" in err


def test_prepare_movielens_nonexistent_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "movielens", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_config_errors(tmp_path: Path) -> None:
    from crossrank.features.errors import InputError

    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(InputError, match=r"unknown key\(s\) \['epochz'\] in section 'train'"):
        load_config(REPO / "configs/demo.yaml", ["train.epochz=3"])
    with pytest.raises(InputError, match=r"\['shuffle_units'\] in section 'data' were replaced") as e:
        load_config(REPO / "configs/demo.yaml", ["data.shuffle_units=4"])
    assert "data.shuffle_buffer_mb" in str(e.value)
    with pytest.raises(InputError, match=r"train.dense_weight_decay must be >= 0"):
        load_config(REPO / "configs/demo.yaml", ["train.dense_weight_decay=-0.1"])
    with pytest.raises(InputError, match=r"model\.sequence_encoder 'lstm' is unknown"):
        load_config(REPO / "configs/demo.yaml", ["model.sequence_encoder=lstm"])
    with pytest.raises(InputError, match=r"model.encoder.query_init_std must be > 0"):
        load_config(REPO / "configs/demo.yaml", ["model.encoder.query_init_std=0"])
    with pytest.raises(InputError, match=r"model.encoder.recency_prior must be >= 0"):
        load_config(REPO / "configs/demo.yaml", ["model.encoder.recency_prior=-1"])
    with pytest.raises(InputError, match=r"model.encoder.mean_windows \[4, 0\] must all be >= 1"):
        load_config(REPO / "configs/demo.yaml", ["model.encoder.mean_windows=[4,0]"])
    with pytest.raises(InputError, match=r"train.epochs = 'three' is not a valid int"):
        load_config(REPO / "configs/demo.yaml", ["train.epochs=three"])
    cfg = load_config(REPO / "configs/demo.yaml", ["train.epochs=5", "model.over_arch_layer_sizes=[32, 1]"])
    assert cfg.train.epochs == 5 and cfg.model.over_arch_layer_sizes == [32, 1]


def test_help_explains_every_command() -> None:
    for args in (
        ["--help"],
        ["train", "--help"],
        ["prepare", "movielens", "--help"],
        ["features", "check", "--help"],
    ):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
