"""The feature spec: a YAML file that declares tables and features, and nothing else names a feature.

Format (see ``features/specs/*.yaml`` for complete examples)::

    name: movielens
    label: label                  # label column (absent when scoring)
    row_id: row_id                # row id column, kept through scoring
    domains:                      # N >= 2 behaviour domains, each with the item table it shares
      - {name: A, table: item_A}
      - {name: B, table: item_B}
    tables:
      - {name: user, num_embeddings: 8192, embedding_dim: 32}
      - {name: item_A, num_embeddings: 4096, embedding_dim: 32}
      - {name: item_B, num_embeddings: 4096, embedding_dim: 32}
    features:
      - {name: user_id, kind: id, column: user_id, table: user, mapping: {type: hash}}
      - {name: item, kind: candidate, column: item_id, domain_column: domain,
         mapping: {type: identity, oov: clip}}
      - {name: hist_A, kind: sequence, column: hist_A, domain: A, max_len: 100,
         mapping: {type: identity, oov: clip}}
      - {name: hist_B, kind: sequence, column: hist_B, domain: B, max_len: 100,
         mapping: {type: identity, oov: clip}}
      - {name: hist_count_A, kind: dense, column: hist_count_A, fill: 0.0, transform: log1p}

Feature kinds:
    ``id`` one id per row, pooled (EmbeddingBagCollection); ``id_list`` a bag of ids, pooled;
    ``sequence`` a domain's behaviour history, unpooled (EmbeddingCollection), sharing the domain's table;
    ``event`` what happened at each event of a history (``of: hist_A``): a list as long as the history's, in
    its own table, whose embedding ``e`` scales each event's item embedding, ``item * (1 + e)`` (e.g. the
    rating or action type: a history lists what the user touched, an event feature says how);
    ``candidate`` the row's candidate item: one id in the table of the row's domain (``domain_column``),
    so it shares that table with the domain's history; ``dense`` a float column.

Id mappings:
    ``hash`` a stable hash of int or string ids into ``[0, num_embeddings)``;
    ``identity`` the id is the row; ids outside ``[0, num_embeddings)`` follow ``oov``: ``error`` stops with
    the file/row group/column, ``clip`` sends them to the reserved last row (so valid ids are
    ``[0, num_embeddings - 1)``) and counts them;
    ``vocab`` (``{type: vocab, file: genres.txt}``) row ``i`` is line ``i`` of a vocabulary file next to the
    spec (:mod:`crossrank.features.vocab`); values not in it follow ``oov`` like ``identity`` ids.
    Under ``oov: clip``, ``max_oov_fraction`` (default 0.01) is the largest share of a feature's ids that may
    go to the OOV row: reading stops with an InputError above it.

Dense features:
    ``transform: standardize`` needs ``mean`` and ``std`` (``std > 0``): write them, or let
    ``crossrank features check SPEC --data TRAIN --fit`` compute them from the training data and write them
    into the spec. ``mean``/``std`` on any other transform are an error (they would be ignored).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from crossrank.features.atomic_files import write_text_atomic
from crossrank.features.errors import InputError
from crossrank.features.storage import as_path, cache_dir, cache_key, is_uri
from crossrank.features.vocab import (
    Vocab,
    copy_with_vocabs,
    name_problem,
    read_vocab,
    size_problem,
    vocab_path,
)

if TYPE_CHECKING:  # torchrec is imported only where tables are built: a spec is plain data
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig

FeatureKind = Literal["id", "id_list", "sequence", "event", "candidate", "dense"]
FEATURE_KINDS: tuple[str, ...] = ("id", "id_list", "sequence", "event", "candidate", "dense")
POOLED_KINDS: tuple[str, ...] = ("id", "id_list")
LIST_KINDS: tuple[str, ...] = ("id_list", "sequence", "event")  # a list column per row
HISTORY_KINDS: tuple[str, ...] = ("sequence", "event")  # cut to the history's last max_len entries
TRANSFORMS: tuple[str, ...] = ("none", "log1p", "standardize")
# Spec names -> member names of torchrec's PoolingType / DataType.
POOLINGS: dict[str, str] = {"sum": "SUM", "mean": "MEAN"}
DATA_TYPES: dict[str, str] = {"fp32": "FP32", "fp16": "FP16"}
MAPPING_TYPES: tuple[str, ...] = ("hash", "identity", "vocab")
DEFAULT_MAX_OOV_FRACTION = 0.01


@dataclass(frozen=True)
class IdMapping:
    """How raw ids become table rows.

    Args:
        type: ``hash``, ``identity`` or ``vocab``.
        oov: for ``identity`` and ``vocab``: ``error`` or ``clip`` (to the reserved last row).
        max_oov_fraction: under ``oov: clip``, the largest share of a key's ids that may go to the OOV row
            (over the ids read so far); above it reading stops with an InputError.
        file: for ``vocab``: the vocabulary file as the spec names it (relative to the spec's folder).
        vocab: for ``vocab``: the loaded vocabulary (None while ``features check --fit`` builds it).
    """

    type: Literal["hash", "identity", "vocab"] = "hash"
    oov: Literal["error", "clip"] = "error"
    max_oov_fraction: float = DEFAULT_MAX_OOV_FRACTION
    file: str = ""
    vocab: Vocab | None = field(default=None, compare=False, repr=False)

    @property
    def clips(self) -> bool:
        """Whether out-of-table ids go to the reserved last row (and are counted against max_oov_fraction)."""
        return self.type in ("identity", "vocab") and self.oov == "clip"

    @property
    def rows_key(self) -> tuple[str, str, str]:
        """What decides which row an id gets: features sharing a table must agree on it."""
        return (self.type, self.oov, self.file)


@dataclass(frozen=True)
class TableSpec:
    """One embedding table (shareable by several features)."""

    name: str
    num_embeddings: int
    embedding_dim: int
    pooling: str = "sum"
    data_type: str = "fp32"


@dataclass(frozen=True)
class DomainSpec:
    """A behaviour domain and the item table its candidates and history share."""

    name: str
    table: str


@dataclass(frozen=True)
class FeatureDef:
    """One feature. Fields that do not apply to a kind are left at their defaults."""

    name: str
    kind: FeatureKind
    column: str
    table: str = ""
    mapping: IdMapping = field(default_factory=IdMapping)
    domain: str = ""  # sequence: the domain whose history this is (event: filled in from ``of``)
    max_len: int = 0  # sequence: keep the most recent max_len events (event: filled in from ``of``)
    of: str = ""  # event: the sequence feature whose events it describes
    domain_column: str = ""  # candidate: column holding the row's domain name
    fill: float = 0.0  # dense: value for missing / NaN
    transform: str = "none"  # dense: none | log1p | standardize
    mean: float = 0.0  # dense standardize
    std: float = 1.0  # dense standardize


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec (or with data against it), with where and how to fix it."""

    source: str  # spec file, or data file / row group
    feature: str  # feature (or table / top-level key) concerned
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.source}: [{self.feature}] {self.message} Fix: {self.fix}"


class SpecError(InputError):
    """A spec (or data checked against it) has problems: all of them are listed, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) found:\n{lines}")


@dataclass(frozen=True)
class FeatureSpec:
    """A loaded, validated feature spec. Build with :func:`load_spec`."""

    path: str
    name: str
    label: str
    row_id: str
    domains: tuple[DomainSpec, ...]
    tables: tuple[TableSpec, ...]
    features: tuple[FeatureDef, ...]

    # ---- derived views -------------------------------------------------------------------------------
    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def embedding_dim(self) -> int:
        """D: one dim for every table (the DLRM interaction dots them together)."""
        return self.tables[0].embedding_dim

    def table(self, name: str) -> TableSpec:
        return next(t for t in self.tables if t.name == name)

    def of_kind(self, *kinds: str) -> list[FeatureDef]:
        return [f for f in self.features if f.kind in kinds]

    @property
    def candidate(self) -> FeatureDef:
        return self.of_kind("candidate")[0]

    def sequence_for(self, domain: str) -> FeatureDef:
        return next(f for f in self.of_kind("sequence") if f.domain == domain)

    def event_for(self, domain: str) -> FeatureDef | None:
        """The event feature of ``domain``'s history, if the spec declares one."""
        return next((f for f in self.of_kind("event") if f.domain == domain), None)

    @property
    def history_keys(self) -> list[str]:
        """KJT keys that make up the histories: per domain its sequence, then its event feature (if any)."""
        keys: list[str] = []
        for d in self.domain_names:
            event = self.event_for(d)
            keys += [self.sequence_for(d).name, *([event.name] if event else [])]
        return keys

    def candidate_key(self, domain: str) -> str:
        """KJT key of the candidate id in ``domain``'s table (length 1 in its own domain, 0 elsewhere)."""
        return f"{self.candidate.name}@{domain}"

    @property
    def pooled_keys(self) -> list[str]:
        """KJT keys of the pooled (EmbeddingBagCollection) features, in order."""
        return [f.name for f in self.of_kind(*POOLED_KINDS)]

    @property
    def sequence_keys(self) -> list[str]:
        """KJT keys of the EmbeddingCollection: per domain its history, its candidate slot, then its event
        feature (if any)."""
        keys: list[str] = []
        for d in self.domain_names:
            event = self.event_for(d)
            keys += [self.sequence_for(d).name, self.candidate_key(d), *([event.name] if event else [])]
        return keys

    @property
    def dense_features(self) -> list[FeatureDef]:
        return self.of_kind("dense")

    def table_of_key(self, key: str) -> TableSpec:
        """The table behind a KJT key (pooled, sequence or candidate)."""
        for f in self.features:
            if f.name == key:
                return self.table(f.table)
        domain = key.rsplit("@", 1)[1]
        return self.table(next(d.table for d in self.domains if d.name == domain))

    @property
    def clipped_keys(self) -> list[str]:
        """KJT keys (pooled, then sequence and candidate keys) whose ids are clipped to an OOV row (``oov:
        clip``): their OOV counts are reported and held to ``mapping.max_oov_fraction``."""
        return [k for k in [*self.pooled_keys, *self.sequence_keys] if self.mapping_of_key(k).clips]

    @property
    def vocab_files(self) -> list[str]:
        """The vocabulary files of ``vocab`` mappings as the spec names them (relative to its folder)."""
        return list(dict.fromkeys(f.mapping.file for f in self.features if f.mapping.type == "vocab"))

    def mapping_of_key(self, key: str) -> IdMapping:
        for f in self.features:
            if f.name == key:
                return f.mapping
        return self.candidate.mapping

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """TorchRec configs of the pooled tables (one per table, listing the features that share it)."""
        from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType

        configs = []
        for t in self.tables:
            names = [f.name for f in self.of_kind(*POOLED_KINDS) if f.table == t.name]
            if names:
                configs.append(
                    EmbeddingBagConfig(
                        name=t.name,
                        embedding_dim=t.embedding_dim,
                        num_embeddings=t.num_embeddings,
                        feature_names=names,
                        pooling=PoolingType[POOLINGS[t.pooling]],
                        data_type=DataType[DATA_TYPES[t.data_type]],
                    )
                )
        return configs

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """TorchRec configs of the unpooled tables: each domain's item table, shared by its history and
        its candidate slot (parameter sharing between candidate and history), then the event features'
        tables (one per table, listing the event features that share it)."""
        from torchrec.modules.embedding_configs import DataType, EmbeddingConfig

        uses = [(d.table, [self.sequence_for(d.name).name, self.candidate_key(d.name)]) for d in self.domains]
        for t in self.tables:
            names = [f.name for f in self.of_kind("event") if f.table == t.name]
            uses += [(t.name, names)] if names else []
        configs = []
        for table, names in uses:
            t = self.table(table)
            configs.append(
                EmbeddingConfig(
                    name=t.name,
                    embedding_dim=t.embedding_dim,
                    num_embeddings=t.num_embeddings,
                    feature_names=names,
                    data_type=DataType[DATA_TYPES[t.data_type]],
                )
            )
        return configs

    def required_columns(self, *, with_label: bool = True) -> list[str]:
        cols = [self.row_id] + ([self.label] if with_label else [])
        for f in self.features:
            cols.append(f.column)
            if f.kind == "candidate":
                cols.append(f.domain_column)
        return list(dict.fromkeys(cols))


# ---- loading ---------------------------------------------------------------------------------------------


def _fields_of(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _parse_mapping(raw: Any, src: str, feat: str, problems: list[Problem]) -> IdMapping:
    if raw is None:
        return IdMapping()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        problems.append(Problem(src, feat, f"mapping must be a mapping, got {raw!r}.", _MAPPING_FIX))
        return IdMapping()
    kind, oov = raw.get("type", "hash"), raw.get("oov", "error")
    if isinstance(kind, str) and kind.lower() in _MANAGED_COLLISION:
        problems.append(Problem(src, feat, _MANAGED_COLLISION_WHAT.format(kind=kind), _MANAGED_COLLISION_FIX))
        kind = "hash"
    elif kind not in MAPPING_TYPES:
        problems.append(Problem(src, feat, f"unknown mapping type {kind!r}.", _MAPPING_FIX))
        kind = "hash"
    if oov not in ("error", "clip"):
        problems.append(Problem(src, feat, f"unknown oov policy {oov!r}.", _MAPPING_FIX))
        oov = "error"
    extra = set(raw) - {"type", "oov", "max_oov_fraction", "file"}
    if extra:
        problems.append(Problem(src, feat, f"unknown mapping keys {sorted(extra)}.", _MAPPING_FIX))
    mapping = IdMapping(type=kind, oov=oov)
    fraction = _parse_max_oov_fraction(raw, mapping, src, feat, problems)
    file = _parse_vocab_file(raw, kind, src, feat, problems)
    return dataclasses.replace(mapping, max_oov_fraction=fraction, file=file)


def _parse_max_oov_fraction(
    raw: Mapping[str, Any], mapping: IdMapping, src: str, feat: str, problems: list[Problem]
) -> float:
    """``max_oov_fraction``: a number in [0, 1], given only where ids can be clipped (else the default)."""
    if "max_oov_fraction" not in raw:
        return DEFAULT_MAX_OOV_FRACTION
    value = raw["max_oov_fraction"]
    if not mapping.clips:
        problems.append(
            Problem(
                src,
                feat,
                f"max_oov_fraction applies to `oov: clip` only (this mapping is {mapping.type}/{mapping.oov}).",
                "remove it, or use `mapping: {type: identity|vocab, oov: clip, max_oov_fraction: F}`.",
            )
        )
        return DEFAULT_MAX_OOV_FRACTION
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        problems.append(
            Problem(
                src,
                feat,
                f"max_oov_fraction must be a number in [0, 1], got {value!r}.",
                "write e.g. `max_oov_fraction: 0.05` (5% of the ids may go to the OOV row; 1 never stops).",
            )
        )
        return DEFAULT_MAX_OOV_FRACTION
    return float(value)


def _parse_vocab_file(raw: Mapping[str, Any], kind: str, src: str, feat: str, problems: list[Problem]) -> str:
    """``file``: required by (and only by) ``vocab``; a relative path inside the spec's folder."""
    file = raw.get("file")
    if kind != "vocab":
        if file is not None:
            problems.append(Problem(src, feat, "`file:` applies to `type: vocab` only.", _MAPPING_FIX))
        return ""
    problem = name_problem(file)
    if problem is not None:
        problems.append(Problem(src, feat, *problem))
        return ""
    return str(file)


_MAPPING_FIX = (
    "write `mapping: {type: hash}`, `mapping: {type: identity, oov: error|clip}` or "
    "`mapping: {type: vocab, file: FILE, oov: error|clip}` (`max_oov_fraction: F` with `oov: clip`)."
)
# TorchRec's managed-collision modules (MCH/ZCH remapping) shard row-wise only; its sharders offer no
# row-wise sharding for pooled tables on CPU, so they cannot run (or be tested) on CPU with gloo.
_MANAGED_COLLISION = ("mch", "zch")
_MANAGED_COLLISION_WHAT = (
    "mapping type {kind!r} (TorchRec managed collision) is not supported: TorchRec shards those modules "
    "row-wise only, which it does not offer for pooled tables on CPU (gloo), so crossrank maps ids in the "
    "data layer with its stable hash instead."
)
_MANAGED_COLLISION_FIX = (
    "write `mapping: {type: hash}` and size the table's num_embeddings from the collision rate that "
    "`crossrank features check SPEC --data TRAIN` prints for the feature."
)


def _build(cls: type, raw: Any, src: str, what: str, problems: list[Problem], **extra: Any) -> Any:
    """Instantiate a spec dataclass from a YAML mapping, recording unknown or missing keys as problems."""
    if not isinstance(raw, Mapping):
        problems.append(Problem(src, what, f"expected a mapping, got {raw!r}.", "see features/spec.py."))
        return None
    unknown = set(raw) - _fields_of(cls) - set(extra)
    if unknown:
        problems.append(
            Problem(
                src, what, f"unknown keys {sorted(unknown)}.", f"allowed keys: {sorted(_fields_of(cls))}."
            )
        )
    kwargs = {k: v for k, v in raw.items() if k in _fields_of(cls)}
    # Names must be strings: a list where a name belongs would crash the checks that hash names. The value
    # is kept as text so the spec still builds and every other problem is reported too.
    hints = typing.get_type_hints(cls)
    for key, value in kwargs.items():
        if hints.get(key) is str and not isinstance(value, str):
            problems.append(
                Problem(src, what, f"`{key}` must be a string, got {value!r}.", f"quote `{key}`.")
            )
            kwargs[key] = str(value)
    kwargs.update(extra)
    try:
        return cls(**kwargs)
    except TypeError as e:
        problems.append(Problem(src, what, f"missing or invalid keys ({e}).", "see features/spec.py."))
        return None


def parse_spec(raw: Any, src: str, *, fitting: bool = False) -> tuple[FeatureSpec | None, list[Problem]]:
    """Parse and validate a spec already read from YAML; returns the spec (if buildable) and every problem.

    ``fitting``: the spec is about to be completed by ``features check --fit``, so what that computes may be
    missing (``mean``/``std`` of standardized features, vocabulary files, which are then not read)."""
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        return None, [Problem(src, "<spec>", "the file is not a YAML mapping.", "see features/specs/*.yaml.")]
    unknown = set(raw) - {"name", "label", "row_id", "domains", "tables", "features"}
    if unknown:
        problems.append(Problem(src, "<spec>", f"unknown top-level keys {sorted(unknown)}.", "remove them."))
    for key in ("label", "row_id"):
        if not isinstance(raw.get(key), str):
            problems.append(
                Problem(src, key, f"`{key}` (a column name) is missing.", f"add `{key}: COLUMN`.")
            )

    tables = [
        _build(TableSpec, t, src, f"tables[{i}]", problems) for i, t in enumerate(raw.get("tables") or [])
    ]
    tables = [t for t in tables if t is not None]
    domains = [
        _build(DomainSpec, d, src, f"domains[{i}]", problems) for i, d in enumerate(raw.get("domains") or [])
    ]
    domains = [d for d in domains if d is not None]
    features = _parse_features(raw.get("features") or [], src, problems, fitting)
    _validate(src, tables, domains, features, problems)
    if not fitting:
        features = _attach_vocabs(src, tables, domains, features, problems)
    if problems:
        return None, problems
    # A history's table defaults to its domain's item table: fill it in so every id feature names one; an
    # event feature takes its history's domain and length.
    domain_table = {d.name: d.table for d in domains}
    features = [
        dataclasses.replace(f, table=domain_table[f.domain]) if f.kind == "sequence" else f for f in features
    ]
    history = {f.name: f for f in features if f.kind == "sequence"}
    features = [
        dataclasses.replace(f, domain=history[f.of].domain, max_len=history[f.of].max_len)
        if f.kind == "event"
        else f
        for f in features
    ]
    spec = FeatureSpec(
        path=src,
        name=str(raw.get("name", Path(src).stem)),
        label=raw["label"],
        row_id=raw["row_id"],
        domains=tuple(domains),
        tables=tuple(tables),
        features=tuple(features),
    )
    return spec, problems


def _parse_features(raws: Any, src: str, problems: list[Problem], fitting: bool) -> list[FeatureDef]:
    """The ``features:`` list (with each id mapping and, for dense features, the standardize statistics)."""
    features: list[FeatureDef] = []
    for i, f in enumerate(raws):
        name = f.get("name", f"features[{i}]") if isinstance(f, Mapping) else f"features[{i}]"
        mapping = _parse_mapping(f.get("mapping") if isinstance(f, Mapping) else None, src, name, problems)
        built = _build(FeatureDef, f, src, name, problems, mapping=mapping)
        if built is not None:
            features.append(built)
            if built.kind == "dense":
                problems += _dense_stats_problems(built, set(f), src, fitting)
    return features


_FIT_FIX = (
    "set `mean:` and `std:` (of the training data), or let `crossrank features check SPEC --data TRAIN --fit` "
    "compute them and write them into the spec."
)


def _dense_stats_problems(f: FeatureDef, given: set[str], src: str, fitting: bool) -> list[Problem]:
    """``mean``/``std``: required by ``standardize`` (std > 0, both finite numbers), allowed nowhere else.
    One problem per feature, listing everything wrong with its statistics."""
    stats = [k for k in ("mean", "std") if k in given]
    if f.transform != "standardize":
        if not stats:
            return []
        keys = " and ".join(f"`{k}`" for k in stats)
        what = f"{keys} only apply to `transform: standardize` (here {f.transform!r})."
        return [Problem(src, f.name, what, "remove them, or set `transform: standardize`.")]
    if fitting:  # --fit computes (and overwrites) both
        return []
    issues: list[str] = []
    missing = [k for k in ("mean", "std") if k not in given]
    if missing:
        issues.append(f"standardize needs `mean` and `std`; {' and '.join(missing)} missing (no silent 0/1).")
    if "mean" in given and not _finite_number(f.mean):
        issues.append(f"mean must be a finite number, got {f.mean!r}.")
    if "std" in given and not (_finite_number(f.std) and f.std > 0):
        issues.append(f"standardize needs std > 0, got {f.std!r}.")
    return [Problem(src, f.name, " ".join(issues), _FIT_FIX)] if issues else []


def _finite_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _attach_vocabs(
    src: str,
    tables: list[TableSpec],
    domains: list[DomainSpec],
    features: list[FeatureDef],
    problems: list[Problem],
) -> list[FeatureDef]:
    """Read each ``vocab`` mapping's file (once per file) into its mapping, checking the file and that it
    fits every table the feature maps into."""
    sizes = {t.name: t.num_embeddings for t in tables if isinstance(t.num_embeddings, int)}
    domain_table = {d.name: d.table for d in domains}
    loaded: dict[str, tuple[Vocab | None, list[tuple[str, str]]]] = {}
    out: list[FeatureDef] = []
    for f in features:
        if f.kind == "dense" or f.mapping.type != "vocab" or not f.mapping.file:
            out.append(f)
            continue
        if f.mapping.file not in loaded:
            loaded[f.mapping.file] = read_vocab(vocab_path(src, f.mapping.file))
            problems += [Problem(src, f.name, msg, fix) for msg, fix in loaded[f.mapping.file][1]]
        vocab = loaded[f.mapping.file][0]
        if vocab is None:
            out.append(f)
            continue
        if f.kind == "candidate":
            used = list(domain_table.values())
        else:
            used = [domain_table.get(f.domain, "") if f.kind == "sequence" else f.table]
        for table in dict.fromkeys(t for t in used if t in sizes):
            problem = size_problem(vocab, table, sizes[table])
            if problem is not None:
                problems.append(Problem(src, f.name, *problem))
        out.append(dataclasses.replace(f, mapping=dataclasses.replace(f.mapping, vocab=vocab)))
    return out


# Records one problem of the spec being validated: (feature/table/key concerned, message, fix).
_Add = Callable[[str, str, str], None]


def _duplicates(names: list[str]) -> set[str]:
    return {n for n in names if names.count(n) > 1}


@dataclass(frozen=True)
class _Declared:
    """The tables and domains a spec declares, as the feature checks look them up."""

    table_names: list[str]
    domain_names: list[str]
    domain_table: dict[str, str]  # domain name -> its item table
    domain_tables: list[str]  # each declared domain's item table, duplicates kept

    @classmethod
    def of(cls, tables: list[TableSpec], domains: list[DomainSpec]) -> _Declared:
        return cls(
            table_names=[t.name for t in tables],
            domain_names=[d.name for d in domains],
            domain_table={d.name: d.table for d in domains},
            domain_tables=[d.table for d in domains],
        )


@dataclass
class _TableUse:
    """How the features use each table (insertion-ordered, so problems come out in declaration order)."""

    kinds: dict[str, set[str]] = field(default_factory=dict)  # "pooled" / "unpooled"
    mappings: dict[str, set[tuple[str, str, str]]] = field(default_factory=dict)  # IdMapping.rows_key

    def record(self, table: str, kind: str, mapping: IdMapping) -> None:
        self.kinds.setdefault(table, set()).add(kind)
        self.mappings.setdefault(table, set()).add(mapping.rows_key)


def _validate(
    src: str,
    tables: list[TableSpec],
    domains: list[DomainSpec],
    features: list[FeatureDef],
    problems: list[Problem],
) -> None:
    """Append every problem of the parsed tables, domains and features to ``problems``, section by section."""

    def add(feat: str, msg: str, fix: str) -> None:
        problems.append(Problem(src, feat, msg, fix))

    declared = _Declared.of(tables, domains)
    _check_tables(add, tables)
    _check_domains(add, domains, declared)
    use = _TableUse()
    for name in _duplicates([f.name for f in features]):
        add(name, f"feature name {name!r} is declared more than once.", "give each feature a unique name.")
    for f in features:
        _check_feature(add, f, declared, use)
    _check_feature_counts(add, features, declared.domain_names)
    _check_table_use(add, use)


def _check_tables(add: _Add, tables: list[TableSpec]) -> None:
    """Unique names, sizes, pooling and data type of each table, and one embedding dim for all."""
    for name in _duplicates([t.name for t in tables]):
        add(name, f"table name {name!r} is declared more than once.", "give each table a unique name.")
    for t in tables:
        if not isinstance(t.num_embeddings, int) or t.num_embeddings < 2:
            add(
                t.name,
                f"num_embeddings must be an integer >= 2, got {t.num_embeddings!r}.",
                "fix the table size.",
            )
        if not isinstance(t.embedding_dim, int) or t.embedding_dim < 1:
            add(t.name, f"embedding_dim must be a positive integer, got {t.embedding_dim!r}.", "fix the dim.")
        if t.pooling not in POOLINGS:
            add(t.name, f"unknown pooling {t.pooling!r}.", f"use one of {sorted(POOLINGS)}.")
        if t.data_type not in DATA_TYPES:
            add(t.name, f"unknown data_type {t.data_type!r}.", f"use one of {sorted(DATA_TYPES)}.")
    dims = {t.embedding_dim for t in tables if isinstance(t.embedding_dim, int)}
    if len(dims) > 1:
        detail = ", ".join(f"{t.name}={t.embedding_dim}" for t in tables)
        add(
            "tables",
            f"embedding dims differ ({detail}); the DLRM interaction dots every embedding with every other.",
            "give every table the same embedding_dim.",
        )


def _check_domains(add: _Add, domains: list[DomainSpec], declared: _Declared) -> None:
    """At least two uniquely and plainly named domains, each with a declared item table of its own."""
    if len(domains) < 2:
        add(
            "domains",
            f"{len(domains)} domain(s) declared; crossrank ranks across N >= 2 domains.",
            "declare 2+.",
        )
    for name in _duplicates(declared.domain_names):
        add(name, f"domain {name!r} is declared more than once.", "give each domain a unique name.")
    for name in declared.domain_names:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            add(name, f"domain name {name!r} may hold only letters, digits and '_'.", "rename the domain.")
    for d in domains:
        if d.table not in declared.table_names:
            add(
                d.name,
                f"domain {d.name!r} uses unknown table {d.table!r}.",
                f"declare it; tables: {declared.table_names}.",
            )
    for table in _duplicates(declared.domain_tables):
        add(
            table,
            f"table {table!r} is the item table of several domains.",
            "give each domain its own item table.",
        )


def _check_feature(add: _Add, f: FeatureDef, declared: _Declared, use: _TableUse) -> None:
    """One feature's kind, column, name and kind-specific keys; records the tables it uses in ``use``."""
    if f.kind not in FEATURE_KINDS:
        add(f.name, f"unknown kind {f.kind!r}.", f"use one of {list(FEATURE_KINDS)}.")
        return
    if not isinstance(f.column, str) or not f.column:
        add(f.name, "no source `column`.", "add `column: NAME`.")
    if "@" in f.name:
        add(
            f.name,
            "feature names may not contain '@' (reserved for per-domain candidate keys).",
            "rename it.",
        )
    if f.kind == "dense":
        _check_dense(add, f)
        return
    if f.kind == "candidate":
        if not f.domain_column:
            add(f.name, "a candidate feature needs `domain_column`.", "add `domain_column: COLUMN`.")
        # The candidate is looked up in the item table of its row's domain: it uses every domain's table.
        for item_table in declared.domain_tables:
            use.record(item_table, "unpooled", f.mapping)
        return
    if f.kind == "sequence":
        table = _sequence_table(add, f, declared)
    elif f.kind == "event":
        table = _event_table(add, f, declared)
    else:
        table = _pooled_table(add, f, declared)
    if table is None:
        return
    if table not in declared.table_names:
        add(
            f.name,
            f"uses unknown table {table!r}.",
            f"declare it under `tables:`; known: {declared.table_names}.",
        )
        return
    use.record(table, "pooled" if f.kind in POOLED_KINDS else "unpooled", f.mapping)


def _check_dense(add: _Add, f: FeatureDef) -> None:
    if f.transform not in TRANSFORMS:
        add(f.name, f"unknown transform {f.transform!r}.", f"use one of {list(TRANSFORMS)}.")
    if f.table:
        add(f.name, "a dense feature has no table.", "remove `table:`.")


def _sequence_table(add: _Add, f: FeatureDef, declared: _Declared) -> str | None:
    """The table of a domain's history (its domain's item table), or None when its domain is unknown."""
    if f.domain not in declared.domain_table:
        add(
            f.name,
            f"sequence feature names unknown domain {f.domain!r}.",
            f"use one of {declared.domain_names}.",
        )
        return None
    table = declared.domain_table[f.domain]
    if f.table and f.table != table:
        add(
            f.name,
            f"uses table {f.table!r} but domain {f.domain!r} has item table {table!r}; "
            "a domain's history and candidate share one table.",
            "drop `table:` (it defaults to the domain's table) or fix it.",
        )
    if not isinstance(f.max_len, int) or f.max_len < 1:
        add(f.name, f"max_len must be a positive integer, got {f.max_len!r}.", "set `max_len: N`.")
    return table


def _event_table(add: _Add, f: FeatureDef, declared: _Declared) -> str | None:
    """The table of an event feature: its own, not an item table (those hold items; the event embedding
    scales the item's). Whether ``of`` names a history is checked with the feature counts."""
    if f.domain or f.max_len:
        add(f.name, "an event feature takes `domain` and `max_len` from its history.", "remove them.")
    if f.table in declared.domain_tables:
        add(
            f.name,
            f"uses item table {f.table!r}; an event feature's ids (e.g. a rating) are not items.",
            "give it a table of its own (e.g. `{name: rating, num_embeddings: 8, embedding_dim: D}`).",
        )
    return _pooled_table(add, f, declared)


def _pooled_table(add: _Add, f: FeatureDef, declared: _Declared) -> str | None:
    """The table an ``id`` / ``id_list`` feature names, or None when it names none."""
    if not f.table:
        add(f.name, f"a {f.kind} feature needs `table:`.", f"name one of {declared.table_names}.")
        return None
    return f.table


def _check_feature_counts(add: _Add, features: list[FeatureDef], domain_names: list[str]) -> None:
    """Exactly one candidate, one history per domain, and at least one pooled feature."""
    n_candidates = sum(1 for f in features if f.kind == "candidate")
    if n_candidates != 1:
        add(
            "features",
            f"{n_candidates} candidate features; exactly one is needed.",
            "declare one `kind: candidate`.",
        )
    for domain in domain_names:
        n = sum(1 for f in features if f.kind == "sequence" and f.domain == domain)
        if n != 1:
            add(
                domain,
                f"domain {domain!r} has {n} sequence features; exactly one is needed.",
                "declare its history once.",
            )
    _check_events(add, features)
    if not any(f.kind in POOLED_KINDS for f in features):
        add("features", "no pooled (`id`/`id_list`) feature.", "declare at least one, e.g. the user id.")


def _check_events(add: _Add, features: list[FeatureDef]) -> None:
    """Each event feature describes one declared history, and a history has at most one."""
    histories = [f.name for f in features if f.kind == "sequence"]
    events = [f for f in features if f.kind == "event"]
    for f in events:
        if f.of not in histories:
            add(
                f.name,
                f"`of: {f.of!r}` names no sequence feature.",
                f"name the history whose events it describes, one of {histories}.",
            )
    for name in _duplicates([f.of for f in events if f.of]):
        add(name, f"history {name!r} has several event features.", "declare one per history.")


def _check_table_use(add: _Add, use: _TableUse) -> None:
    """A table serves one collection (pooled or unpooled) and one id mapping."""
    for table, kinds in use.kinds.items():
        if len(kinds) > 1:
            add(
                table,
                f"table {table!r} is used by pooled and unpooled features; TorchRec keeps them in two collections.",
                "give the pooled features their own table.",
            )
    for table, maps in use.mappings.items():
        if len(maps) > 1:
            shown = sorted("/".join(part for part in m if part) for m in maps)
            add(table, f"features sharing table {table!r} map ids differently ({shown}).", "use one mapping.")


def load_spec(path: str | Path, *, fitting: bool = False) -> FeatureSpec:
    """Read and validate a feature spec; raises :class:`SpecError` listing every problem at once.
    ``fitting``: see :func:`parse_spec` (``features check --fit`` loads the spec it completes this way).
    A spec at a URI (``s3://...``) is read through a local cache with its vocabulary files."""
    path = fetch_spec(as_path(path)) if is_uri(path) else Path(path)
    if not path.is_file():
        raise InputError(
            "feature spec not found.", where=str(path), fix="pass the path of a YAML feature spec."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML ({e}).", where=str(path), fix="fix the YAML syntax.") from None
    spec, problems = parse_spec(raw, str(path), fitting=fitting)
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def fetch_spec(path: Path) -> Path:
    """A local copy of the remote spec at ``path`` and of its vocabulary files (their paths relative to the
    spec, as :func:`copy_spec` keeps them), in ``$CROSSRANK_CACHE/specs/<hash of the URI>/``, refreshed on
    every call (a cache, not a source: a re-saved checkpoint's spec is read again)."""
    if not path.is_file():
        raise InputError(
            "feature spec not found.", where=str(path), fix="pass the URI of a YAML feature spec."
        )
    text = path.read_text()
    folder = cache_dir("specs", cache_key(path))
    try:
        raw = yaml.safe_load(text)
        features = raw.get("features") if isinstance(raw, dict) else None
    except yaml.YAMLError:
        features = None  # load_spec reports it, naming the copy
    for f in features if isinstance(features, list) else []:
        mapping = f.get("mapping") if isinstance(f, dict) else None
        vocab = mapping.get("file") if isinstance(mapping, dict) else None
        if isinstance(vocab, str) and vocab and (path.parent / vocab).is_file():
            write_text_atomic((path.parent / vocab).read_text(encoding="utf-8"), folder / vocab)
    write_text_atomic(text, folder / path.name)
    return folder / path.name


def copy_spec(path: str | Path, folder: Path, name: str = "spec.yaml") -> Path:
    """Copy the (valid) spec at ``path`` to ``folder/name`` together with its vocabulary files, so that the
    copy loads on its own: a checkpoint keeps its spec this way (a ``vocab`` mapping's rows are its file's
    lines, part of the model like its weights). Returns the copy's path."""
    spec = load_spec(path)
    copy_with_vocabs(path, spec.vocab_files, folder, name)
    return folder / name


def builtin_spec_path(name: str) -> Path:
    """Path of a spec shipped with crossrank (``movielens``, ``synthetic``)."""
    return Path(__file__).parent / "specs" / f"{name}.yaml"
