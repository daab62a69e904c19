"""The data contract's Arrow schema, shared by every preparer (SPEC: one row per impression)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa


def contract_schema(domains: Sequence[str], extra: Sequence[pa.Field] = ()) -> pa.Schema:
    """``row_id, user_id, item_id, domain, label, timestamp``, then ``hist_<d>`` (list<int64>) and
    ``hist_count_<d>`` (float32) per domain in order, then ``extra`` fields.

    Args:
        domains: the domain names, in column order.
        extra: fields a preparer adds at the end (e.g. synthetic data's ``true_prob``).

    Example::

        schema = contract_schema(["A", "B"])  # 10 fields
    """
    fields = [
        pa.field("row_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("timestamp", pa.int64()),
    ]
    for d in domains:
        fields += [pa.field(f"hist_{d}", pa.list_(pa.int64())), pa.field(f"hist_count_{d}", pa.float32())]
    return pa.schema([*fields, *extra])
