"""Rows (impressions): drawing candidates and labels, cutting their histories, and their Arrow table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from crossrank.pipeline.prepare.contract import contract_schema
from crossrank.pipeline.prepare.synthetic.config import SyntheticConfig
from crossrank.pipeline.prepare.synthetic.world import (
    _TIME_BITS,
    TIME_SCALE,
    Block,
    World,
    _choose_interest,
)


@dataclass
class _Rows:
    """A chunk of rows before the histories are gathered."""

    user: np.ndarray
    time: np.ndarray
    domain: np.ndarray
    item: np.ndarray
    prob: np.ndarray
    label: np.ndarray

    def take(self, sel: np.ndarray) -> _Rows:
        """The rows at positions ``sel``."""
        return _Rows(
            user=self.user[sel],
            time=self.time[sel],
            domain=self.domain[sel],
            item=self.item[sel],
            prob=self.prob[sel],
            label=self.label[sel],
        )


def _draw_rows(
    config: SyntheticConfig, world: World, block: Block, rng: np.random.Generator, n: int
) -> _Rows:
    """Draw ``n`` rows of the block's users: candidate, true probability and label."""
    n_dom = len(config.domains)
    user = rng.integers(block.user_lo, block.user_hi, n, dtype=np.int64)
    t = rng.integers(0, TIME_SCALE, n, dtype=np.int64)
    domain = rng.integers(0, n_dom, n, dtype=np.int64)
    # Candidates: from one of the user's interests (any domain, by weight) or popularity-random.
    m = _choose_interest(rng, world.user_weight[user])
    from_interest = rng.random(n) < config.candidate_interest_frac
    cluster = np.where(from_interest, world.user_interest[user, m], -1)
    item = world.sample_items(rng, domain, cluster)

    # Interest current at t in each domain: the chain state at the latest earlier event (the first
    # event's when there is none).
    stream0 = (user - block.user_lo) * n_dom
    current = np.zeros(world.centres.shape[1])
    for d in range(n_dom):  # a loop over domains, vectorised over rows
        s = stream0 + d
        before = np.searchsorted(block.key, (s << _TIME_BITS) | t, side="left") - block.starts[s]
        cur = block.interest[block.starts[s] + np.maximum(before - 1, 0)]
        current = current + world.centres[cur]
    vec = world.item_vec[domain, item]
    affinity = np.einsum("nr,nr->n", vec, world.user_vec[user] + config.current_weight * current / n_dom)
    logit = (
        config.affinity_scale * affinity
        + world.item_bias[domain, item]
        + world.user_bias[user]
        + config.logit_offset
    )
    prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(n) < prob).astype(np.int8)
    return _Rows(user=user, time=t, domain=domain, item=item, prob=prob.astype(np.float32), label=label)


def _histories(
    config: SyntheticConfig, block: Block, user: np.ndarray, t: np.ndarray, d: int
) -> tuple[pa.Array, np.ndarray]:
    """The domain-``d`` histories strictly before ``t``: (list<int64> array, untruncated counts)."""
    s = (user - block.user_lo) * len(config.domains) + d
    start = block.starts[s]
    count = np.searchsorted(block.key, (s << _TIME_BITS) | t, side="left") - start
    lo = start + np.maximum(count - config.max_len, 0)
    lens = start + count - lo
    offsets = np.zeros(user.size + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    # Flat gather: value j of row i is event lo[i] + j.
    idx = np.repeat(lo - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
    values = pa.array(block.item[idx].astype(np.int64))
    lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return lists, count


def output_schema(domains: tuple[str, ...]) -> pa.Schema:
    """The Arrow schema of the split files: the data contract plus each row's true click probability."""
    return contract_schema(domains, [pa.field("true_prob", pa.float32())])


def _rows_table(
    config: SyntheticConfig,
    schema: pa.Schema,
    block: Block,
    rows: _Rows,
    row_id: np.ndarray,
    domain_names: pa.Array,
) -> tuple[pa.Table, np.ndarray, int]:
    """The output table of some rows of ``block``, histories gathered.

    Args:
        config: generator arguments.
        schema: ``output_schema(config.domains)``.
        block: the block the rows were drawn from.
        rows: the rows.
        row_id: their row ids.
        domain_names: the domain names, as an Arrow string array.

    Returns:
        (the table, history values written per domain, (row, domain) histories truncated to ``max_len``).
    """
    columns: dict[str, pa.Array] = {
        "row_id": pa.array(row_id),
        "user_id": pa.array(rows.user),
        "item_id": pa.array(rows.item),
        "domain": pa.DictionaryArray.from_arrays(
            pa.array(rows.domain.astype(np.int32)), domain_names
        ).dictionary_decode(),
        "label": pa.array(rows.label),
        "timestamp": pa.array(rows.time),
    }
    values = np.zeros(len(config.domains), dtype=np.int64)
    truncated = 0
    for d, name in enumerate(config.domains):
        lists, count = _histories(config, block, rows.user, rows.time, d)
        columns[f"hist_{name}"] = lists
        columns[f"hist_count_{name}"] = pa.array(count.astype(np.float32))
        values[d] = len(lists.values)
        truncated += int((count > config.max_len).sum())
    columns["true_prob"] = pa.array(rows.prob)
    return pa.Table.from_pydict(columns, schema=schema), values, truncated
