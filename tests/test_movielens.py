"""Tests for ``crossrank.pipeline.prepare.movielens`` (``crossrank prepare movielens``) and ``crossrank.pipeline.core.atomic``.

The real-data tests read GroupLens MovieLens from ``../shared/data`` (never copied into the repo) and check
the output against references computed here independently with pandas (a different method from the preparer's:
``searchsorted`` on (user, timestamp) keys and joins back to the raw ratings), over ALL rows.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import crossrank.pipeline.prepare.movielens.rows as ml_rows
from crossrank.features.errors import InputError
from crossrank.pipeline.core.atomic import AtomicParquetWriter, write_parquet_atomic
from crossrank.pipeline.prepare.movielens import (
    DEFAULT_DOMAINS,
    GENRES_100K,
    PrepareSummary,
    load_domain_map,
    output_schema,
    prepare_movielens,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ML100K = DATA / "ml-100k"
ML1M = DATA / "ml-1m"
_SKIP = "GroupLens MovieLens data not found at {} (it is never committed; see ../shared/data/README.md)"
needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason=_SKIP.format(ML100K))
needs_ml1m = pytest.mark.skipif(not (ML1M / "ratings.dat").is_file(), reason=_SKIP.format(ML1M))

SPLITS = ("train", "valid", "test")
MAX_LEN = 50
ROW_GROUP = 4096
GENRES_A = ["Action", "Adventure", "Sci-Fi", "Thriller", "Crime", "War", "Western", "Horror"]


# ----------------------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------------------


def read_splits(out_dir: Path) -> dict[str, pa.Table]:
    """The three split files of ``out_dir``."""
    return {s: pq.read_table(out_dir / s / "part-00000.parquet") for s in SPLITS}


def all_rows(out_dir: Path) -> pd.DataFrame:
    """The scalar columns of all splits, with a ``split`` column, in row_id order."""
    frames = []
    for name, table in read_splits(out_dir).items():
        df = table.select(["row_id", "user_id", "item_id", "domain", "label", "timestamp"]).to_pandas()
        frames.append(df.assign(split=name))
    return pd.concat(frames, ignore_index=True).sort_values("row_id", ignore_index=True)


def ml100k_first_genre() -> pd.Series:
    """item id -> first genre flag set in u.genre order ("unknown" for none), read with plain pandas."""
    genres = pd.read_csv(ML100K / "u.genre", sep="|", header=None, names=["genre", "idx"]).dropna()
    names = genres.sort_values("idx")["genre"].tolist()
    items = pd.read_csv(ML100K / "u.item", sep="|", header=None, encoding="latin-1")
    flags = items.iloc[:, -len(names) :].to_numpy().astype(bool)
    first = np.where(flags.any(axis=1), np.asarray(names, dtype=object)[flags.argmax(axis=1)], "unknown")
    return pd.Series(first, index=items[0].to_numpy())


def ml100k_ratings() -> pd.DataFrame:
    """u.data as user_id, item_id, rating, timestamp."""
    return pd.read_csv(
        ML100K / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
    )


def check_histories(table: pa.Table, events: pd.DataFrame, domain: str, max_len: int) -> tuple[int, int]:
    """Check ``hist_<domain>`` / ``hist_count_<domain>`` / ``hist_liked_<domain>`` of every row against the raw events.

    Args:
        table: a split (or all splits).
        events: every kept rating: user_id, item_id, rating, timestamp, domain (user, item unique).
        domain: the domain checked.
        max_len: the truncation length used.

    Returns:
        (rows whose history was truncated, rows with a same-second event of the domain left out), so that
        callers can assert that the hard cases were actually exercised.
    """
    ev = events[events["domain"] == domain].sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    ev = ev.assign(rank=ev.groupby("user_id").cumcount())
    users = table.column("user_id").to_numpy()
    ts = table.column("timestamp").to_numpy()
    # Events of the same user strictly before the row's second: a key range in (user, ts) order.
    key = ev["user_id"].to_numpy() * 2**32 + ev["timestamp"].to_numpy()
    row_key = users * 2**32 + ts
    first = np.searchsorted(key, users * 2**32, "left")
    count = np.searchsorted(key, row_key, "left") - first
    at_or_before = np.searchsorted(key, row_key, "right") - first

    np.testing.assert_array_equal(table.column(f"hist_count_{domain}").to_numpy(), count.astype(np.float32))
    hist = table.column(f"hist_{domain}").combine_chunks()
    lengths = pc.list_value_length(hist).to_numpy()
    np.testing.assert_array_equal(lengths, np.minimum(count, max_len))

    flat = pd.DataFrame(
        {"parent": pc.list_parent_indices(hist).to_numpy(), "item_id": pc.list_flatten(hist).to_numpy()}
    )
    flat["user_id"] = users[flat["parent"].to_numpy()]
    flat["row_ts"] = ts[flat["parent"].to_numpy()]
    flat["pos"] = flat.groupby("parent").cumcount()
    joined = flat.merge(
        ev[["user_id", "item_id", "timestamp", "rank", "rating"]],
        on=["user_id", "item_id"],
        how="left",
        validate="m:1",
    )
    assert len(joined) == len(flat)
    assert joined["timestamp"].notna().all(), "a history item is not a rating of this user in this domain"
    assert (joined["timestamp"] < joined["row_ts"]).all(), "a history event is not strictly earlier"
    same_row = joined["parent"].diff().fillna(1) == 0
    assert (joined["timestamp"].diff()[same_row] >= 0).all(), "a history is not most-recent-last"
    # The k-th kept event must be the user's (count - len + k)-th domain event: the LAST len earlier ones.
    parent = joined["parent"].to_numpy()
    expected_rank = count[parent] - lengths[parent] + joined["pos"].to_numpy()
    np.testing.assert_array_equal(joined["rank"].to_numpy(), expected_rank)
    liked = table.column(f"hist_liked_{domain}").combine_chunks()  # aligned with the history, event by event
    np.testing.assert_array_equal(pc.list_value_length(liked).to_numpy(), lengths)
    np.testing.assert_array_equal(pc.list_flatten(liked).to_numpy(), joined["rating"].to_numpy() >= 4)
    return int(np.count_nonzero(count > max_len)), int(np.count_nonzero(at_or_before > count))


# ----------------------------------------------------------------------------------------------------------
# ml-100k, default domains
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One preparation run and its output."""

    out: Path
    summary: PrepareSummary
    splits: dict[str, pa.Table]


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    if not (ML100K / "u.data").is_file():
        pytest.skip(_SKIP.format(ML100K))
    out = tmp_path_factory.mktemp("ml100k")
    summary = prepare_movielens(ML100K, out, max_len=MAX_LEN, row_group_size=ROW_GROUP)
    return Prepared(out, summary, read_splits(out))


@pytest.fixture(scope="module")
def ml100k_events() -> pd.DataFrame:
    """u.data with each movie's domain under the default map (no-genre movies go to the "*" domain B)."""
    ratings = ml100k_ratings()
    first = ml100k_first_genre()
    return ratings.assign(domain=np.where(ratings["item_id"].map(first).isin(GENRES_A), "A", "B"))


@needs_ml100k
def test_ml100k_counts_match_the_documented_facts(ml100k: Prepared) -> None:
    rows = all_rows(ml100k.out)
    assert len(rows) == 100_000
    first = ml100k_first_genre()
    no_genre = first.index[first == "unknown"]
    assert len(no_genre) == 2  # movies 267 and 1373
    counts = rows["domain"].value_counts()
    assert counts["A"] == 39_851
    # The README's 60,139 leaves out the 10 ratings of the 2 genre-less movies; the contract sends them to
    # the "*" domain (test_map_without_star_... reproduces 60,139 exactly).
    assert counts["B"] == 60_149
    assert np.count_nonzero((rows["domain"] == "B") & ~rows["item_id"].isin(no_genre)) == 60_139
    items = rows.groupby("domain")["item_id"].nunique()
    assert (items["A"], items["B"]) == (516, 1_166)
    assert ml100k.summary.catalog_items_per_domain == {"A": 516, "B": 1_166}
    assert rows["label"].mean() == pytest.approx(0.554, abs=5e-4)
    summary_all = ml100k.summary.splits["all"]
    assert (summary_all.rows, summary_all.users) == (100_000, 943)
    assert summary_all.rows_per_domain == {"A": 39_851, "B": 60_149}
    assert summary_all.items_per_domain == {"A": 516, "B": 1_166}
    for name, table in ml100k.splits.items():
        stats = ml100k.summary.splits[name]
        assert stats.rows == table.num_rows
        assert stats.users == len(np.unique(table.column("user_id").to_numpy()))
        assert stats.positive_rate == pytest.approx(table.column("label").to_numpy().mean(), abs=1e-6)
        domain = table.column("domain").to_numpy(zero_copy_only=False)
        item = table.column("item_id").to_numpy()
        assert stats.rows_per_domain == {d: int(np.sum(domain == d)) for d in "AB"}
        assert stats.items_per_domain == {d: len(np.unique(item[domain == d])) for d in "AB"}


@needs_ml100k
def test_ml100k_schema_is_exact(ml100k: Prepared) -> None:
    expected = pa.schema(
        [
            ("row_id", pa.int64()),
            ("user_id", pa.int64()),
            ("item_id", pa.int64()),
            ("domain", pa.string()),
            ("label", pa.int8()),
            ("timestamp", pa.int64()),
            ("hist_A", pa.list_(pa.int64())),
            ("hist_count_A", pa.float32()),
            ("hist_B", pa.list_(pa.int64())),
            ("hist_count_B", pa.float32()),
            ("hist_liked_A", pa.list_(pa.int64())),
            ("hist_liked_B", pa.list_(pa.int64())),
            ("gender", pa.string()),
            ("age", pa.int64()),
            ("occupation", pa.string()),
            ("genres", pa.list_(pa.string())),
            ("year", pa.int64()),
        ]
    )
    assert output_schema(["A", "B"]).equals(expected)
    for split in SPLITS:
        schema = pq.read_schema(ml100k.out / split / "part-00000.parquet")
        assert schema.equals(expected), f"{split}: {schema}"


@needs_ml100k
def test_ml100k_rows_match_the_ratings(ml100k: Prepared, ml100k_events: pd.DataFrame) -> None:
    rows = all_rows(ml100k.out)
    np.testing.assert_array_equal(rows["row_id"].to_numpy(), np.arange(100_000))  # unique, 0..N-1
    # row_id follows the (user, timestamp, item) order.
    by_key = rows.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    np.testing.assert_array_equal(by_key["row_id"].to_numpy(), np.arange(100_000))
    for table in ml100k.splits.values():
        assert np.all(np.diff(table.column("row_id").to_numpy()) > 0), "a split file is not in row_id order"
    joined = rows.merge(ml100k_events, on=["user_id", "item_id"], how="inner", validate="1:1")
    assert len(joined) == 100_000
    np.testing.assert_array_equal(joined["timestamp_x"], joined["timestamp_y"])
    np.testing.assert_array_equal(joined["label"], (joined["rating"] >= 4).astype(np.int8))
    np.testing.assert_array_equal(joined["domain_x"], joined["domain_y"])


@needs_ml100k
def test_ml100k_side_columns_match_u_user_and_u_item(ml100k: Prepared) -> None:
    columns = ["user_id", "item_id", *SIDE_NAMES]
    rows = pa.concat_tables(t.select(columns) for t in ml100k.splits.values()).to_pandas()
    users = pd.read_csv(ML100K / "u.user", sep="|", header=None, names=["uid", "u_age", "g", "occ", "zip"])
    joined = rows.merge(users, left_on="user_id", right_on="uid", how="left", validate="m:1")
    assert joined["uid"].notna().all()
    np.testing.assert_array_equal(joined["gender"], joined["g"])
    np.testing.assert_array_equal(joined["age"], joined["u_age"])
    np.testing.assert_array_equal(joined["occupation"], joined["occ"])
    item = pd.read_csv(ML100K / "u.item", sep="|", header=None, encoding="latin-1")
    flags = item.iloc[:, -19:].to_numpy() == 1
    genres = {
        int(i): [g for g, on in zip(GENRES_100K, f, strict=True) if on and g != "unknown"]
        for i, f in zip(item[0], flags, strict=True)
    }
    year = dict(zip(item[0], pd.to_numeric(item[1].str.extract(r"\((\d{4})\)\s*$")[0]), strict=True))
    sample = rows.iloc[::97]
    assert [list(g) for g in sample["genres"]] == [genres[i] for i in sample["item_id"]]
    as_int = [None if pd.isna(y) else int(y) for y in sample["year"]]
    assert as_int == [None if pd.isna(year[i]) else int(year[i]) for i in sample["item_id"]]
    assert rows["year"].isna().sum() > 0 and rows["year"].min() >= 1900  # titles without a year: null


@needs_ml100k
@pytest.mark.parametrize("domain", ["A", "B"])
def test_ml100k_histories_are_strictly_earlier_truncated_and_complete(
    ml100k: Prepared, ml100k_events: pd.DataFrame, domain: str
) -> None:
    table = pa.concat_tables(ml100k.splits.values())
    truncated, ties = check_histories(table, ml100k_events, domain, MAX_LEN)
    # Both hard cases occur in the real data, so the checks above were not vacuous.
    assert truncated > 1_000
    assert ties > 1_000
    assert pc.max(pc.list_value_length(table.column(f"hist_{domain}"))).as_py() == MAX_LEN


@needs_ml100k
def test_ml100k_split_is_per_user_by_time(ml100k: Prepared) -> None:
    rows = all_rows(ml100k.out)  # row_id order = (user, timestamp, item) order
    from_end = rows.groupby("user_id").cumcount(ascending=False).to_numpy()
    expected = np.where(from_end < 10, "test", np.where(from_end < 20, "valid", "train"))
    np.testing.assert_array_equal(rows["split"].to_numpy(), expected)
    ts = rows.pivot_table(index="user_id", columns="split", values="timestamp", aggfunc=["min", "max"])
    assert (ts[("max", "train")].dropna() <= ts[("min", "valid")][ts[("max", "train")].notna()]).all()
    assert (ts[("max", "valid")] <= ts[("min", "test")]).all()
    assert (rows.groupby("user_id")["split"].apply(lambda s: (s == "test").sum()) == 10).all()


@needs_ml100k
def test_ml100k_files_row_groups_and_summary(ml100k: Prepared) -> None:
    files = sorted(str(p.relative_to(ml100k.out)) for p in ml100k.out.rglob("*"))
    assert files == [
        "summary.json",
        "test",
        "test/part-00000.parquet",
        "train",
        "train/part-00000.parquet",
        "valid",
        "valid/part-00000.parquet",
    ]  # and no temporary file left behind
    for split in SPLITS:
        meta = pq.ParquetFile(ml100k.out / split / "part-00000.parquet").metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert meta.num_row_groups >= 3
        assert all(n == ROW_GROUP for n in sizes[:-1]) and 0 < sizes[-1] <= ROW_GROUP
    saved = json.loads((ml100k.out / "summary.json").read_text())
    assert saved == ml100k.summary.to_json()
    assert (
        saved["source_format"] == "ml-100k" and saved["domains"] == ["A", "B"] and saved["max_len"] == MAX_LEN
    )
    text = ml100k.summary.format()
    assert "100,000" in text and "39,851" in text and "60,149" in text and "ml-100k" in text


@needs_ml100k
def test_chunked_build_gives_identical_files(
    ml100k: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny chunks: chunk boundaries must not change a single value, nor the row group layout.
    monkeypatch.setattr(ml_rows, "_CHUNK_VALUES", 3_000)
    prepare_movielens(ML100K, tmp_path, max_len=MAX_LEN, row_group_size=ROW_GROUP)
    for split in SPLITS:
        chunked = pq.ParquetFile(tmp_path / split / "part-00000.parquet")
        assert (
            chunked.metadata.num_row_groups
            == pq.ParquetFile(ml100k.out / split / "part-00000.parquet").metadata.num_row_groups
        )
        assert chunked.read().equals(ml100k.splits[split])


# ----------------------------------------------------------------------------------------------------------
# ml-100k, other domain maps
# ----------------------------------------------------------------------------------------------------------


@needs_ml100k
def test_map_without_star_drops_genreless_movies_and_reproduces_the_facts(tmp_path: Path) -> None:
    others = [g for g in ml100k_first_genre().unique() if g not in GENRES_A and g != "unknown"]
    domains = tmp_path / "domains.yaml"
    domains.write_text(f"A: {json.dumps(GENRES_A)}\nB: {json.dumps(sorted(set(others)))}\n")
    summary = prepare_movielens(ML100K, tmp_path / "out", domains=domains, max_len=5)
    assert summary.splits["all"].rows_per_domain == {"A": 39_851, "B": 60_139}
    assert summary.catalog_items_per_domain == {"A": 516, "B": 1_164}
    assert (summary.dropped_ratings, summary.dropped_items) == (10, 2)
    rows = all_rows(tmp_path / "out")
    assert len(rows) == 99_990 and not rows["item_id"].isin([267, 1373]).any()
    assert "dropped 10 ratings of 2 movies" in summary.format()


@needs_ml100k
def test_three_domain_map(tmp_path: Path) -> None:
    domains = tmp_path / "three.yaml"
    domains.write_text(
        textwrap.dedent(
            """\
            # order of keys = order of the hist_ columns
            drama: [Drama, Romance, Film-Noir]
            action: [Action, Adventure, Sci-Fi, Thriller]
            rest: "*"
            """
        )
    )
    summary = prepare_movielens(ML100K, tmp_path / "out", domains=domains, max_len=8)
    assert summary.domains == ["drama", "action", "rest"]
    table = pa.concat_tables(read_splits(tmp_path / "out").values())
    assert table.schema.names[6:] == [
        "hist_drama",
        "hist_count_drama",
        "hist_action",
        "hist_count_action",
        "hist_rest",
        "hist_count_rest",
        "hist_liked_drama",
        "hist_liked_action",
        "hist_liked_rest",
        *SIDE_NAMES,
    ]
    first = ml100k_first_genre()
    ratings = ml100k_ratings()
    genre = ratings["item_id"].map(first)
    domain = np.select(
        [
            genre.isin(["Drama", "Romance", "Film-Noir"]),
            genre.isin(["Action", "Adventure", "Sci-Fi", "Thriller"]),
        ],
        ["drama", "action"],
        "rest",
    )
    events = ratings.assign(domain=domain)
    expected = events["domain"].value_counts()
    assert summary.splits["all"].rows_per_domain == {d: int(expected[d]) for d in summary.domains}
    rows = table.select(["user_id", "item_id", "domain"]).to_pandas()
    joined = rows.merge(events, on=["user_id", "item_id"], validate="1:1")
    np.testing.assert_array_equal(joined["domain_x"], joined["domain_y"])
    for d in summary.domains:
        truncated, _ = check_histories(table, events, d, 8)
        assert truncated > 0


# ----------------------------------------------------------------------------------------------------------
# ml-1m (the `::` format) on the real data
# ----------------------------------------------------------------------------------------------------------


@needs_ml1m
def test_ml1m_counts_match_the_documented_facts(tmp_path: Path) -> None:
    summary = prepare_movielens(ML1M, tmp_path, max_len=5)
    assert summary.source_format == "ml-1m"
    assert summary.splits["all"].rows == 1_000_209
    assert summary.splits["all"].users == 6_040
    assert summary.splits["all"].rows_per_domain == {"A": 419_101, "B": 581_108}
    assert summary.catalog_items_per_domain == {"A": 1_243, "B": 2_640}
    assert summary.splits["test"].rows == summary.splits["valid"].rows == 60_400  # all users have >= 20
    assert pq.ParquetFile(tmp_path / "train" / "part-00000.parquet").metadata.num_rows == 879_409


# ----------------------------------------------------------------------------------------------------------
# The ml-latest CSV format, on a hand-made fixture with hand-computed expectations
# ----------------------------------------------------------------------------------------------------------

MOVIES_CSV = """\
movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"Heat, The (1995)",Action|Crime|Thriller
3,Some Documentary (2001),(no genres listed)
4,An IMAX Film (2010),IMAX|Action
5,Alien (1979),Horror|Sci-Fi
6,Speed (1994),Action|Romance|Thriller
10,A Drama (1990),Drama
11,Unforgiven (1992),Western
"""
# Rows in file order are shuffled on purpose; user 7 has three ratings on second 100.
RATINGS_CSV = """\
userId,movieId,rating,timestamp
7,10,4.0,100
99,10,3.0,5
7,3,4.5,200
7,2,3.5,100
42,4,0.5,20
7,6,1.0,50
7,5,4.0,300
7,1,5.0,100
42,1,4.5,10
7,4,2.0,300
"""


@pytest.fixture
def csv_dir(tmp_path: Path) -> Path:
    src = tmp_path / "ml-latest-small"
    src.mkdir()
    (src / "movies.csv").write_text(MOVIES_CSV)
    (src / "ratings.csv").write_text(RATINGS_CSV)
    return src


SIDE_NAMES = ["gender", "age", "occupation", "genres", "year"]


def no_user(n: int) -> dict[str, list[None]]:
    return {"gender": [None] * n, "age": [None] * n, "occupation": [None] * n}


def test_csv_format_hand_computed(csv_dir: Path, tmp_path: Path) -> None:
    summary = prepare_movielens(csv_dir, tmp_path / "out", max_len=2, n_test=1, n_valid=1, row_group_size=2)
    assert summary.source_format == "ml-latest"
    # A = movies 1 (Adventure first), 2, 5, 6, 11; B = 3 (no genre), 4 (IMAX: unnamed -> "*"), 10.
    assert summary.catalog_items_per_domain == {"A": 5, "B": 3}
    got = {s: t.to_pydict() for s, t in read_splits(tmp_path / "out").items()}
    # user 7 in (ts, item) order: (50,6) (100,1) (100,2) (100,10) (200,3) (300,4) (300,5)
    assert got["train"] == {
        "row_id": [0, 1, 2, 3, 4],
        "user_id": [7, 7, 7, 7, 7],
        "item_id": [6, 1, 2, 10, 3],
        "domain": ["A", "A", "A", "B", "B"],
        "label": [0, 1, 0, 1, 1],
        "timestamp": [50, 100, 100, 100, 200],
        "hist_A": [[], [6], [6], [6], [1, 2]],  # same-second 1, 2 never in each other's history
        "hist_count_A": [0.0, 1.0, 1.0, 1.0, 3.0],  # [6, 1, 2] truncated to the last 2
        "hist_B": [[], [], [], [], [10]],
        "hist_count_B": [0.0, 0.0, 0.0, 0.0, 1.0],
        # aligned with hist_<D>: 6 is a 1.0, 1 a 5.0, 2 a 3.5, 10 a 4.0, 3 a 4.5
        "hist_liked_A": [[], [0], [0], [0], [1, 0]],
        "hist_liked_B": [[], [], [], [], [1]],
        **no_user(5),  # ml-latest has no users file
        "genres": [
            ["Action", "Romance", "Thriller"],
            ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
            ["Action", "Crime", "Thriller"],
            ["Drama"],
            [],  # (no genres listed)
        ],
        "year": [1994, 1995, 1995, 1990, 2001],
    }
    # A user with fewer than n_test + n_valid rows fills test first, then valid.
    assert got["valid"] == {
        "row_id": [5, 7],
        "user_id": [7, 42],
        "item_id": [4, 1],
        "domain": ["B", "A"],
        "label": [0, 1],
        "timestamp": [300, 10],
        "hist_A": [[1, 2], []],
        "hist_count_A": [3.0, 0.0],
        "hist_B": [[10, 3], []],
        "hist_count_B": [2.0, 0.0],
        "hist_liked_A": [[1, 0], []],
        "hist_liked_B": [[1, 1], []],
        **no_user(2),
        "genres": [["IMAX", "Action"], ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]],
        "year": [2010, 1995],
    }
    assert got["test"] == {
        "row_id": [6, 8, 9],
        "user_id": [7, 42, 99],
        "item_id": [5, 4, 10],
        "domain": ["A", "B", "B"],
        "label": [1, 0, 0],
        "timestamp": [300, 20, 5],
        "hist_A": [[1, 2], [1], []],
        "hist_count_A": [3.0, 1.0, 0.0],
        "hist_B": [[10, 3], [], []],
        "hist_count_B": [2.0, 0.0, 0.0],
        "hist_liked_A": [[1, 0], [1], []],  # user 42's movie 1 is a 4.5
        "hist_liked_B": [[1, 1], [], []],
        **no_user(3),
        "genres": [["Horror", "Sci-Fi"], ["IMAX", "Action"], ["Drama"]],
        "year": [1979, 2010, 1990],
    }
    meta = pq.ParquetFile(tmp_path / "out" / "train" / "part-00000.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]
    assert summary.splits["test"].users == 3 and summary.splits["train"].users == 1
    assert summary.splits["valid"].items_per_domain == {"A": 1, "B": 1}


def test_csv_three_domains_without_star_drops_and_warns(csv_dir: Path, tmp_path: Path) -> None:
    domains = tmp_path / "d.yaml"
    domains.write_text("act: [Action]\nkid: [Adventure, Children]\ndoc: [Drama, Musical]\n")
    summary = prepare_movielens(csv_dir, tmp_path / "out", domains=domains, max_len=10, n_test=1, n_valid=0)
    # Dropped: movie 3 (no genre), 4 (IMAX, unnamed), 5 (Horror, unnamed); 11 (Western) has no rating.
    assert (summary.dropped_ratings, summary.dropped_items) == (4, 3)
    assert summary.unused_genres == ["Children", "Musical"]
    assert summary.catalog_items_per_domain == {"act": 2, "kid": 1, "doc": 1}
    splits = read_splits(tmp_path / "out")
    assert splits["valid"].num_rows == 0 and splits["valid"].schema.equals(
        output_schema(["act", "kid", "doc"])
    )
    rows = pa.concat_tables(splits.values()).sort_by("row_id").to_pydict()
    assert rows["row_id"] == list(range(6))
    assert rows["item_id"] == [6, 1, 2, 10, 1, 10]
    assert rows["domain"] == ["act", "kid", "act", "doc", "kid", "doc"]
    assert rows["hist_act"] == [[], [6], [6], [6], [], []]
    assert rows["hist_kid"] == [[], [], [], [], [], []]
    assert rows["hist_count_doc"] == [0.0] * 6
    assert "warning" in summary.format() and "'Musical'" in summary.format()


# ----------------------------------------------------------------------------------------------------------
# Domain maps
# ----------------------------------------------------------------------------------------------------------


def test_load_domain_map_default_and_key_order(tmp_path: Path) -> None:
    assert load_domain_map(None) == DEFAULT_DOMAINS
    assert load_domain_map(None) is not DEFAULT_DOMAINS  # callers may mutate their copy
    path = tmp_path / "m.yaml"
    path.write_text('zeta: "*"\nalpha: [Drama]\nmid: [Comedy, Musical]\n')
    loaded = load_domain_map(path)
    assert list(loaded) == ["zeta", "alpha", "mid"]
    assert loaded == {"zeta": "*", "alpha": ["Drama"], "mid": ["Comedy", "Musical"]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("- Action\n- Drama\n", "mapping"),
        ("", "mapping"),
        ('A: "*"\nB: "*"\n', "two domains"),
        ("A: [Action, Drama]\nB: [Comedy, Drama]\n", "'Drama'"),
        ("A: [Action, Action]\n", "twice"),
        ("A: [Action]\nB: *\n", "line 2"),  # a bare * is YAML alias syntax
        ("A: Action\n", "list"),
        ("my domain: [Action]\n", "domain name"),
        ("A: [Action]\nB: [unknown]\n", "without a genre"),
    ],
)
def test_bad_domain_map_names_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad_domains.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_domain_map(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_missing_domain_map_names_the_file(tmp_path: Path, csv_dir: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(InputError, match="not found") as exc:
        prepare_movielens(csv_dir, tmp_path / "out", domains=path)
    assert str(path) in str(exc.value)
    assert not (tmp_path / "out").exists()  # checked before anything is written


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------


def test_missing_and_unrecognised_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder") as exc:
        prepare_movielens(tmp_path / "missing", tmp_path / "out")
    assert str(tmp_path / "missing") in str(exc.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("hi")
    with pytest.raises(InputError) as exc:
        prepare_movielens(empty, tmp_path / "out")
    for expected in (
        str(empty),
        "u.data",
        "u.item",
        "ratings.dat",
        "movies.dat",
        "ratings.csv",
        "movies.csv",
    ):
        assert expected in str(exc.value)
    half = tmp_path / "half"
    half.mkdir()
    (half / "ratings.dat").write_text("1::2::3::4\n")
    with pytest.raises(InputError, match=r"movies\.dat") as exc:
        prepare_movielens(half, tmp_path / "out")
    assert str(half) in str(exc.value)


def test_blank_lines_are_ignored(tmp_path: Path) -> None:
    src = _write(
        tmp_path / "src", {"movies.dat": DAT_MOVIES, "ratings.dat": "1::1::5::10\n\n1::2::3::11\n\n"}
    )
    summary = prepare_movielens(src, tmp_path / "out", n_test=1, n_valid=0)
    assert summary.splits["all"].rows == 2
    assert summary.splits["all"].rows_per_domain == {"A": 1, "B": 1}


def test_unrecognised_parent_folder_points_at_the_subfolder(tmp_path: Path, csv_dir: Path) -> None:
    with pytest.raises(InputError, match="ml-latest-small"):
        prepare_movielens(csv_dir.parent, tmp_path / "out")


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="latin-1")
    return folder


DAT_MOVIES = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action|Crime\n"
U_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


@pytest.mark.parametrize(
    ("files", "bad_file", "needles"),
    [
        # ml-1m: a line with 3 fields (line numbers count the blank line 2).
        (
            {"movies.dat": DAT_MOVIES, "ratings.dat": "1::1::5::10\n\n1::2::3\n1::2::4::11\n"},
            "ratings.dat",
            ["line 3", "3 field"],
        ),
        # ml-1m: a non-numeric timestamp.
        (
            {"movies.dat": DAT_MOVIES, "ratings.dat": "1::1::5::10\n1::2::4::soon\n"},
            "ratings.dat",
            ["line 2", "timestamp", "'soon'"],
        ),
        # ml-100k: a non-numeric item id.
        ({"u.item": U_ITEM, "u.data": "1\t1\t5\t10\n2\tx\t3\t11\n"}, "u.data", ["line 2", "item_id", "'x'"]),
        # ml-100k: a space- instead of tab-separated line.
        ({"u.item": U_ITEM, "u.data": "1\t1\t5\t10\n2 1 3 11\n"}, "u.data", ["line 2", "1 field"]),
        # ml-latest: an empty rating field.
        (
            {"movies.csv": MOVIES_CSV, "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,5\n1,2,,6\n"},
            "ratings.csv",
            ["line 3", "rating"],
        ),
        # ml-latest: a wrong header.
        (
            {"movies.csv": MOVIES_CSV, "ratings.csv": "user,movie,rating,ts\n1,1,4.0,5\n"},
            "ratings.csv",
            ["line 1"],
        ),
        # ml-latest: an empty ratings file.
        (
            {"movies.csv": MOVIES_CSV, "ratings.csv": "userId,movieId,rating,timestamp\n"},
            "ratings.csv",
            ["no ratings"],
        ),
        # ml-latest: a line with 3 fields (line numbers count the header).
        (
            {"movies.csv": MOVIES_CSV, "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,5\n1,2,6\n"},
            "ratings.csv",
            ["line 3", "3 field", "'1,2,6'"],
        ),
        # ml-1m: an empty ratings file.
        ({"movies.dat": DAT_MOVIES, "ratings.dat": ""}, "ratings.dat", ["no ratings"]),
        # A rating of a movie the movies file does not list.
        ({"movies.dat": DAT_MOVIES, "ratings.dat": "1::1::5::10\n1::77::4::11\n"}, "ratings.dat", ["[77]"]),
        # Movies files: a malformed line, a duplicate id.
        ({"movies.dat": "1::Toy Story\n", "ratings.dat": "1::1::5::10\n"}, "movies.dat", ["line 1"]),
        (
            {"movies.dat": DAT_MOVIES + DAT_MOVIES, "ratings.dat": "1::1::5::10\n"},
            "movies.dat",
            ["line 3", "twice"],
        ),
        ({"u.item": "1|Toy|x|y\n", "u.data": "1\t1\t5\t10\n"}, "u.item", ["line 1"]),
    ],
)
def test_bad_source_file_names_the_file(
    tmp_path: Path, files: dict[str, str], bad_file: str, needles: list[str]
) -> None:
    src = _write(tmp_path / "src", files)
    with pytest.raises(InputError) as exc:
        prepare_movielens(src, tmp_path / "out")
    message = str(exc.value)
    assert str(src / bad_file) in message
    for needle in needles:
        assert needle in message
    assert "Fix:" in message


def test_output_folder_that_is_a_file(csv_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(InputError, match="output folder") as exc:
        prepare_movielens(csv_dir, out)
    assert str(out) in str(exc.value)


@pytest.mark.parametrize(
    ("option", "value"), [("max_len", 0), ("n_test", 0), ("n_valid", -1), ("row_group_size", 0)]
)
def test_bad_options(csv_dir: Path, tmp_path: Path, option: str, value: int) -> None:
    with pytest.raises(InputError, match=option):
        prepare_movielens(csv_dir, tmp_path / "out", **{option: value})


# ----------------------------------------------------------------------------------------------------------
# crossrank.pipeline.core.atomic
# ----------------------------------------------------------------------------------------------------------


def test_atomic_writer_exact_row_groups_from_uneven_chunks(tmp_path: Path) -> None:
    schema = pa.schema([("x", pa.int64()), ("h", pa.list_(pa.int64()))])
    path = tmp_path / "sub" / "f.parquet"
    values = np.arange(23)
    with AtomicParquetWriter(path, schema, row_group_size=5) as writer:
        for begin, end in [(0, 1), (1, 9), (9, 9), (9, 20), (20, 23)]:
            chunk = values[begin:end]
            writer.write(
                pa.table({"x": chunk, "h": pa.array([[int(v)] * 2 for v in chunk], pa.list_(pa.int64()))})
            )
        assert not path.exists()  # only visible once complete
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5, 5, 5, 5, 3]
    assert pq.read_table(path).column("x").to_pylist() == list(range(23))
    assert [p.name for p in path.parent.iterdir()] == ["f.parquet"]


def test_atomic_writer_failure_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "f.parquet"
    old = pa.table({"x": [1, 2, 3]})
    write_parquet_atomic(old, path, row_group_size=2)
    assert pq.read_table(path).equals(old)
    with pytest.raises(RuntimeError, match="boom"), AtomicParquetWriter(path, old.schema, 2) as writer:
        writer.write(pa.table({"x": list(range(10))}))
        raise RuntimeError("boom")
    assert pq.read_table(path).equals(old)
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]  # the temporary file is gone
    with pytest.raises(ValueError, match="schema"), AtomicParquetWriter(path, old.schema, 2) as writer:
        writer.write(pa.table({"y": ["a"]}))
    assert pq.read_table(path).equals(old)


def test_a_bad_users_file_names_the_file_line_and_fix(tmp_path: Path) -> None:
    src = tmp_path / "ml-1m"
    src.mkdir()
    (src / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    (src / "ratings.dat").write_text("1::1::5::100\n2::1::3::200\n")
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::old::16::70072\n")
    with pytest.raises(
        InputError, match=r"(?s)users\.dat, line 2.*age 'old' is not a number.*UserID::Gender"
    ):
        prepare_movielens(src, tmp_path / "out", n_test=1, n_valid=0)
    (src / "users.dat").write_text("1::F::1::10::48067\n")  # user 2 unknown: nulls, not an error
    prepare_movielens(src, tmp_path / "out", n_test=1, n_valid=0)
    test = pq.read_table(tmp_path / "out" / "test" / "part-00000.parquet").to_pydict()
    assert (test["gender"], test["age"], test["occupation"]) == (["F", None], [1, None], ["10", None])
    assert test["genres"] == [["Animation", "Comedy"]] * 2 and test["year"] == [1995, 1995]
