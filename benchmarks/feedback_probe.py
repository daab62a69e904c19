"""The probe that located ml-1m's missing signal: rewrites of prepared ml-1m (of the contract before
``hist_liked_<D>`` and the side columns existed) that each add one kind of information, to train on with
``configs/ml1m.yaml`` (``--set data.spec=OUT/spec.yaml --set data.train=OUT/train ...``).

    python benchmarks/feedback_probe.py SRC OUT --liked-ids               # history ids item*2 + liked
    python benchmarks/feedback_probe.py SRC OUT --liked-ids --pos-rate
    python benchmarks/feedback_probe.py SRC OUT --pos-rate
    python benchmarks/feedback_probe.py SRC OUT --pos-rate --side ../shared/data/ml-1m

``--liked-ids`` encodes each history event's like (rating >= 4) into its id (``item * 2 + liked``; the
candidate is ``item * 2 + 1``; item tables doubled), with no model change; ``--pos-rate`` adds the dense
``pos_rate_<D>`` = (positives + 1) / (events + 2) of each history; ``--side RAW`` adds the user's gender,
age band and occupation and the movie's genres and 5-year release bucket. ``OUT`` gets the three splits and
a ``spec.yaml``. The results are in RESULTS.md ("History feedback").
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

SPLITS = ("train", "valid", "test")
AGES = {1: 0, 18: 1, 25: 2, 35: 3, 45: 4, 50: 5, 56: 6}
GENRES = [
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
]
GENRES += ["Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def liked_lists(table: pa.Table, liked: np.ndarray, d: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, item ids, likes) of ``hist_<d>``; ``liked[user * 4096 + item]`` is the user's like."""
    hist = table[f"hist_{d}"].combine_chunks()
    offsets, items = hist.offsets.to_numpy(), hist.values.to_numpy()
    users = np.repeat(table["user_id"].to_numpy(), np.diff(offsets))
    return offsets, items, liked[users * 4096 + items].astype(np.int64)


def side_columns(raw: Path) -> dict[str, np.ndarray | list[list[int]]]:
    """Per user id: gender, age band, occupation; per movie id: genre indices and a 5-year release bucket."""
    user = {k: np.zeros(8192, np.int64) for k in ("gender", "age", "occupation")}
    for line in (raw / "users.dat").read_text(encoding="latin-1").splitlines():
        uid, gender, age, occ, _ = line.split("::")
        user["gender"][int(uid)], user["age"][int(uid)] = gender == "M", AGES[int(age)]
        user["occupation"][int(uid)] = int(occ)
    genres: list[list[int]] = [[] for _ in range(4096)]
    year = np.zeros(4096, np.int64)
    for line in (raw / "movies.dat").read_text(encoding="latin-1").splitlines():
        mid, title, names = line.split("::")
        genres[int(mid)] = [GENRES.index(g) for g in names.split("|") if g in GENRES]
        found = re.search(r"\((\d{4})\)\s*$", title)
        year[int(mid)] = min(max((int(found.group(1)) - 1915) // 5, 0), 18) + 1 if found else 0
    return {**user, "genres": genres, "year": year}


def rewrite(table: pa.Table, liked: np.ndarray, args: argparse.Namespace, side: dict | None) -> pa.Table:  # type: ignore[type-arg]
    """One split with the information ``args`` asks for added."""
    for d in ("A", "B"):
        offsets, items, likes = liked_lists(table, liked, d)
        if args.pos_rate:
            positives = np.add.reduceat(np.append(likes, 0), offsets[:-1]) * (np.diff(offsets) > 0)
            rate = ((positives + 1) / (np.diff(offsets) + 2)).astype(np.float32)
            table = table.append_column(f"pos_rate_{d}", pa.array(rate))
        if args.liked_ids:
            ids = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(items * 2 + likes))
            table = table.set_column(table.column_names.index(f"hist_{d}"), f"hist_{d}", ids)
    users, items = table["user_id"].to_numpy(), table["item_id"].to_numpy()
    if args.liked_ids:
        candidate = pc.add(pc.multiply(table["item_id"], 2), 1)
        table = table.set_column(table.column_names.index("item_id"), "item_id", candidate)
    for name in ("gender", "age", "occupation", "year") if side else ():
        table = table.append_column(name, pa.array(side[name][users if name != "year" else items]))
    if side:
        table = table.append_column(
            "genres", pa.array([side["genres"][i] for i in items], pa.list_(pa.int64()))
        )
    return table


def spec_for(src: Path, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """The prepared spec with the added features."""
    spec = yaml.safe_load((src / "spec.yaml").read_text())
    identity = {"type": "identity", "oov": "clip"}
    for table in spec["tables"] if args.liked_ids else []:
        table["num_embeddings"] *= 2 if table["name"].startswith("item") else 1
    if args.side:
        sizes = {"gender": 3, "age": 8, "occupation": 22, "year": 21, "genres": 19}
        spec["tables"] += [{"name": n, "num_embeddings": k, "embedding_dim": 32} for n, k in sizes.items()]
        spec["features"] += [
            {
                "name": n,
                "kind": "id_list" if n == "genres" else "id",
                "column": n,
                "table": n,
                "mapping": identity,
            }
            for n in sizes
        ]
    if args.pos_rate:
        spec["features"] += [
            {
                "name": f"pos_rate_{d}",
                "kind": "dense",
                "column": f"pos_rate_{d}",
                "fill": 0.5,
                "transform": "none",
            }
            for d in ("A", "B")
        ]
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path, help="prepared ml-1m (train/ valid/ test/ spec.yaml), old contract")
    parser.add_argument("out", type=Path)
    parser.add_argument("--liked-ids", action="store_true")
    parser.add_argument("--pos-rate", action="store_true")
    parser.add_argument("--side", type=Path, metavar="RAW", help="the GroupLens ml-1m folder")
    args = parser.parse_args()
    tables = {s: pq.read_table(args.src / s) for s in SPLITS}
    liked = np.zeros(8192 * 4096, np.int8)  # every rating's like, by (user, movie): each is rated once
    for t in tables.values():
        liked[t["user_id"].to_numpy() * 4096 + t["item_id"].to_numpy()] = t["label"].to_numpy()
    side = side_columns(args.side) if args.side else None
    for s, t in tables.items():
        (args.out / s).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            rewrite(t, liked, args, side), args.out / s / "part-00000.parquet", row_group_size=65536
        )
    shutil.copy(args.src / "summary.json", args.out / "summary.json")
    (args.out / "spec.yaml").write_text(yaml.safe_dump(spec_for(args.src, args)))


if __name__ == "__main__":
    main()
