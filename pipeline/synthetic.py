"""``crossrank prepare synthetic``: a two-domain ranking data set whose ground truth is known.

It serves three purposes: the embedded default data (the demo trains on it in minutes on a laptop),
a scale test (tens of millions of rows, histories of 10k+ events, in bounded memory) and a test
oracle (every row carries the true click probability, so a model can be compared with the best
achievable AUC).

Generative story:

* Latent interest clusters ``c = 0..C-1`` with unit centres in ``R^r``. Every domain has its own
  ``items_per_domain`` items (0-based ids per domain); an item belongs to one cluster, its vector is
  the cluster centre plus a little noise, and it has a bias that is also its (log) popularity.
* A user has ``M`` interest clusters with Dirichlet weights. Each interest is *expressed* in one
  domain only (every domain gets at least one), so one domain's history shows only part of the
  user's taste and the other domains carry information about this domain's candidates.
* A user has one event stream per domain with a heavy-tailed (lognormal, capped) length, spread
  uniformly over time ``[0, 1)``. Events follow a sticky chain over the interests expressed in that
  domain (switching with a small probability per event), so recent events concentrate on one
  interest while old interests recur over a long history.
* A row (impression) picks a user, a time ``t``, a candidate domain and a candidate item (half from
  the user's interest clusters in any domain, half popularity-weighted random). The true click
  probability is ``sigmoid(a * affinity + item_bias + user_bias + b)`` where the affinity covers all
  the user's interests plus extra weight for the interests current at ``t``; the label is a
  Bernoulli draw from it. The row's histories are the user's events strictly before ``t``, most
  recent last, truncated to ``max_len``.
* Split by time: ``t < 0.8`` train, ``0.8 <= t < 0.9`` valid, ``t >= 0.9`` test.

Scale: users are generated in blocks (bounded by their number of events) and a block's rows in
chunks (bounded by their history values), so memory does not grow with ``rows`` or ``users``
except for the per-row (probability, label) pairs kept for the oracle AUC (5 bytes a row). Users
are i.i.d., so a part file drawn from one block is a representative sample of the whole set.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.errors import InputError
from pipeline.auc import roc_auc
from pipeline.parquet_out import AtomicParquetWriter, write_json_atomic

SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: Timestamps are integers: ``t`` in [0, 1) scaled by this (< 2**30, see ``_TIME_BITS``).
TIME_SCALE = 1_000_000_000
#: Split boundaries in timestamp units: t < 0.8 train, 0.8 <= t < 0.9 valid, t >= 0.9 test.
SPLIT_BOUNDS: tuple[int, int] = (800_000_000, 900_000_000)
# Event keys pack (stream, time) into one int64 so one sort / searchsorted serves all streams.
_TIME_BITS = 30
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass
class SyntheticConfig:
    """Arguments of the synthetic generator.

    Args:
        users: number of users; user ids are ``0..users-1``.
        items_per_domain: items per domain; item ids of every domain are ``0..items_per_domain-1``.
        rows: number of impressions over all splits.
        max_len: histories are truncated to the most recent ``max_len`` events.
        seed: random seed; the same config gives byte-identical columns.
        domains: domain names (at least two); columns ``hist_<name>`` / ``hist_count_<name>``.
        row_group_size: rows per Parquet row group.
        n_clusters: latent interest clusters.
        latent_dim: dimension of the latent space.
        interests_per_user: interest clusters per user (at least one per domain).
        item_noise: spread of item vectors around their cluster centre.
        item_bias_sd: std of item biases (also the log popularity used for sampling).
        user_bias_sd: std of user biases.
        switch_prob: probability per event that the event stream switches interest.
        random_event_prob: probability that an event is a popularity-weighted random item.
        hist_median: median events per user and domain (default ``max_len / 2``).
        hist_sigma: lognormal sigma of the events per user and domain (heavy tail).
        hist_cap: cap of events per user and domain (default ``4 * max_len``; at least ``2 * max_len``
            so that truncation matters).
        candidate_interest_frac: fraction of candidates drawn from the user's interest clusters.
        affinity_scale: ``a`` in the click model.
        current_weight: extra affinity weight of the interests current at the row's time.
        logit_offset: ``b`` in the click model (sets the positive rate).
        events_per_block: users are generated in blocks of about this many events (memory bound).
        chunk_values: rows are processed in chunks of about this many history values (memory bound).
        values_per_part: a split starts a new part file after about this many history values.
    """

    users: int = 2000
    items_per_domain: int = 1000
    rows: int = 60000
    max_len: int = 100
    seed: int = 0
    domains: tuple[str, ...] = ("A", "B")
    row_group_size: int = 16384
    n_clusters: int = 32
    latent_dim: int = 8
    interests_per_user: int = 4
    item_noise: float = 0.35
    item_bias_sd: float = 0.5
    user_bias_sd: float = 0.5
    switch_prob: float = 0.05
    random_event_prob: float = 0.1
    hist_median: float | None = None
    hist_sigma: float = 1.0
    hist_cap: int | None = None
    candidate_interest_frac: float = 0.5
    affinity_scale: float = 2.5
    current_weight: float = 1.0
    logit_offset: float = -1.5
    events_per_block: int = 4_000_000
    chunk_values: int = 16_000_000
    values_per_part: int = 100_000_000

    def __post_init__(self) -> None:
        # Accept lists (YAML, JSON) for the domains but keep the declared tuple type.
        self.domains = tuple(self.domains)
        self.validate()

    @property
    def median_events(self) -> float:
        """Median events per user and domain, ``hist_median`` resolved."""
        return float(self.hist_median) if self.hist_median is not None else self.max_len / 2

    @property
    def events_cap(self) -> int:
        """Cap of events per user and domain, ``hist_cap`` resolved."""
        return int(self.hist_cap) if self.hist_cap is not None else 4 * self.max_len

    def validate(self) -> None:
        """Raise InputError naming the first bad argument."""

        def bad(name: str, what: str, fix: str) -> InputError:
            return InputError(f"{name} {what}", where="synthetic config", fix=fix)

        ints = {
            "users": 1,
            "items_per_domain": 1,
            "rows": 1,
            "max_len": 1,
            "row_group_size": 1,
            "n_clusters": 1,
            "latent_dim": 1,
            "interests_per_user": 1,
            "events_per_block": 1,
            "chunk_values": 1,
            "values_per_part": 1,
        }
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise bad(name, f"must be an integer, got {value!r}", f"pass an integer >= {low}")
            if value < low:
                raise bad(name, f"must be >= {low}, got {value}", f"pass an integer >= {low}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise bad("seed", f"must be a non-negative integer, got {self.seed!r}", "pass e.g. 0")
        if len(self.domains) < 2:
            raise bad("domains", f"needs at least 2 domains, got {list(self.domains)}", "pass e.g. A B")
        for name in self.domains:
            if not isinstance(name, str) or not _DOMAIN_NAME.match(name):
                raise bad("domains", f"has a bad name {name!r}", "use letters, digits and _ only")
        if len(set(self.domains)) != len(self.domains):
            raise bad("domains", f"has duplicate names: {list(self.domains)}", "give each domain its name")
        if self.items_per_domain < self.n_clusters:
            raise bad(
                "items_per_domain",
                f"({self.items_per_domain}) must be >= n_clusters ({self.n_clusters})",
                "every cluster needs an item in every domain: raise items_per_domain or lower n_clusters",
            )
        if not len(self.domains) <= self.interests_per_user <= self.n_clusters:
            raise bad(
                "interests_per_user",
                f"({self.interests_per_user}) must be between the number of domains "
                f"({len(self.domains)}) and n_clusters ({self.n_clusters})",
                "every domain expresses at least one interest, and interests are distinct clusters",
            )
        for name in ("switch_prob", "random_event_prob", "candidate_interest_frac"):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= 1.0:
                raise bad(name, f"must be in [0, 1], got {value}", "pass a probability")
        for name in ("item_noise", "item_bias_sd", "user_bias_sd", "hist_sigma", "current_weight"):
            value = getattr(self, name)
            if not float(value) >= 0.0:  # also rejects NaN
                raise bad(name, f"must be >= 0, got {value}", "pass a non-negative number")
        for name in ("affinity_scale", "logit_offset"):
            if not np.isfinite(float(getattr(self, name))):
                raise bad(name, f"must be finite, got {getattr(self, name)}", "pass a finite number")
        if self.hist_median is not None and not float(self.hist_median) > 0.0:
            raise bad("hist_median", f"must be > 0, got {self.hist_median}", "pass a positive number")
        if self.hist_cap is not None and self.hist_cap < 2 * self.max_len:
            raise bad(
                "hist_cap",
                f"({self.hist_cap}) must be >= 2 * max_len ({2 * self.max_len})",
                "histories must be able to exceed max_len so that truncation matters",
            )


@dataclass
class SplitSummary:
    """Statistics of one split.

    Args:
        rows: rows in the split.
        users: distinct users with a row in the split.
        positive_rate: mean label.
        oracle_auc: AUC of ``true_prob`` against the labels (None when one class is missing).
        parts: Parquet files written.
    """

    rows: int
    users: int
    positive_rate: float | None
    oracle_auc: float | None
    parts: int


@dataclass
class SyntheticSummary:
    """What ``prepare_synthetic`` wrote.

    Args:
        out_dir: the output folder.
        splits: per split statistics, in train / valid / test order.
        mean_hist_len: mean history length per domain after truncation, over all rows.
        truncated_frac: fraction of (row, domain) histories cut to ``max_len``.
        events: total events generated over all users and domains.
        seconds: generation wall time.
        params: the generator arguments.
    """

    out_dir: str
    splits: dict[str, SplitSummary]
    mean_hist_len: dict[str, float]
    truncated_frac: float
    events: int
    seconds: float
    params: dict = field(default_factory=dict)

    def format(self) -> str:
        """A readable table of the splits."""
        head = f"{'split':<6} {'rows':>12} {'users':>9} {'pos rate':>9} {'oracle AUC':>11} {'parts':>6}"
        lines = [f"synthetic data in {self.out_dir}", head, "-" * len(head)]
        for name, s in self.splits.items():
            pos = "-" if s.positive_rate is None else f"{s.positive_rate:.4f}"
            auc = "-" if s.oracle_auc is None else f"{s.oracle_auc:.4f}"
            lines.append(f"{name:<6} {s.rows:>12,} {s.users:>9,} {pos:>9} {auc:>11} {s.parts:>6}")
        hist = ", ".join(f"{d} {v:.1f}" for d, v in self.mean_hist_len.items())
        lines.append(
            f"mean history length: {hist}; truncated to max_len: {self.truncated_frac:.1%}; "
            f"events: {self.events:,}; {self.seconds:.1f} s"
        )
        return "\n".join(lines)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (what summary.json holds)."""
        return {
            "out_dir": self.out_dir,
            "splits": {name: asdict(s) for name, s in self.splits.items()},
            "mean_hist_len": self.mean_hist_len,
            "truncated_frac": self.truncated_frac,
            "events": self.events,
            "seconds": self.seconds,
            "params": self.params,
        }


# ---------------------------------------------------------------------------------------------------
# The world: clusters, items, users (small, built once) and the per-block event streams.
# ---------------------------------------------------------------------------------------------------


@dataclass
class World:
    """Everything fixed before events are drawn; arrays are indexed [domain, item] or [user, ...].

    Args:
        centres: (C, r) unit cluster centres.
        item_cluster: (D, I) cluster of each item.
        item_vec: (D, I, r) item vectors.
        item_bias: (D, I) item biases (also log popularity).
        user_interest: (U, M) interest clusters (distinct per user).
        user_weight: (U, M) interest weights, rows sum to 1.
        user_domain: (U, M) domain index where each interest is expressed.
        user_bias: (U,) user biases.
        user_vec: (U, r) sum of the user's interest centres by weight.
        lengths: (U, D) events per user and domain.
        block_bounds: user ids where blocks start, plus ``users`` at the end.
        block_rows: rows drawn for each block.
    """

    centres: np.ndarray
    item_cluster: np.ndarray
    item_vec: np.ndarray
    item_bias: np.ndarray
    user_interest: np.ndarray
    user_weight: np.ndarray
    user_domain: np.ndarray
    user_bias: np.ndarray
    user_vec: np.ndarray
    lengths: np.ndarray
    block_bounds: np.ndarray
    block_rows: np.ndarray
    # Popularity sampling tables: items of all domains sorted by (domain, cluster) with the running
    # popularity, and per (domain, cluster) the segment of that order (cluster C = whole domain).
    _sorted_item: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    _cum_pop: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    _seg_lo: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    _seg_hi: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))

    def sample_items(self, rng: np.random.Generator, domain: np.ndarray, cluster: np.ndarray) -> np.ndarray:
        """Popularity-weighted item ids of ``domain`` in ``cluster`` (-1: any cluster of the domain).

        Args:
            rng: random generator.
            domain: (n,) domain indices.
            cluster: (n,) cluster ids, or -1 for the whole domain.
        """
        n_clusters = self.centres.shape[0]
        items = self.item_cluster.shape[1]
        seg = domain.astype(np.int64) * (n_clusters + 1) + np.where(cluster < 0, n_clusters, cluster)
        lo, hi = self._seg_lo[seg], self._seg_hi[seg]
        base = np.where(lo > 0, self._cum_pop[np.maximum(lo - 1, 0)], 0.0)
        target = base + rng.random(domain.size) * (self._cum_pop[hi - 1] - base)
        pos = np.clip(np.searchsorted(self._cum_pop, target, side="right"), lo, hi - 1)
        return self._sorted_item[pos] - domain.astype(np.int64) * items


def build_world(config: SyntheticConfig) -> World:
    """Draw clusters, items, users, stream lengths and the block layout for ``config``.

    Args:
        config: generator arguments.
    """
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    n_dom, n_items, n_users = len(config.domains), config.items_per_domain, config.users
    n_clusters, dim, n_int = config.n_clusters, config.latent_dim, config.interests_per_user

    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Balanced clusters, shuffled per domain: every cluster has items in every domain.
    item_cluster = np.stack([rng.permutation(np.arange(n_items) % n_clusters) for _ in range(n_dom)])
    noise = rng.standard_normal((n_dom, n_items, dim)) * (config.item_noise / np.sqrt(dim))
    item_vec = centres[item_cluster] + noise
    item_bias = rng.standard_normal((n_dom, n_items)) * config.item_bias_sd

    # Distinct interest clusters per user: the first M of a random permutation (argsort of noise).
    user_interest = np.argsort(rng.random((n_users, n_clusters)), axis=1)[:, :n_int].astype(np.int32)
    gammas = rng.standard_gamma(1.0, (n_users, n_int)) + 1e-12
    user_weight = gammas / gammas.sum(axis=1, keepdims=True)
    # Every domain expresses at least one interest: the first D interests get a permutation of
    # the domains, the rest a random domain (interest order is random anyway).
    user_domain = rng.integers(0, n_dom, (n_users, n_int)).astype(np.int8)
    user_domain[:, :n_dom] = np.argsort(rng.random((n_users, n_dom)), axis=1)
    user_bias = rng.standard_normal(n_users) * config.user_bias_sd
    user_vec = np.einsum("um,umr->ur", user_weight, centres[user_interest])

    raw = rng.lognormal(np.log(config.median_events), config.hist_sigma, (n_users, n_dom))
    lengths = np.clip(np.rint(raw), 1, config.events_cap).astype(np.int64)

    # Blocks of consecutive users with about `events_per_block` events (at least one user each).
    cum = np.cumsum(lengths.sum(axis=1))
    bounds = [0]
    while bounds[-1] < n_users:
        done = cum[bounds[-1] - 1] if bounds[-1] > 0 else 0
        nxt = int(np.searchsorted(cum, done + config.events_per_block, side="right"))
        bounds.append(min(max(nxt, bounds[-1] + 1), n_users))
    block_bounds = np.asarray(bounds, dtype=np.int64)
    # Rows are i.i.d. over users: a multinomial over blocks by size, then uniform users in a block.
    block_rows = rng.multinomial(config.rows, np.diff(block_bounds) / n_users)

    # Popularity sampling tables (see World).
    pop = np.exp(item_bias).ravel()
    key = (np.arange(n_dom)[:, None] * n_clusters + item_cluster).ravel()
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    cum_pop = np.cumsum(pop[order])
    seg_lo = np.empty((n_dom, n_clusters + 1), dtype=np.int64)
    seg_hi = np.empty_like(seg_lo)
    all_keys = np.arange(n_dom)[:, None] * n_clusters + np.arange(n_clusters)
    seg_lo[:, :n_clusters] = np.searchsorted(sorted_key, all_keys, side="left")
    seg_hi[:, :n_clusters] = np.searchsorted(sorted_key, all_keys, side="right")
    seg_lo[:, n_clusters] = np.arange(n_dom) * n_items
    seg_hi[:, n_clusters] = (np.arange(n_dom) + 1) * n_items
    return World(
        centres=centres,
        item_cluster=item_cluster,
        item_vec=item_vec,
        item_bias=item_bias,
        user_interest=user_interest,
        user_weight=user_weight,
        user_domain=user_domain,
        user_bias=user_bias,
        user_vec=user_vec,
        lengths=lengths,
        block_bounds=block_bounds,
        block_rows=block_rows,
        _sorted_item=order.astype(np.int64),
        _cum_pop=cum_pop,
        _seg_lo=seg_lo.ravel(),
        _seg_hi=seg_hi.ravel(),
    )


@dataclass
class Block:
    """The event streams of users ``[user_lo, user_hi)``, flattened stream by stream.

    Stream ``s = (user - user_lo) * D + domain`` holds events ``starts[s]:starts[s] + lengths[s]``,
    sorted by time.

    Args:
        index: block number.
        user_lo: first user.
        user_hi: one past the last user.
        starts: (S,) first event of each stream.
        key: (E,) ``stream << 30 | time``, sorted.
        time: (E,) event timestamps.
        item: (E,) item ids (of the stream's domain).
        interest: (E,) cluster of the interest the stream was in at the event.
    """

    index: int
    user_lo: int
    user_hi: int
    starts: np.ndarray
    key: np.ndarray
    time: np.ndarray
    item: np.ndarray
    interest: np.ndarray

    def stream(self, user: int, domain: int) -> slice:
        """The events of one user and domain, as a slice of the flat arrays."""
        s = (user - self.user_lo) * (self.starts.size // (self.user_hi - self.user_lo)) + domain
        end = self.starts[s + 1] if s + 1 < self.starts.size else self.key.size
        return slice(int(self.starts[s]), int(end))


def _block_rng(config: SyntheticConfig, block: int, purpose: int) -> np.random.Generator:
    """An independent generator per (block, purpose): a block's data does not depend on others."""
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(1, block, purpose)))


def _choose_interest(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """Index of one column per row, drawn by the row's (unnormalised, non-negative) weights."""
    cum = np.cumsum(weights, axis=1)
    target = rng.random(weights.shape[0]) * cum[:, -1]
    return np.minimum((cum <= target[:, None]).sum(axis=1), weights.shape[1] - 1)


def generate_block(config: SyntheticConfig, world: World, index: int) -> Block:
    """Draw the event streams of block ``index`` (deterministic for the config and block).

    Args:
        config: generator arguments.
        world: ``build_world(config)``.
        index: block number, ``0 <= index < len(world.block_bounds) - 1``.
    """
    rng = _block_rng(config, index, 0)
    lo, hi = int(world.block_bounds[index]), int(world.block_bounds[index + 1])
    n_dom = len(config.domains)
    lengths = world.lengths[lo:hi].ravel()
    n_events = int(lengths.sum())
    starts = np.zeros(lengths.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    stream = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)

    # Uniform times, sorted within each stream by sorting the packed (stream, time) key.
    key = (stream << _TIME_BITS) | rng.integers(0, TIME_SCALE, n_events, dtype=np.int64)
    key.sort()
    times = key & ((1 << _TIME_BITS) - 1)

    # Sticky interest chain: a switch starts a segment (every stream starts with one); each segment
    # draws an interest among those the user expresses in the stream's domain, by weight.
    switch = rng.random(n_events) < config.switch_prob
    switch[starts] = True
    seg_at = np.flatnonzero(switch)
    seg_user = lo + stream[seg_at] // n_dom
    seg_dom = stream[seg_at] % n_dom
    weights = world.user_weight[seg_user] * (world.user_domain[seg_user] == seg_dom[:, None])
    seg_interest = world.user_interest[seg_user, _choose_interest(rng, weights)]
    interest = seg_interest[np.cumsum(switch) - 1]
    del switch, seg_at, seg_user, seg_dom, weights

    # Events are items of the current interest's cluster, or now and then any popular item.
    domain = (stream % n_dom).astype(np.int64)
    cluster = np.where(rng.random(n_events) < config.random_event_prob, -1, interest)
    item = world.sample_items(rng, domain, cluster).astype(np.int32)
    return Block(
        index=index,
        user_lo=lo,
        user_hi=hi,
        starts=starts,
        key=key,
        time=times,
        item=item,
        interest=interest.astype(np.int16),
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
    """The Arrow schema of the split files (the project's data contract).

    Args:
        domains: domain names.
    """
    fields = [
        pa.field("row_id", pa.int64()),
        pa.field("user_id", pa.int64()),
        pa.field("item_id", pa.int64()),
        pa.field("domain", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("timestamp", pa.int64()),
    ]
    for name in domains:
        fields += [
            pa.field(f"hist_{name}", pa.list_(pa.int64())),
            pa.field(f"hist_count_{name}", pa.float32()),
        ]
    fields.append(pa.field("true_prob", pa.float32()))
    return pa.schema(fields)


class _SplitWriter:
    """Streams a split into parts; every row group is full but the split's last one.

    A part is closed (and moved into place) at the first row-group boundary after it holds
    ``values_per_part`` history values, so part sizes stay bounded for long histories.
    """

    def __init__(self, folder: Path, schema: pa.Schema, row_group_size: int, values_per_part: int) -> None:
        self.folder, self.schema = folder, schema
        self.row_group_size, self.values_per_part = row_group_size, values_per_part
        self.writer: AtomicParquetWriter | None = None
        self.part_rows = 0
        self.part_values = 0
        self.parts = 0

    def add(self, table: pa.Table, values: int) -> None:
        """Append rows holding ``values`` history values in all."""
        while table.num_rows:
            if self.writer is None:
                path = self.folder / f"part-{self.parts:05d}.parquet"
                self.writer = AtomicParquetWriter(path, self.schema, self.row_group_size).__enter__()
                self.part_rows = self.part_values = 0
            if self.part_values < self.values_per_part:
                self.writer.write(table)
                self.part_rows += table.num_rows
                self.part_values += values
                return
            # The part is full: complete its last row group, then continue in a new part.
            head = table.slice(0, -self.part_rows % self.row_group_size)
            table = table.slice(head.num_rows)
            if head.num_rows:
                self.writer.write(head)
                self.part_rows += head.num_rows
            if self.part_rows % self.row_group_size == 0:
                self._finish()
            values = 0  # the rest's share is unknown; it only delays the next part by a chunk

    def close(self) -> None:
        """Finish the last part; a split without rows gets one empty, typed part."""
        if self.writer is None and self.parts == 0:
            self.writer = AtomicParquetWriter(
                self.folder / "part-00000.parquet", self.schema, self.row_group_size
            ).__enter__()
        if self.writer is not None:
            self._finish()

    def abort(self, error: BaseException) -> None:
        """Drop the part in progress: its temporary file goes, nothing is moved into place."""
        if self.writer is not None:
            self.writer.__exit__(type(error), error, error.__traceback__)
            self.writer = None

    def _finish(self) -> None:
        assert self.writer is not None
        self.writer.__exit__(None, None, None)
        self.writer = None
        self.parts += 1


@dataclass
class _SplitStats:
    users: np.ndarray
    probs: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)


def _json_float(x: float) -> float | None:
    return None if x != x else float(x)  # NaN (one class missing) is not valid JSON


def _write_rows(
    config: SyntheticConfig,
    schema: pa.Schema,
    writers: dict[str, _SplitWriter],
    stats: dict[str, _SplitStats],
) -> tuple[int, np.ndarray, int]:
    """Generate all blocks and their rows into the split writers.

    Returns:
        (events generated, history values written per domain, truncated (row, domain) histories).
    """
    n_dom = len(config.domains)
    hist_values = np.zeros(n_dom, dtype=np.int64)
    truncated = 0
    world = build_world(config)
    domain_names = pa.array(list(config.domains), type=pa.string())
    chunk_rows = max(1024, config.chunk_values // (n_dom * config.max_len))
    next_row_id = 0
    events = 0
    for index in range(len(world.block_bounds) - 1):
        block = generate_block(config, world, index)
        events += block.key.size
        rng = _block_rng(config, index, 1)
        remaining = int(world.block_rows[index])
        while remaining > 0:
            n = min(chunk_rows, remaining)
            remaining -= n
            rows = _draw_rows(config, world, block, rng, n)
            row_id = np.arange(next_row_id, next_row_id + n, dtype=np.int64)
            next_row_id += n
            split_of = np.searchsorted(np.asarray(SPLIT_BOUNDS), rows.time, side="right")
            for k, split in enumerate(SPLITS):
                sel = np.flatnonzero(split_of == k)
                if sel.size == 0:
                    continue
                user, t = rows.user[sel], rows.time[sel]
                columns: dict[str, pa.Array] = {
                    "row_id": pa.array(row_id[sel]),
                    "user_id": pa.array(user),
                    "item_id": pa.array(rows.item[sel]),
                    "domain": pa.DictionaryArray.from_arrays(
                        pa.array(rows.domain[sel].astype(np.int32)), domain_names
                    ).dictionary_decode(),
                    "label": pa.array(rows.label[sel]),
                    "timestamp": pa.array(t),
                }
                values = 0
                for d, name in enumerate(config.domains):
                    lists, count = _histories(config, block, user, t, d)
                    columns[f"hist_{name}"] = lists
                    columns[f"hist_count_{name}"] = pa.array(count.astype(np.float32))
                    values += len(lists.values)
                    hist_values[d] += len(lists.values)
                    truncated += int((count > config.max_len).sum())
                columns["true_prob"] = pa.array(rows.prob[sel])
                writers[split].add(pa.Table.from_pydict(columns, schema=schema), values)
                stats[split].users[user] = True
                stats[split].probs.append(rows.prob[sel])
                stats[split].labels.append(rows.label[sel])
        del block
    return events, hist_values, truncated


def prepare_synthetic(out_dir: Path, config: SyntheticConfig) -> SyntheticSummary:
    """Generate the synthetic data set into ``out_dir``.

    Writes ``train/``, ``valid/``, ``test/`` (``part-NNNNN.parquet``), ``oracle.json`` and, last,
    ``summary.json``, the mark of a complete data set. Earlier ``part-*.parquet`` files in those
    folders and an earlier summary / oracle are removed first, so a smaller rerun leaves nothing stale.

    Args:
        out_dir: output folder (created if missing).
        config: generator arguments.

    Returns:
        The summary also written to ``summary.json``.
    """
    config.validate()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    schema = output_schema(config.domains)
    for name in ("summary.json", "oracle.json"):  # summary.json marks a complete data set: not any more
        (out_dir / name).unlink(missing_ok=True)
    writers: dict[str, _SplitWriter] = {}
    for split in SPLITS:
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("part-*.parquet"):  # a smaller rerun must not leave old parts behind
            stale.unlink()
        writers[split] = _SplitWriter(folder, schema, config.row_group_size, config.values_per_part)
    stats = {split: _SplitStats(users=np.zeros(config.users, dtype=bool)) for split in SPLITS}
    try:
        events, hist_values, truncated = _write_rows(config, schema, writers, stats)
        for writer in writers.values():
            writer.close()
    except BaseException as e:
        for writer in writers.values():
            writer.abort(e)
        raise

    splits: dict[str, SplitSummary] = {}
    for split in SPLITS:
        probs = np.concatenate(stats[split].probs) if stats[split].probs else np.empty(0, np.float32)
        labels = np.concatenate(stats[split].labels) if stats[split].labels else np.empty(0, np.int8)
        splits[split] = SplitSummary(
            rows=int(labels.size),
            users=int(stats[split].users.sum()),
            positive_rate=_json_float(float(labels.mean())) if labels.size else None,
            oracle_auc=_json_float(roc_auc(probs, labels)) if labels.size else None,
            parts=writers[split].parts,
        )
    params = asdict(config)
    params["domains"] = list(config.domains)
    params["hist_median"], params["hist_cap"] = config.median_events, config.events_cap
    oracle = {
        "oracle_auc": {s: splits[s].oracle_auc for s in SPLITS},
        "positive_rate": {s: splits[s].positive_rate for s in SPLITS},
        "params": params,
    }
    write_json_atomic(oracle, out_dir / "oracle.json")
    summary = SyntheticSummary(
        out_dir=str(out_dir),
        splits=splits,
        mean_hist_len={name: float(hist_values[d] / config.rows) for d, name in enumerate(config.domains)},
        truncated_frac=truncated / (config.rows * len(config.domains)),
        events=events,
        seconds=round(time.perf_counter() - started, 3),
        params=params,
    )
    write_json_atomic(summary.to_json(), out_dir / "summary.json")
    return summary


def iter_blocks(config: SyntheticConfig) -> Iterator[Block]:
    """Regenerate the event streams block by block (what the rows' histories were cut from).

    Args:
        config: generator arguments (the same as given to ``prepare_synthetic``).
    """
    world = build_world(config)
    for index in range(len(world.block_bounds) - 1):
        yield generate_block(config, world, index)
