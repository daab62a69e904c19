"""Daily inputs: data paths as lists, glob patterns and ``{date}`` / ``{date-N}`` templates filled from
``data.date``, through ``load_config`` and the reader; the errors name the field; TorchX passes the overrides
through unchanged."""

from __future__ import annotations

import shlex
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torchx.specs import macros
from torchx.specs.builders import materialize_appdef

from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec, builtin_spec_path, load_spec
from crossrank.pipeline.cli.parser import build_parser
from crossrank.pipeline.core.distributed import DistContext
from crossrank.pipeline.reading.reader import ParquetBatchReader
from crossrank.pipeline.training.config import JobConfig, load_config
from crossrank.pipeline.training.loop import Splits
from torchx_components import crossrank as components

SYNTHETIC = builtin_spec_path("synthetic")
DAYS = ["2026-11-17", "2026-11-18", "2026-11-19", "2026-11-20", "2026-11-21"]
ROWS_PER_PART = 5


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_spec(SYNTHETIC)


def part(first_row_id: int, n: int = ROWS_PER_PART) -> pa.Table:
    """``n`` clean rows of the synthetic data contract, row ids ``first_row_id ..``."""
    ids = range(first_row_id, first_row_id + n)
    return pa.table(
        {
            "row_id": pa.array(ids, pa.int64()),
            "user_id": pa.array([7 * i for i in ids], pa.int64()),
            "item_id": pa.array([i % 1000 for i in ids], pa.int64()),
            "domain": pa.array(["A" if i % 2 else "B" for i in ids]),
            "label": pa.array([i % 2 for i in ids], pa.int8()),
            "hist_A": pa.array([[i % 11] for i in ids], pa.list_(pa.int64())),
            "hist_count_A": pa.array([1.0] * n, pa.float32()),
            "hist_B": pa.array([[] for _ in ids], pa.list_(pa.int64())),
            "hist_count_B": pa.array([0.0] * n, pa.float32()),
        }
    )


@pytest.fixture()
def events(tmp_path: Path) -> Path:
    """``events/date=D/part-0000{0,1}.parquet`` for five days; day k's rows have ids k*100 .. k*100+9."""
    root = tmp_path / "events"
    for k, day in enumerate(DAYS):
        folder = root / f"date={day}"
        folder.mkdir(parents=True)
        for p in range(2):
            pq.write_table(part(k * 100 + p * ROWS_PER_PART), folder / f"part-{p:05d}.parquet")
    return root


def config(tmp_path: Path, data: dict[str, object], **top: object) -> Path:
    """A job config YAML with the synthetic spec and ``data`` (plus top-level keys such as run_dir)."""
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"data": {"spec": str(SYNTHETIC), **data}, **top}))
    return path


def days_read(spec: FeatureSpec, paths: str | list[str]) -> list[str]:
    """The days (partition folders) a reader of ``paths`` reads, each once, and checks their rows."""
    reader = ParquetBatchReader(spec, paths, batch_size=4)
    row_ids = sorted(int(r) for block in reader.blocks() for r in block.row_ids)
    days = sorted({u.file.parent.name.removeprefix("date=") for u in reader.units})
    want = sorted(DAYS.index(d) * 100 + i for d in days for i in range(2 * ROWS_PER_PART))
    assert row_ids == want  # every row of those days, once, and nothing else
    return days


# ---- lists, globs and templates --------------------------------------------------------------------------


def test_lists_in_yaml_and_in_overrides(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    two = [str(events / "date=2026-11-17"), str(events / "date=2026-11-18" / "part-00000.parquet")]
    cfg = load_config(config(tmp_path, {"train": two}), [f"data.valid=[{events}/date=2026-11-19]"])
    assert cfg.data.train == two
    assert cfg.data.valid == [str(events / "date=2026-11-19")]
    reader = ParquetBatchReader(spec, cfg.data.train, batch_size=4)
    assert [u.file.name for u in reader.units] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00000.parquet",
    ]
    assert days_read(spec, cfg.data.valid) == ["2026-11-19"]


def test_glob_patterns(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    pattern = f"{events}/date=2026-11-1[89]/part-*.parquet"
    cfg = load_config(config(tmp_path, {"train": pattern, "valid": f"{events}/**/part-00001.parquet"}))
    assert cfg.data.train == pattern  # patterns are expanded by the reader, not the config
    assert days_read(spec, cfg.data.train) == ["2026-11-18", "2026-11-19"]
    valid = ParquetBatchReader(spec, cfg.data.valid, batch_size=4)
    assert {u.file.name for u in valid.units} == {"part-00001.parquet"} and len(valid.units) == len(DAYS)


def test_date_templates_select_partitions(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    path = config(
        tmp_path,
        {
            "train": [f"{events}/date={{date-2}}", f"{events}/date={{date-1}}/part-*.parquet"],
            "valid": f"{events}/date={{date}}",
        },
        run_dir=str(tmp_path / "runs" / "{date}"),
        train={"init_from": str(tmp_path / "runs" / "{date-1}")},
    )
    cfg = load_config(path, ["data.date=2026-11-20"])
    assert cfg.data.train == [f"{events}/date=2026-11-18", f"{events}/date=2026-11-19/part-*.parquet"]
    assert cfg.data.valid == f"{events}/date=2026-11-20"
    assert cfg.run_dir == str(tmp_path / "runs" / "2026-11-20")
    assert cfg.train.init_from == str(tmp_path / "runs" / "2026-11-19")
    assert days_read(spec, cfg.data.train) == ["2026-11-18", "2026-11-19"]
    assert days_read(spec, cfg.data.valid) == ["2026-11-20"]  # not 2026-11-21, which exists too


def test_templates_in_a_list_override_and_across_month_and_year(tmp_path: Path) -> None:
    # Quoted items are YAML strings; unquoted ones holding `{` fall back to a comma split (test below).
    cfg = load_config(
        config(tmp_path, {"train": "unused"}),
        ["data.date=2027-01-01", 'data.train=["e/date={date-1}/*.parquet", "e/date={date-31}", e/x]'],
    )
    assert cfg.data.train == ["e/date=2026-12-31/*.parquet", "e/date=2026-12-01", "e/x"]
    leap = load_config(config(tmp_path, {"train": "e/date={date-1}"}), ["data.date=2028-03-01"])
    assert leap.data.train == "e/date=2028-02-29"


def test_unquoted_templates_in_a_list_override(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.date=2026-11-20", "data.train=[e/date={date-1}, e/date={date}]"])
    assert cfg.data.train == ["e/date=2026-11-19", "e/date=2026-11-20"]


def test_splits_open_reads_the_filled_partitions(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    path = config(tmp_path, {"train": f"{events}/date={{date-1}}", "valid": f"{events}/date={{date}}"})
    cfg = load_config(path, ["data.date=2026-11-21", "data.batch_size=4"])
    splits = Splits.open(cfg, spec, DistContext(0, 1, 0, torch.device("cpu"), "gloo"))
    assert {u.file.parent.name for u in splits.train.units} == {"date=2026-11-20"}
    assert splits.valid is not None and {u.file.parent.name for u in splits.valid.units} == {
        "date=2026-11-21"
    }
    assert splits.test is None


# ---- errors name the field ---------------------------------------------------------------------------------


def test_template_without_data_date(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_config(config(tmp_path, {"train": "events/date={date}"}))
    msg = str(err.value)
    assert "data.train = 'events/date={date}'" in msg and "data.date is not set" in msg
    assert "--set data.date=YYYY-MM-DD" in msg
    with pytest.raises(InputError) as err:
        load_config(config(tmp_path, {"train": "e"}, run_dir="runs/{date-1}"))
    assert "run_dir = 'runs/{date-1}'" in str(err.value)


@pytest.mark.parametrize("date", ["2026-13-01", "2026-02-30", "yesterday", "20261120x"])
def test_bad_date(tmp_path: Path, date: str) -> None:
    path = config(tmp_path, {"train": "events/date={date}"})
    with pytest.raises(InputError) as err:
        load_config(path, [f"data.date={date}"])
    msg = str(err.value)
    assert f"data.date '{date}' is not a date" in msg and str(path) in msg and "YYYY-MM-DD" in msg


def test_bad_path_value(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        load_config(config(tmp_path, {"train": {"a": 1}}))
    assert "data.train" in str(err.value) and "not a path or a list of paths" in str(err.value)


def test_unquoted_template_in_a_yaml_flow_list_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"data:\n  spec: {SYNTHETIC}\n  train: [e/date={{date-1}}, e/date={{date}}]\n")
    with pytest.raises(InputError) as err:
        load_config(path, ["data.date=2026-11-20"])
    assert str(path) in str(err.value) and "not valid YAML" in str(err.value)


def test_pattern_matching_nothing(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    cfg = load_config(
        config(tmp_path, {"train": f"{events}/date={{date}}/part-*.parquet"}), ["data.date=2026-11-25"]
    )
    with pytest.raises(InputError) as err:
        ParquetBatchReader(spec, cfg.data.train, batch_size=4)
    msg = str(err.value)
    assert f"{events}/date=2026-11-25/part-*.parquet" in msg  # the filled pattern, with the date
    assert "matches no file" in msg and "data.date" in msg
    cfg = load_config(config(tmp_path, {"train": f"{events}/date={{date}}"}), ["data.date=2026-11-25"])
    with pytest.raises(InputError, match="no such file or folder"):
        ParquetBatchReader(spec, cfg.data.train, batch_size=4)


def test_pattern_matching_nothing_names_the_field(tmp_path: Path, events: Path, spec: FeatureSpec) -> None:
    path = config(tmp_path, {"train": f"{events}/date={{date-1}}", "valid": f"{events}/date={{date}}/x-*"})
    cfg = load_config(path, ["data.date=2026-11-21"])
    with pytest.raises(InputError) as err:
        Splits.open(cfg, spec, DistContext(0, 1, 0, torch.device("cpu"), "gloo"))
    assert "data.valid" in str(err.value)


# ---- TorchX passes the overrides through unchanged ----------------------------------------------------------

OVERRIDES = [
    "data.date=2026-11-20",
    'data.train=["events/date={date-2}", "events/date={date-1}/part-*.parquet"]',
    "data.valid=events/date={date}",
    "run_dir=runs/daily/{date}",
]


def cli_args(app_args: list[str]) -> list[str]:
    """The crossrank CLI arguments inside a TorchX role's ``bash -c`` command, after macro substitution."""
    role_args = macros.Values(
        img_root="/img", app_id="app-1", replica_id="0", rank0_env="MASTER_ADDR"
    ).substitute
    words = shlex.split(role_args(app_args[1]))
    return words[words.index("crossrank.pipeline.cli") + 1 :]


def test_torchx_train_passes_overrides_unchanged(tmp_path: Path) -> None:
    job = config(tmp_path, {"train": "unused"})
    direct = components.train(*OVERRIDES, config=str(job), j="1x2")
    # As `torchx run torchx_components/crossrank.py:train --config JOB -j 1x2 -- OVERRIDES...` builds it.
    from_cli = materialize_appdef(components.train, ["--config", str(job), "-j", "1x2", "--", *OVERRIDES])
    for app in (direct, from_cli):
        args = cli_args(app.roles[0].args)
        assert args == ["train", "--config", str(job), *[w for o in OVERRIDES for w in ("--set", o)]]
        parsed = build_parser().parse_args(args)
        assert parsed.set == OVERRIDES
        cfg: JobConfig = load_config(parsed.config, parsed.set)
        assert cfg.data.train == ["events/date=2026-11-18", "events/date=2026-11-19/part-*.parquet"]
        assert (cfg.data.valid, cfg.run_dir) == ("events/date=2026-11-20", "runs/daily/2026-11-20")
