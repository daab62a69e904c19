"""Raw ids -> table rows, vectorised. The data layer maps ids: TorchRec's managed-collision (MCH/ZCH) modules
shard row-wise only, which TorchRec does not offer on CPU. ``hash`` is crossrank's own stable hash
(:mod:`crossrank.features.hashing`)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from crossrank.features.errors import InputError
from crossrank.features.hashing import hash_rows
from crossrank.features.spec import IdMapping, TableSpec


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
        mapping: ``hash`` (the same rows in every process, machine and library version) or ``identity``.
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
