"""Raw ids -> table rows, vectorised. The data layer maps ids: TorchRec's managed-collision (MCH/ZCH) modules
shard row-wise only, which TorchRec does not offer on CPU. ``hash`` is crossrank's own stable hash
(:mod:`crossrank.features.hashing`); ``vocab`` looks values up in a vocabulary file
(:mod:`crossrank.features.vocab`). Under ``oov: clip`` the ids sent to the OOV row are counted, and
:func:`check_oov_fraction` holds those counts to each mapping's ``max_oov_fraction``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from crossrank.features.errors import InputError
from crossrank.features.hashing import hash_rows
from crossrank.features.spec import FeatureSpec, IdMapping, TableSpec
from crossrank.features.vocab import FIT_HINT

# Fewer ids than this of a key are too few to judge its OOV fraction while reading (one early out-of-table
# id must not stop a job); the check at the end of an epoch judges every count.
MIN_IDS_FOR_OOV_CHECK = 10_000


def _hashed(values: pa.Array | np.ndarray, n: int, *, where: str, feature: str, spec_path: str) -> np.ndarray:
    """Rows by crossrank's own 64-bit hash (features/hashing.py), or an InputError for non-id values."""
    try:
        return hash_rows(values, n)
    except TypeError as e:
        raise InputError(
            f"feature '{feature}' cannot hash its ids: {e}",
            where=where,
            spec=spec_path,
            fix="write integer or string ids (e.g. cast float ids to int64 when preparing the data).",
        ) from None


def map_ids(
    values: pa.Array | np.ndarray,
    table: TableSpec,
    mapping: IdMapping,
    *,
    where: str,
    feature: str,
    spec_path: str,
) -> tuple[np.ndarray, int]:
    """Map a flat array of raw ids to rows of ``table``.

    Args:
        values: flat raw ids, int or string, no nulls (callers fill or reject nulls first).
        table: the table the ids index.
        mapping: ``hash`` (the same rows in every process, machine and library version), ``identity`` or
            ``vocab`` (row i = line i of the mapping's vocabulary file).
        where / feature / spec_path: named in the errors (out-of-range ids under ``oov: error``, non-ids).

    Returns:
        (rows, n_oov): int64 rows in ``[0, num_embeddings)``, and how many ids went to the OOV row.

    Example::

        rows, n_oov = map_ids(pa.array([3, 7]), TableSpec("t", 10, 8), IdMapping("hash"), where="f.parquet",
                              feature="user_id", spec_path="spec.yaml")
    """
    n = table.num_embeddings
    if mapping.type == "hash":
        return _hashed(values, n, where=where, feature=feature, spec_path=spec_path), 0
    if mapping.type == "vocab":
        return _looked_up(values, table, mapping, where=where, feature=feature, spec_path=spec_path)
    arr = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"feature '{feature}' maps ids by identity but the column holds {arr.dtype} values.",
            where=where,
            spec=spec_path,
            fix="use `mapping: {type: hash}` for string ids, or write integer ids.",
        )
    ids = arr.astype(np.int64, copy=False)
    limit = n - 1 if mapping.oov == "clip" else n  # clip reserves the last row for OOV ids
    bad = (ids < 0) | (ids >= limit)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return ids, 0
    if mapping.oov == "error":
        first = int(ids[bad][0])
        raise InputError(
            f"feature '{feature}': {n_bad} id(s) outside [0, {n}) of table '{table.name}' (first: {first}).",
            where=where,
            spec=spec_path,
            fix=f"raise num_embeddings of table '{table.name}', use `oov: clip`, or use `mapping: {{type: hash}}`.",
        )
    return np.where(bad, n - 1, ids), n_bad


def _looked_up(
    values: pa.Array | np.ndarray,
    table: TableSpec,
    mapping: IdMapping,
    *,
    where: str,
    feature: str,
    spec_path: str,
) -> tuple[np.ndarray, int]:
    """Rows by the mapping's vocabulary; values not in it go to the last row (clip) or raise (error)."""
    vocab = mapping.vocab
    if vocab is None:  # only a spec loaded for `features check --fit` lacks it, and that never maps ids
        raise ValueError(f"feature '{feature}': the vocabulary {mapping.file!r} is not loaded.")
    try:
        rows = vocab.lookup(values)
    except TypeError as e:
        raise InputError(
            f"feature '{feature}' maps values by vocabulary but {e}",
            where=where,
            spec=spec_path,
            fix="write string (or integer) values, or use `mapping: {type: hash}`.",
        ) from None
    unknown = rows < 0
    n_bad = int(unknown.sum())
    if n_bad == 0:
        return rows, 0
    if mapping.oov == "error":
        first = values[int(np.flatnonzero(unknown)[0])]
        raise InputError(
            f"feature '{feature}': {n_bad} value(s) not in vocabulary {vocab.path} "
            f"({len(vocab):,} values; first unknown: {_shown(first)}).",
            where=where,
            spec=spec_path,
            fix=f"add them to {vocab.path} (or rebuild it: {FIT_HINT}), or use `oov: clip`.",
        )
    return np.where(unknown, table.num_embeddings - 1, rows), n_bad


def _shown(value: object) -> str:
    """An Arrow scalar or numpy value as the user wrote it."""
    return repr(value.as_py() if isinstance(value, pa.Scalar) else value)


def check_oov_fraction(
    spec: FeatureSpec,
    oov: Mapping[str, int],
    ids: Mapping[str, int],
    *,
    where: str,
    min_ids: int = MIN_IDS_FOR_OOV_CHECK,
) -> None:
    """Raise an InputError for the first ``oov: clip`` key whose ids went to the OOV row more often than its
    ``mapping.max_oov_fraction`` allows, over the ids read so far.

    Args:
        spec: the feature spec (keys, tables, limits).
        oov / ids: per KJT key, the ids sent to the OOV row and all ids mapped.
        where: what was read (the data and, when counted over several processes, that they were summed).
        min_ids: keys with fewer ids are not judged yet (0 at the end of an epoch: every count is judged).
    """
    for key in spec.clipped_keys:
        n, bad = ids.get(key, 0), oov.get(key, 0)
        limit = spec.mapping_of_key(key).max_oov_fraction
        if n == 0 or n < min_ids or bad <= limit * n:
            continue
        raise oov_fraction_error(spec, key, bad, n, where=where)


def oov_fraction_error(spec: FeatureSpec, key: str, bad: int, n: int, *, where: str) -> InputError:
    """The error for a key whose OOV fraction ``bad / n`` is above its mapping's ``max_oov_fraction``."""
    mapping, table = spec.mapping_of_key(key), spec.table_of_key(key)
    feature = key.split("@")[0]
    rows = table.num_embeddings
    if mapping.type == "vocab":
        outside = f"are not in vocabulary {mapping.file}"
        widen = f"add the missing values to {mapping.file} (or rebuild it: {FIT_HINT}); raise num_embeddings"
    else:
        outside = f"are outside table '{table.name}' ({rows:,} rows: ids 0..{rows - 2:,} keep their row)"
        widen = "raise num_embeddings"
    return InputError(
        f"feature '{key}': {bad:,} of {n:,} ids read so far ({bad / n:.2%}) {outside} and went to the last, "
        f"OOV row (oov: clip): more than mapping.max_oov_fraction = {mapping.max_oov_fraction:g} "
        f"({mapping.max_oov_fraction:.2%}).",
        where=where,
        spec=f"{spec.path} (feature '{feature}')",
        fix=f"{widen} of table '{table.name}' (now {rows:,}) so that the ids fit, check that column "
        f"'{_column(spec, feature)}' holds the ids the table expects, or, if that many OOV ids are expected, "
        f"set `max_oov_fraction` (e.g. {min(1.0, 2 * bad / n):.2g}) in the mapping of feature '{feature}'.",
    )


def _column(spec: FeatureSpec, feature: str) -> str:
    return next(f.column for f in spec.features if f.name == feature)
