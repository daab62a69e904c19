"""Raw ids -> table rows, vectorised (the data layer maps ids; TorchRec's managed-collision modules do not
shard on CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from crossrank.features.errors import InputError
from crossrank.features.spec import IdMapping, TableSpec


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
        mapping: ``hash`` (stable across processes and runs, unlike Python's ``hash``) or ``identity``.
        where / feature / spec_path: named in the error raised for out-of-range ids under ``oov: error``.

    Returns:
        (rows, n_oov): int64 rows in ``[0, num_embeddings)``, and how many ids went to the OOV row.

    Example::

        rows, n_oov = map_ids(pa.array([3, 7]), TableSpec("t", 10, 8), IdMapping("identity", "clip"),
                              where="f.parquet", feature="user_id", spec_path="spec.yaml")
    """
    arr = values.to_numpy(zero_copy_only=False) if isinstance(values, pa.Array) else np.asarray(values)
    n = table.num_embeddings
    if mapping.type == "hash":
        # pandas' hash_array is a fixed-key SipHash-style mix: identical on every rank and every run.
        # Integers are widened first so an id hashes the same whatever column width stored it.
        arr = arr.astype(np.int64) if arr.dtype.kind in "iu" else arr
        hashed = pd.util.hash_array(arr, categorize=arr.dtype == object)
        return (hashed % np.uint64(n)).astype(np.int64), 0
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
