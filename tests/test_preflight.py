"""One validation path (issue 11, items 2 and 5): ``features check --data`` runs the checks ``train``/``score``
apply to each row group, plus the pre-flight from Parquet statistics, which stops a job before any model is
built when the footer shows the problem, wherever the bad row group is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossrank.features.check import check_data
from crossrank.features.errors import InputError
from crossrank.features.spec import FeatureSpec, load_spec
from crossrank.features.validate import metadata_problems, row_group_problems
from crossrank.pipeline.cli.main import main
from crossrank.pipeline.prepare.synthetic import SyntheticConfig, prepare_synthetic
from crossrank.pipeline.reading.reader import discover_units
from crossrank.pipeline.training import loop

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "features" / "specs" / "synthetic.yaml"
ROWS_PER_GROUP = 500


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    out = tmp_path_factory.mktemp("pf") / "syn"
    prepare_synthetic(out, SyntheticConfig(users=200, items_per_domain=100, rows=3000, max_len=20, seed=1))
    return pq.read_table(out / "train").slice(0, 2000)  # 4 row groups of 500


@pytest.fixture(scope="module")
def spec() -> FeatureSpec:
    return load_spec(SPEC)


def set_value(
    table: pa.Table, column: str, value: object, row: int, type_: pa.DataType | None = None
) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    t = type_ or table.schema.field(column).type
    return table.set_column(i, pa.field(column, t), pa.array(values, t))


def history_with_null(table: pa.Table, row: int) -> pa.Table:
    hist = table.column("hist_A").to_pylist()
    hist[row] = [*(hist[row] or [])[:2], None]
    return table.set_column(
        table.schema.get_field_index("hist_A"), "hist_A", pa.array(hist, pa.list_(pa.int64()))
    )


# name -> (change at a row, caught by the pre-flight?, the feature named, a fragment of the message)
Change = Callable[[pa.Table, int], pa.Table]
CASES: dict[str, tuple[Change, bool, str, str]] = {
    "label 2": (lambda t, r: set_value(t, "label", 2, r), True, "label", "other than 0/1"),
    "label -1": (lambda t, r: set_value(t, "label", -1, r), True, "label", "other than 0/1"),
    "null label": (lambda t, r: set_value(t, "label", None, r), True, "label", "1 null value(s)"),
    "undeclared domain": (lambda t, r: set_value(t, "domain", "C", r), True, "item", "['C'] not declared"),
    "null row id": (lambda t, r: set_value(t, "row_id", None, r), True, "row_id", "1 null value(s)"),
    "log1p of a negative count": (
        lambda t, r: set_value(t, "hist_count_A", -2.0, r),
        True,
        "hist_count_A",
        "log1p of negative values in column 'hist_count_A' (min -2.0)",
    ),
    "NaN label": (
        lambda t, r: set_value(t, "label", float("nan"), r, pa.float32()),
        False,  # Parquet statistics leave NaN out of min/max
        "label",
        "other than 0/1 (e.g. [nan])",
    ),
    "null id inside a history list": (history_with_null, False, "hist_A", "1 null id(s) inside its lists"),
    "undeclared domain between declared ones": (
        lambda t, r: set_value(t, "domain", "AB", r),
        False,  # min 'A' and max 'B' are both declared
        "item",
        "['AB'] not declared",
    ),
}


def bad_file(
    table: pa.Table, folder: Path, change: Change, *, last_of_many: bool, stats: bool = True
) -> Path:
    """``table`` changed in its last row: written in row groups of 500 (the change in the last one), or as
    one row group (so that a job reads it first)."""
    path = folder / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    size = ROWS_PER_GROUP if last_of_many else table.num_rows
    pq.write_table(change(table, table.num_rows - 3), path, row_group_size=size, write_statistics=stats)
    return path


def check_cli(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["features", "check", str(SPEC), "--data", str(path)]) == 2
    return capsys.readouterr().err


def train_cli(path: Path, run_dir: Path, capsys: pytest.CaptureFixture[str]) -> str:
    sets = [f"data.train={path}", "data.valid=", "data.test=", "data.batch_size=256", "train.epochs=1"]
    sets += ["train.tensorboard=false", f"run_dir={run_dir}", f"data.spec={SPEC}"]
    capsys.readouterr()
    code = main(
        ["train", "--config", str(REPO / "configs/demo.yaml"), *[a for s in sets for a in ("--set", s)]]
    )
    assert code == 2
    return capsys.readouterr().err


def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building the model fails the test: the pre-flight must stop the job before."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was built: the pre-flight did not stop the job")

    monkeypatch.setattr(loop, "build_sharded_model", fail)


def the_problem(err: str, path: Path, feature: str, fragment: str) -> str:
    """The one line of ``features check`` about ``path``'s ``feature``, up to its fix, without the final dot."""
    (line,) = [x for x in err.splitlines() if f"{path} (row group" in x and f"[{feature}]" in x]
    assert fragment in line and "Fix:" in line, line
    return line.split(" - ", 1)[1].split(" Fix: ")[0].rstrip(".")


@pytest.mark.parametrize("case", list(CASES))
def test_features_check_and_train_reject_it_with_the_same_message(
    case: str,
    clean: pa.Table,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    change, in_metadata, feature, fragment = CASES[case]
    # Visible in the statistics: the last of 4 row groups, and no model may be built. Else one row group,
    # read at the first step.
    path = bad_file(clean, tmp_path / "in", change, last_of_many=in_metadata)
    if in_metadata:
        no_model(monkeypatch)
    problem = the_problem(check_cli(path, capsys), path, feature, fragment)
    last = pq.ParquetFile(path).num_row_groups - 1
    assert f"(row group {last})" in problem
    assert problem in train_cli(path, tmp_path / "run", capsys)


def test_without_statistics_the_row_group_check_still_catches_it(
    spec: FeatureSpec, clean: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    change = CASES["null label"][0]
    path = bad_file(clean, tmp_path / "in", change, last_of_many=False, stats=False)
    assert metadata_problems(spec, pq.ParquetFile(path).metadata, path) == []  # nothing to go on: silent
    problem = the_problem(check_cli(path, capsys), path, "label", "1 null value(s)")
    assert "file's statistics" not in problem
    assert problem in train_cli(path, tmp_path / "run", capsys)


def test_the_preflight_checks_scoring_input_without_labels(
    spec: FeatureSpec, clean: pa.Table, tmp_path: Path
) -> None:
    """``score`` checks its input with ``discover_units`` before loading the model: null row ids count, a
    null label (scoring input may have no label column) does not."""
    null_label = bad_file(clean, tmp_path / "a", CASES["null label"][0], last_of_many=True)
    assert len(discover_units(spec, null_label, with_label=False)) == 4
    null_id = bad_file(clean, tmp_path / "b", lambda t, r: set_value(t, "row_id", None, r), last_of_many=True)
    with pytest.raises(InputError) as e:
        discover_units(spec, null_id, with_label=False)
    assert f"{null_id} (row group 3): [row_id] row id column 'row_id' has 1 null value(s)" in str(e.value)
    assert "Fix:" in str(e.value) and str(SPEC) in str(e.value)


def test_check_reads_every_row_group_and_reports_every_problem(
    spec: FeatureSpec, clean: pa.Table, tmp_path: Path
) -> None:
    table = history_with_null(set_value(clean, "label", float("nan"), 10, pa.float32()), 1900)
    for row in (300, 550, 800, 1050, 1300):  # 5 row groups with a null label: 3 listed, 2 counted
        table = set_value(table, "label", None, row)
    path = tmp_path / "d.parquet"
    pq.write_table(table, path, row_group_size=250)
    report = check_data(spec, path)
    shown = [(p.source, p.feature, p.message.split(" (")[0]) for p in report.problems]
    assert shown == [
        (f"{path} (row group 1)", "label", "label column 'label' has 1 null value(s)."),
        (f"{path} (row group 2)", "label", "label column 'label' has 1 null value(s)."),
        (f"{path} (row group 3)", "label", "label column 'label' has 1 null value(s)."),
        (f"{path} (row group 0)", "label", "label column 'label' holds 1 value(s) other than 0/1"),
        (
            f"{path} (row group 7)",
            "hist_A",
            "feature 'hist_A': column 'hist_A' holds 1 null id(s) inside its lists.",
        ),
        (str(path), "label", "and 2 more row group(s) of this file with the same kind of problem."),
    ], shown


def test_clean_data_passes_both_checks(spec: FeatureSpec, clean: pa.Table, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(clean, path, row_group_size=ROWS_PER_GROUP)
    meta = pq.ParquetFile(path)
    assert metadata_problems(spec, meta.metadata, path) == []
    assert row_group_problems(spec, meta.read_row_group(0), "x") == []
    report = check_data(spec, path)
    assert (report.problems, report.rows) == ([], clean.num_rows)
