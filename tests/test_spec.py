"""Tests of ``crossrank.features.spec``: the shipped specs, their TorchRec configs, and every validation problem."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig, PoolingType

from crossrank.features.errors import InputError
from crossrank.features.spec import (
    IdMapping,
    Problem,
    SpecError,
    builtin_spec_path,
    load_spec,
    parse_spec,
)

_SYNTHETIC_RAW = yaml.safe_load(builtin_spec_path("synthetic").read_text())


# ---- helpers -----------------------------------------------------------------------------------------------


def base() -> dict[str, Any]:
    """A fresh, mutable copy of the shipped synthetic spec."""
    return copy.deepcopy(_SYNTHETIC_RAW)


def feat(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in raw["features"] if f["name"] == name)


def table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in raw["tables"] if t["name"] == name)


def domain(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in raw["domains"] if d["name"] == name)


def drop_feature(raw: dict[str, Any], name: str) -> None:
    raw["features"] = [f for f in raw["features"] if f["name"] != name]


def write_spec(tmp_path: Path, raw: Any, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def spec_problems(tmp_path: Path, raw: Any) -> tuple[str, list[Problem]]:
    """Write ``raw``, load it, and return (path, the problems of the SpecError it must raise)."""
    path = write_spec(tmp_path, raw)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert info.value.problems, "a SpecError must list its problems"
    return str(path), info.value.problems


def find(problems: list[Problem], source: str, feature: str, *fragments: str) -> Problem:
    """The one problem about ``feature`` whose message holds every fragment; checks source and fix."""
    hits = [p for p in problems if p.feature == feature and all(s in p.message for s in fragments)]
    assert len(hits) == 1, f"expected one problem [{feature}] with {fragments}, got:\n" + "\n".join(
        map(str, problems)
    )
    p = hits[0]
    assert p.source == source
    assert p.fix.strip(), f"problem without a fix: {p}"
    assert source in str(p) and feature in str(p) and p.fix in str(p)
    return p


# ---- the shipped specs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["synthetic", "movielens"])
def test_shipped_spec_loads_with_torchrec_configs(name: str) -> None:
    spec = load_spec(builtin_spec_path(name))
    assert spec.name == name
    assert spec.path == str(builtin_spec_path(name))
    assert (spec.label, spec.row_id) == ("label", "row_id")
    assert spec.domain_names == ["A", "B"]
    assert spec.embedding_dim == 32

    # Pooled: the user table, one EmbeddingBagConfig with the user id (movielens: then the user's and the
    # movie's attributes, a table each).
    side = ["gender", "age", "occupation", "genres"] if name == "movielens" else []
    assert spec.pooled_keys == ["user_id", *side]
    bags = spec.embedding_bag_configs()
    assert [b.feature_names for b in bags] == [["user_id"], *([k] for k in side)]
    bag = bags[0]
    assert all(type(b) is EmbeddingBagConfig for b in bags)
    user = spec.table("user")
    assert (bag.name, bag.feature_names) == ("user", ["user_id"])
    assert (bag.num_embeddings, bag.embedding_dim) == (user.num_embeddings, 32)
    assert bag.pooling == PoolingType.SUM
    assert bag.data_type == DataType.FP32

    # Unpooled: one EmbeddingConfig per domain item table, shared by the history and the candidate slot;
    # movielens adds how each history event was rated (an event feature per history, one shared table).
    events = name == "movielens"
    liked = [["hist_liked_A"], ["hist_liked_B"]] if events else [[], []]
    assert spec.sequence_keys == ["hist_A", "item@A", *liked[0], "hist_B", "item@B", *liked[1]]
    assert spec.history_keys == ["hist_A", *liked[0], "hist_B", *liked[1]]
    assert spec.candidate_key("A") == "item@A"
    configs = spec.embedding_configs()
    assert [type(c) for c in configs] == [EmbeddingConfig] * (3 if events else 2)
    if events:
        assert (configs[2].name, configs[2].feature_names) == ("liked", ["hist_liked_A", "hist_liked_B"])
        assert [(e.domain, e.max_len) for e in spec.of_kind("event")] == [("A", 100), ("B", 100)]
    for c, d in zip(configs[:2], ["A", "B"], strict=True):
        assert c.name == f"item_{d}"
        assert c.feature_names == [f"hist_{d}", f"item@{d}"]
        assert c.num_embeddings == spec.table(f"item_{d}").num_embeddings
        assert c.embedding_dim == 32
        assert c.data_type == DataType.FP32
    # Every KJT key is covered by exactly one table config.
    all_keys = [k for c in [*bags, *configs] for k in c.feature_names]
    assert sorted(all_keys) == sorted(spec.pooled_keys + spec.sequence_keys)

    # Sequence features get their domain's table filled in; keys resolve to the right table / mapping.
    for d in ["A", "B"]:
        seq = spec.sequence_for(d)
        assert (seq.name, seq.table, seq.max_len) == (f"hist_{d}", f"item_{d}", 100)
        assert spec.table_of_key(f"item@{d}").name == f"item_{d}"
        assert spec.table_of_key(f"hist_{d}").name == f"item_{d}"
        assert spec.mapping_of_key(f"item@{d}") == IdMapping("identity", "clip")
    assert spec.table_of_key("user_id").name == "user"
    assert spec.candidate.name == "item"
    assert spec.candidate.domain_column == "domain"
    assert [f.name for f in spec.dense_features] == [
        "hist_count_A",
        "hist_count_B",
        *(["year"] if events else []),
    ]
    assert spec.required_columns() == [
        "row_id",
        "label",
        "user_id",
        *side,
        "item_id",
        "domain",
        "hist_A",
        "hist_B",
        "hist_count_A",
        "hist_count_B",
        *(["year", "hist_liked_A", "hist_liked_B"] if events else []),
    ]
    assert "label" not in spec.required_columns(with_label=False)


def test_shipped_specs_differ_in_sizes_and_user_mapping() -> None:
    syn = load_spec(builtin_spec_path("synthetic"))
    ml = load_spec(builtin_spec_path("movielens"))
    assert syn.mapping_of_key("user_id") == IdMapping("hash", "error")
    assert ml.mapping_of_key("user_id") == IdMapping("identity", "clip")
    assert [t.num_embeddings for t in syn.tables] == [4096, 1025, 1025]
    assert [t.num_embeddings for t in ml.tables] == [8192, 3, 3, 128, 44, 24, 4096, 4096]


def test_parse_spec_defaults() -> None:
    raw = base()
    del raw["name"]
    raw["tables"][0].update(pooling="mean", data_type="fp16")
    feat(raw, "user_id")["mapping"] = "identity"  # a bare string is the mapping type
    spec, problems = parse_spec(raw, "/somewhere/my_spec.yaml")
    assert problems == []
    assert spec is not None
    assert spec.name == "my_spec"  # defaults to the file stem
    assert spec.mapping_of_key("user_id") == IdMapping("identity", "error")
    (bag,) = spec.embedding_bag_configs()
    assert bag.pooling == PoolingType.MEAN
    assert bag.data_type == DataType.FP16
    # Omitted mapping means hash; the dense feature has no table.
    del feat(raw, "user_id")["mapping"]
    spec, _ = parse_spec(raw, "x.yaml")
    assert spec is not None
    assert spec.mapping_of_key("user_id") == IdMapping("hash", "error")
    assert feat(raw, "hist_count_A").get("table") is None
    assert next(f for f in spec.features if f.name == "hist_count_A").table == ""


def test_sequence_may_name_its_domains_table(tmp_path: Path) -> None:
    raw = base()
    feat(raw, "hist_A")["table"] = "item_A"
    assert load_spec(write_spec(tmp_path, raw)).sequence_for("A").table == "item_A"


def test_pooled_features_may_share_a_table(tmp_path: Path) -> None:
    raw = base()
    raw["features"].append(
        {
            "name": "friends",
            "kind": "id_list",
            "column": "friends",
            "table": "user",
            "mapping": {"type": "hash"},
        }
    )
    spec = load_spec(write_spec(tmp_path, raw))
    assert spec.pooled_keys == ["user_id", "friends"]
    (bag,) = spec.embedding_bag_configs()
    assert bag.feature_names == ["user_id", "friends"]


# ---- every validation problem ------------------------------------------------------------------------------

Mutate = Callable[[dict[str, Any]], None]


def _set(where: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Mutate:
    return lambda raw: where(raw).update(values)


def _del(where: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Mutate:
    return lambda raw: where(raw).pop(key)


def _f(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: feat(raw, name)


def _t(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: table(raw, name)


def _d(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda raw: domain(raw, name)


def _dup_table(raw: dict[str, Any]) -> None:
    raw["tables"].append({"name": "user", "num_embeddings": 100, "embedding_dim": 32})


def _dup_feature(raw: dict[str, Any]) -> None:
    raw["features"].append(dict(feat(raw, "hist_count_A")))


def _dup_domain(raw: dict[str, Any]) -> None:
    raw["tables"].append({"name": "item_C", "num_embeddings": 100, "embedding_dim": 32})
    raw["domains"].append({"name": "A", "table": "item_C"})


def _one_domain(raw: dict[str, Any]) -> None:
    raw["domains"] = [domain(raw, "A")]
    drop_feature(raw, "hist_B")


def _two_candidates(raw: dict[str, Any]) -> None:
    raw["features"].append({**feat(raw, "item"), "name": "item2"})


def _two_sequences(raw: dict[str, Any]) -> None:
    raw["features"].append({**feat(raw, "hist_B"), "name": "hist_B2"})


def _pooled_and_unpooled(raw: dict[str, Any]) -> None:
    feat(raw, "user_id").update(table="item_A", mapping={"type": "identity", "oov": "clip"})


def _pooled_mappings_differ(raw: dict[str, Any]) -> None:
    raw["features"].append(
        {"name": "friends", "kind": "id_list", "column": "friends", "table": "user", "mapping": "identity"}
    )


def _not_a_mapping_feature(raw: dict[str, Any]) -> None:
    raw["features"].append("hist_count_C")


# (id, mutation, feature the problem names, message fragments, total problems expected)
CASES: list[tuple[str, Mutate, str, tuple[str, ...], int]] = [
    ("unknown-table", _set(_f("user_id"), table="users"), "user_id", ("unknown table 'users'",), 1),
    ("pooled-without-table", _del(_f("user_id"), "table"), "user_id", ("needs `table:`",), 1),
    ("duplicate-table", _dup_table, "user", ("table name 'user'", "more than once"), 1),
    ("duplicate-feature", _dup_feature, "hist_count_A", ("feature name 'hist_count_A'", "more than once"), 1),
    ("duplicate-domain", _dup_domain, "A", ("domain 'A' is declared more than once",), 1),
    ("one-domain", _one_domain, "domains", ("1 domain(s)", "N >= 2"), 1),
    ("no-domains", lambda raw: raw.pop("domains"), "domains", ("0 domain(s)",), 3),
    ("domain-unknown-table", _set(_d("B"), table="item_X"), "B", ("unknown table 'item_X'",), 2),
    ("domains-share-table", _set(_d("B"), table="item_A"), "item_A", ("item table of several domains",), 1),
    ("unknown-kind", _set(_f("hist_count_A"), kind="float"), "hist_count_A", ("unknown kind 'float'",), 1),
    ("missing-column", _del(_f("hist_count_A"), "column"), "hist_count_A", ("missing", "'column'"), 1),
    ("empty-column", _set(_f("hist_count_A"), column=""), "hist_count_A", ("no source `column`",), 1),
    ("at-in-name", _set(_f("hist_count_A"), name="count@A"), "count@A", ("may not contain '@'",), 1),
    ("unknown-transform", _set(_f("hist_count_A"), transform="cube"), "hist_count_A", ("'cube'",), 1),
    (
        "standardize-std-zero",
        _set(_f("hist_count_A"), transform="standardize", mean=1.0, std=0.0),
        "hist_count_A",
        ("standardize needs std > 0, got 0.0",),
        1,
    ),
    (
        "standardize-std-negative",
        _set(_f("hist_count_A"), transform="standardize", std=-2),
        "hist_count_A",
        ("std > 0, got -2",),
        1,
    ),
    (
        "dense-with-table",
        _set(_f("hist_count_A"), table="user"),
        "hist_count_A",
        ("dense feature has no",),
        1,
    ),
    ("sequence-unknown-domain", _set(_f("hist_B"), domain="C"), "hist_B", ("unknown domain 'C'",), 2),
    (
        "sequence-other-table",
        _set(_f("hist_B"), table="item_A"),
        "hist_B",
        ("uses table 'item_A'", "domain 'B' has item table 'item_B'"),
        1,
    ),
    ("max-len-zero", _set(_f("hist_A"), max_len=0), "hist_A", ("max_len", "got 0"), 1),
    ("max-len-missing", _del(_f("hist_A"), "max_len"), "hist_A", ("max_len", "got 0"), 1),
    ("max-len-not-int", _set(_f("hist_A"), max_len="100"), "hist_A", ("max_len", "got '100'"), 1),
    ("candidate-no-domain-column", _del(_f("item"), "domain_column"), "item", ("needs `domain_column`",), 1),
    ("no-candidate", lambda raw: drop_feature(raw, "item"), "features", ("0 candidate features",), 1),
    ("two-candidates", _two_candidates, "features", ("2 candidate features",), 1),
    ("domain-without-sequence", lambda raw: drop_feature(raw, "hist_B"), "B", ("0 sequence features",), 1),
    ("domain-two-sequences", _two_sequences, "B", ("2 sequence features",), 1),
    ("no-pooled", lambda raw: drop_feature(raw, "user_id"), "features", ("no pooled",), 1),
    ("pooled-and-unpooled", _pooled_and_unpooled, "item_A", ("pooled and unpooled",), 1),
    (
        "sequence-mapping-differs",
        _set(_f("hist_A"), mapping={"type": "identity", "oov": "error"}),
        "item_A",
        ("sharing table 'item_A' map ids differently",),
        1,
    ),
    ("pooled-mappings-differ", _pooled_mappings_differ, "user", ("sharing table 'user'",), 1),
    ("dims-differ", _set(_t("item_B"), embedding_dim=16), "tables", ("item_B=16", "user=32"), 1),
    ("dim-zero", _set(_t("user"), embedding_dim=0), "user", ("embedding_dim", "got 0"), 2),
    ("num-embeddings-one", _set(_t("user"), num_embeddings=1), "user", ("num_embeddings", "got 1"), 1),
    ("num-embeddings-float", _set(_t("user"), num_embeddings=8.5), "user", ("num_embeddings", "got 8.5"), 1),
    ("table-missing-size", _del(_t("user"), "num_embeddings"), "tables[0]", ("num_embeddings",), 2),
    ("unknown-pooling", _set(_t("user"), pooling="max"), "user", ("unknown pooling 'max'",), 1),
    ("unknown-data-type", _set(_t("user"), data_type="bf16"), "user", ("unknown data_type 'bf16'",), 1),
    ("unknown-mapping-type", _set(_f("user_id"), mapping={"type": "md5"}), "user_id", ("type 'md5'",), 1),
    (
        "unknown-oov",
        _set(_f("user_id"), mapping={"type": "identity", "oov": "drop"}),
        "user_id",
        ("unknown oov policy 'drop'",),
        1,
    ),
    (
        "unknown-mapping-keys",
        _set(_f("user_id"), mapping={"type": "hash", "seed": 3}),
        "user_id",
        ("unknown mapping keys ['seed']",),
        1,
    ),
    (
        "mapping-not-a-mapping",
        _set(_f("user_id"), mapping=[1, 2]),
        "user_id",
        ("mapping must be a mapping",),
        1,
    ),
    ("unknown-table-key", _set(_t("item_A"), dim=32), "tables[1]", ("unknown keys ['dim']",), 1),
    ("unknown-domain-key", _set(_d("B"), weight=2), "domains[1]", ("unknown keys ['weight']",), 1),
    ("unknown-feature-key", _set(_f("user_id"), tabel="user"), "user_id", ("unknown keys ['tabel']",), 1),
    (
        "unknown-top-level-key",
        lambda raw: raw.update(extra=1),
        "<spec>",
        ("unknown top-level keys ['extra']",),
        1,
    ),
    ("feature-not-a-mapping", _not_a_mapping_feature, "features[6]", ("expected a mapping",), 1),
    ("missing-label", lambda raw: raw.pop("label"), "label", ("`label`", "missing"), 1),
    ("missing-row-id", lambda raw: raw.pop("row_id"), "row_id", ("`row_id`", "missing"), 1),
    ("label-not-a-string", lambda raw: raw.update(label=["a"]), "label", ("`label`",), 1),
]


@pytest.mark.parametrize(
    ("mutate", "feature", "fragments", "count"),
    [pytest.param(m, f, s, n, id=i) for i, m, f, s, n in CASES],
)
def test_validation_problem(
    tmp_path: Path, mutate: Mutate, feature: str, fragments: tuple[str, ...], count: int
) -> None:
    raw = base()
    mutate(raw)
    source, problems = spec_problems(tmp_path, raw)
    find(problems, source, feature, *fragments)
    assert len(problems) == count, "\n".join(map(str, problems))
    # parse_spec reports the same problems and builds no spec.
    spec, again = parse_spec(raw, source)
    assert spec is None
    assert again == problems


def test_base_spec_is_valid(tmp_path: Path) -> None:
    """The starting point of every validation case loads cleanly (so each case's problem is its own)."""
    spec, problems = parse_spec(base(), "x.yaml")
    assert problems == []
    assert spec is not None
    assert load_spec(write_spec(tmp_path, base())).name == "synthetic"


def test_every_problem_at_once(tmp_path: Path) -> None:
    raw = base()
    table(raw, "user")["pooling"] = "max"
    feat(raw, "hist_count_B")["transform"] = "cube"
    raw["extra"] = True
    source, problems = spec_problems(tmp_path, raw)
    assert len(problems) == 3, "\n".join(map(str, problems))
    find(problems, source, "user", "unknown pooling 'max'")
    find(problems, source, "hist_count_B", "unknown transform 'cube'")
    find(problems, source, "<spec>", "['extra']")
    with pytest.raises(SpecError) as info:
        load_spec(source)
    text = str(info.value)
    assert text.startswith("3 problem(s) found:")
    assert len(text.splitlines()) == 4
    for p in problems:
        assert f"  - {p}" in text


def test_problem_str() -> None:
    p = Problem("s.yaml", "hist_A", "is wrong.", "fix it.")
    assert str(p) == "s.yaml: [hist_A] is wrong. Fix: fix it."


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", "just a string\n", "", "42\n"], ids=["list", "string", "empty", "number"]
)
def test_non_mapping_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    (p,) = info.value.problems
    assert (p.source, p.feature) == (str(path), "<spec>")
    assert "not a YAML mapping" in p.message
    assert p.fix


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntables: [{name: user, num_embeddings: 4\n")
    with pytest.raises(InputError) as info:
        load_spec(path)
    e = info.value
    assert not isinstance(e, SpecError)
    assert e.where == str(path)
    assert "not valid YAML" in e.what
    assert "YAML" in e.fix
    assert str(path) in str(e)


def test_missing_spec_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "spec.yaml"
    with pytest.raises(InputError) as info:
        load_spec(path)
    e = info.value
    assert e.where == str(path)
    assert "not found" in e.what
    assert e.fix
    assert str(path) in str(e)
    # A folder is not a spec file either.
    with pytest.raises(InputError, match="not found"):
        load_spec(tmp_path)


@pytest.mark.parametrize(
    ("section", "index", "key", "value"),
    [
        ("tables", 0, "name", ["user"]),
        ("domains", 0, "name", 1),
        ("features", 0, "column", 3),
    ],
)
def test_non_scalar_values_are_problems_not_crashes(
    tmp_path: Path, section: str, index: int, key: str, value: object
) -> None:
    raw = base()
    raw[section][index][key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert any(f"`{key}` must be a string" in p.message for p in e.value.problems), e.value.problems


def test_list_embedding_dim_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    raw = base()
    raw["tables"][0]["embedding_dim"] = [32]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="embedding_dim must be a positive integer"):
        load_spec(path)


def test_domain_names_must_be_plain_words(tmp_path: Path) -> None:
    raw = base()
    raw["domains"][0]["name"] = "A B"
    for f in raw["features"]:
        if f.get("domain") == "A":
            f["domain"] = "A B"
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="may hold only letters"):
        load_spec(path)
