"""``crossrank features check SPEC --data TRAIN --fit``: what a spec learns from the training data.

* ``mean`` / ``std`` of every ``transform: standardize`` feature, over the values the reader standardizes
  (float32, missing and non-finite values replaced by ``fill``; the population std), streamed one row group at
  a time (Chan's pairwise merge of count, mean and squared deviations);
* the vocabulary file of every ``vocab`` mapping: the distinct values of all features naming the file (list
  entries included), most frequent first (equal counts in value order), at most ``num_embeddings - 1`` (the
  last row is the OOV row) of the smallest table they map into.

:func:`fit_spec` computes them; :func:`write_fit` writes the vocabulary files and then the spec, each
atomically. The statistics are written into the spec's own text (the YAML is edited where the feature's
``mean``/``std`` are, or they are added to its mapping), so comments and layout stay as they were; the edit
is checked by reloading, and when it cannot be made safely nothing is written and the error lists the values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from crossrank.features.atomic_files import write_text_atomic
from crossrank.features.errors import InputError
from crossrank.features.files import DataPaths, iter_row_groups
from crossrank.features.spec import FeatureDef, FeatureSpec
from crossrank.features.vocab import ValueCounts, vocab_path


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of a stream of values, merged batch by batch."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        x = x.astype(np.float64)
        n_b, mean_b = len(x), float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        """The population standard deviation (numpy's ``std`` with ``ddof=0``)."""
        return math.sqrt(self.m2 / self.n) if self.n else 0.0


def dense_inputs(column: pa.ChunkedArray | pa.Array, fill: float) -> np.ndarray:
    """A dense column as the reader sees it before its transform: float32, missing/NaN/inf -> ``fill``."""
    x = pc.cast(column, pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32)
    x[~np.isfinite(x)] = fill
    return x


@dataclass
class VocabTarget:
    """One vocabulary file to build: the features naming it and how many values their tables can hold."""

    file: str
    features: list[FeatureDef]
    capacity: int  # num_embeddings - 1 of the smallest table the features map into
    counts: ValueCounts = field(default_factory=ValueCounts)


@dataclass
class FitResult:
    """What :func:`fit_spec` computed: statistics, vocabularies, and notes for the user."""

    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # feature -> (mean, std)
    vocabs: dict[str, list[str]] = field(default_factory=dict)  # file (as the spec names it) -> values
    notes: list[str] = field(default_factory=list)


def vocab_targets(spec: FeatureSpec) -> list[VocabTarget]:
    """The vocabulary files of ``spec`` and the features (and table capacity) of each."""
    targets: dict[str, VocabTarget] = {}
    for f in spec.features:
        if f.kind == "dense" or f.mapping.type != "vocab":
            continue
        if f.kind == "candidate":
            tables = [d.table for d in spec.domains]
        else:
            tables = [spec.table_of_key(f.name).name]
        capacity = min(spec.table(t).num_embeddings - 1 for t in tables)
        target = targets.setdefault(f.mapping.file, VocabTarget(f.mapping.file, [], capacity))
        target.features.append(f)
        target.capacity = min(target.capacity, capacity)
    return list(targets.values())


def _values(part: pa.Table, f: FeatureDef) -> pa.Array:
    """One feature's non-null values in one row group (lists flattened)."""
    col = part.column(f.column).combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.list_flatten(col)
    return col.drop_null()


def _read_parts(spec: FeatureSpec, data: DataPaths, columns: list[str]) -> Iterator[tuple[pa.Table, str]]:
    """Each row group of ``data`` (those columns), one at a time, with where it comes from."""
    return iter_row_groups(data, columns, needed_for="needed to fit the spec", spec_path=spec.path)


def fit_spec(spec: FeatureSpec, data: DataPaths) -> FitResult:
    """Compute the standardize statistics and the vocabularies of ``spec`` from the training ``data``,
    streaming one row group at a time (memory: one row group plus the distinct vocabulary values)."""
    dense = [f for f in spec.dense_features if f.transform == "standardize"]
    targets = vocab_targets(spec)
    moments = {f.name: Moments() for f in dense}
    columns = list(dict.fromkeys([f.column for f in dense] + [f.column for t in targets for f in t.features]))
    result = FitResult()
    if not columns:
        result.notes.append("nothing to fit: no `transform: standardize` feature and no `vocab` mapping.")
        return result
    for part, where in _read_parts(spec, data, columns):
        for f in dense:
            moments[f.name].add(dense_inputs(part.column(f.column), f.fill))
        for target in targets:
            for f in target.features:
                try:
                    target.counts.add(_values(part, f))
                except TypeError as e:
                    raise InputError(
                        f"feature '{f.name}': column '{f.column}': {e}",
                        where=where,
                        spec=spec.path,
                        fix="a vocab mapping needs string (or integer) values.",
                    ) from None
    for f in dense:
        result.stats[f.name] = _standardize_stats(spec, f, moments[f.name])
    for target in targets:
        result.vocabs[target.file] = _vocabulary(spec, target, result.notes)
    return result


def _standardize_stats(spec: FeatureSpec, f: FeatureDef, m: Moments) -> tuple[float, float]:
    """(mean, std) of one feature; a constant column is an error (standardize would divide by 0)."""
    if m.n == 0 or not m.std > 0:
        raise InputError(
            f"feature '{f.name}': column '{f.column}' is constant ({m.mean:g}) over the {m.n:,} rows of the "
            "training data, so `transform: standardize` would divide by a std of 0.",
            spec=spec.path,
            fix="use `transform: none` (or drop the feature).",
        )
    return m.mean, m.std


def _vocabulary(spec: FeatureSpec, target: VocabTarget, notes: list[str]) -> list[str]:
    """The most frequent values that fit; values a line cannot hold (empty, line breaks) stay OOV. What
    would go to the OOV row must stay within the features' ``max_oov_fraction`` (else training would stop)."""
    counted = target.counts.most_frequent()
    usable = [(v, c) for v, c in counted if v and "\n" not in v and "\r" not in v]
    names = ", ".join(f"'{f.name}'" for f in target.features)
    if not usable:
        raise InputError(
            f"the training data holds no value for vocabulary {target.file} (features {names}).",
            spec=spec.path,
            fix="check that the features' columns hold the category values.",
        )
    if len(counted) > len(usable):
        notes.append(
            f"{target.file}: {len(counted) - len(usable)} value(s) that a line cannot hold (empty, line "
            "breaks) stay OOV."
        )
    kept = usable[: target.capacity]
    total = sum(c for _, c in counted)
    oov_share = 1.0 - sum(c for _, c in kept) / total
    if oov_share > 0 and any(f.mapping.oov == "error" for f in target.features):
        held = (
            f"{len(usable):,} distinct values but its tables hold at most {target.capacity:,} (their last row "
            "is the OOV row)"
            if len(kept) < len(usable)
            else "values that a line cannot hold (empty, line breaks)"
        )
        raise InputError(
            f"the training data holds {held} for vocabulary {target.file}, and under `oov: error` the values "
            "left out would stop training. Nothing was written.",
            spec=f"{spec.path} (features {names})",
            fix=f"raise num_embeddings to at least {len(usable) + 1:,}, or use `oov: clip`.",
        )
    limit = min(f.mapping.max_oov_fraction for f in target.features)
    if oov_share > limit:
        raise _coverage_error(spec, target, usable, total, oov_share, limit)
    if len(kept) < len(usable):
        notes.append(
            f"{target.file}: kept the {len(kept):,} most frequent of {len(usable):,} values; {oov_share:.2%} "
            f"of the occurrences go to the OOV row (oov: clip, max_oov_fraction {limit:g})."
        )
    return [v for v, _ in kept]


def _coverage_error(
    spec: FeatureSpec,
    target: VocabTarget,
    usable: list[tuple[str, int]],
    total: int,
    oov_share: float,
    limit: float,
) -> InputError:
    """The vocabulary that fits leaves more of the training data's occurrences to the OOV row than the
    features' ``max_oov_fraction`` allows: training would stop. The fix names the table size that would do."""
    covered = np.cumsum([c for _, c in usable])
    enough = int(np.searchsorted(covered, (1.0 - limit) * total - 1e-9)) + 1  # values needed
    bigger = (
        f"raise num_embeddings to at least {enough + 1:,} (the {enough:,} most frequent values then fit)"
        if enough <= len(usable)
        else "write the values a line cannot hold (empty, line breaks) otherwise when preparing the data"
    )
    return InputError(
        f"the {min(target.capacity, len(usable)):,} most frequent values that fit vocabulary {target.file} "
        f"leave {oov_share:.2%} of the training data's {total:,} occurrences to the OOV row, more than "
        f"max_oov_fraction {limit:g}: training would stop. Nothing was written.",
        spec=f"{spec.path} (features {', '.join(repr(f.name) for f in target.features)})",
        fix=f"{bigger}, or set `max_oov_fraction: {min(1.0, 1.5 * oov_share):.2g}` in the features' mapping.",
    )


# ---- writing -----------------------------------------------------------------------------------------------


def write_fit(spec: FeatureSpec, result: FitResult, output: Path) -> list[str]:
    """Write the vocabularies (next to ``output``, as the spec names them) and then the spec with its
    statistics to ``output`` (the spec itself, or a new file), each atomically; returns what was written."""
    text = Path(spec.path).read_text()
    new = set_dense_stats(text, result.stats, spec.path) if result.stats else text  # checked before writing
    lines: list[str] = []
    for file, values in result.vocabs.items():
        path = vocab_path(output, file)
        write_text_atomic("".join(f"{v}\n" for v in values), path)
        lines.append(f"wrote {path}: {len(values):,} values, most frequent first")
    for name, (mean, std) in result.stats.items():
        lines.append(f"feature '{name}': mean {_yaml_float(mean)}, std {_yaml_float(std)}")
    if new != text or output.resolve() != Path(spec.path).resolve():
        write_text_atomic(new, output)
        lines.append(f"wrote {output}")
    return lines


def _yaml_float(x: float) -> str:
    """``x`` to 10 significant digits, as YAML reads back a float (``1.0e-05``, never the string ``1e-05``)."""
    return yaml.safe_dump(float(f"{x:.10g}")).split("\n")[0]


def _key_node(mapping: yaml.MappingNode, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node, or None."""
    return next((v for k, v in mapping.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)


def set_dense_stats(text: str, stats: dict[str, tuple[float, float]], where: str) -> str:
    """The spec's YAML ``text`` with ``mean``/``std`` of the features in ``stats`` set, every other byte kept
    (comments, order, style). Raises InputError when the result would not read back as exactly that."""
    root = yaml.compose(text)
    features = _key_node(root, "features") if isinstance(root, yaml.MappingNode) else None
    edits: list[tuple[int, int, str]] = []
    for item in features.value if isinstance(features, yaml.SequenceNode) else []:
        name = _key_node(item, "name") if isinstance(item, yaml.MappingNode) else None
        if isinstance(name, yaml.ScalarNode) and name.value in stats:
            mean, std = stats[name.value]
            edits += _stat_edits(text, item, {"mean": _yaml_float(mean), "std": _yaml_float(std)})
    new = text
    for start, end, piece in sorted(edits, reverse=True):
        new = new[:start] + piece + new[end:]
    _verify(text, new, stats, where)
    return new


def _stat_edits(text: str, node: yaml.MappingNode, values: dict[str, str]) -> list[tuple[int, int, str]]:
    """(start, end, replacement) edits of ``text`` that set ``values`` in one feature's mapping node: an
    existing value is replaced in place; missing keys go after the last value of a flow mapping
    (``{..., mean: M, std: S}``) or on lines of their own after the first key of a block mapping."""
    edits: list[tuple[int, int, str]] = []
    missing: dict[str, str] = {}
    for key, value in values.items():
        node_of = _key_node(node, key)
        if node_of is None:
            missing[key] = value
        else:
            edits.append((node_of.start_mark.index, node_of.end_mark.index, value))
    if not missing:
        return edits
    if node.flow_style:
        end = node.value[-1][1].end_mark.index
        edits.append((end, end, "".join(f", {k}: {v}" for k, v in missing.items())))
    else:
        first_key, first_value = node.value[0]
        newline = text.find("\n", first_value.end_mark.index)
        at = len(text) if newline < 0 else newline
        indent = " " * first_key.start_mark.column
        edits.append((at, at, "".join(f"\n{indent}{k}: {v}" for k, v in missing.items())))
    return edits


def _verify(old: str, new: str, stats: dict[str, tuple[float, float]], where: str) -> None:
    """``new`` must read back as ``old`` with exactly the fitted statistics changed."""
    expected = copy.deepcopy(yaml.safe_load(old))
    for f in expected.get("features") or []:
        if isinstance(f, dict) and isinstance(f.get("name"), str) and f["name"] in stats:
            mean, std = stats[f["name"]]
            f["mean"], f["std"] = float(_yaml_float(mean)), float(_yaml_float(std))
    try:
        ok = yaml.safe_load(new) == expected
    except yaml.YAMLError:
        ok = False
    if not ok:
        shown = "; ".join(f"{n}: mean {_yaml_float(m)}, std {_yaml_float(s)}" for n, (m, s) in stats.items())
        raise InputError(
            "cannot place the fitted statistics into the spec's YAML without rewriting it; nothing was written.",
            where=where,
            fix=f"add them to the features by hand: {shown}.",
        )
