"""The latent world: clusters, items, users (small, built once) and the per-block event streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from crossrank.pipeline.prepare.synthetic.config import SyntheticConfig

#: Timestamps are integers: ``t`` in [0, 1) scaled by this (< 2**30, see ``_TIME_BITS``).
TIME_SCALE = 1_000_000_000
# Event keys pack (stream, time) into one int64 so one sort / searchsorted serves all streams.
_TIME_BITS = 30


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
    # One generator, drawn from in a fixed order: the order is part of what a seed means.
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(0,)))
    centres, item_cluster, item_vec, item_bias = _draw_items(rng, config)
    user_interest, user_weight, user_domain, user_bias = _draw_users(rng, config)
    user_vec = np.einsum("um,umr->ur", user_weight, centres[user_interest])

    raw = rng.lognormal(np.log(config.medians), config.hist_sigma, (config.users, len(config.domains)))
    lengths = np.clip(np.rint(raw), 1, config.events_cap).astype(np.int64)
    block_bounds = _block_bounds(lengths, config.events_per_block)
    # Rows are i.i.d. over users: a multinomial over blocks by size, then uniform users in a block.
    block_rows = rng.multinomial(config.rows, np.diff(block_bounds) / config.users)

    sorted_item, cum_pop, seg_lo, seg_hi = _popularity_tables(item_cluster, item_bias, config.n_clusters)
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
        _sorted_item=sorted_item,
        _cum_pop=cum_pop,
        _seg_lo=seg_lo,
        _seg_hi=seg_hi,
    )


def _draw_items(
    rng: np.random.Generator, config: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cluster centres, then every item's cluster, vector and bias (see ``World``)."""
    n_dom, n_items = len(config.domains), config.items_per_domain
    n_clusters, dim = config.n_clusters, config.latent_dim
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Balanced clusters, shuffled per domain: every cluster has items in every domain.
    item_cluster = np.stack([rng.permutation(np.arange(n_items) % n_clusters) for _ in range(n_dom)])
    noise = rng.standard_normal((n_dom, n_items, dim)) * (config.item_noise / np.sqrt(dim))
    item_vec = centres[item_cluster] + noise
    item_bias = rng.standard_normal((n_dom, n_items)) * config.item_bias_sd
    return centres, item_cluster, item_vec, item_bias


def _draw_users(
    rng: np.random.Generator, config: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every user's interest clusters, their weights, their domains, and the user's bias (see ``World``)."""
    n_dom, n_users = len(config.domains), config.users
    n_clusters, n_int = config.n_clusters, config.interests_per_user
    # Distinct interest clusters per user: the first M of a random permutation (argsort of noise).
    user_interest = np.argsort(rng.random((n_users, n_clusters)), axis=1)[:, :n_int].astype(np.int32)
    gammas = rng.standard_gamma(1.0, (n_users, n_int)) + 1e-12
    user_weight = gammas / gammas.sum(axis=1, keepdims=True)
    # Every domain expresses at least one interest: the first D interests get a permutation of
    # the domains, the rest a random domain (interest order is random anyway).
    user_domain = rng.integers(0, n_dom, (n_users, n_int)).astype(np.int8)
    user_domain[:, :n_dom] = np.argsort(rng.random((n_users, n_dom)), axis=1)
    user_bias = rng.standard_normal(n_users) * config.user_bias_sd
    return user_interest, user_weight, user_domain, user_bias


def _block_bounds(lengths: np.ndarray, events_per_block: int) -> np.ndarray:
    """Blocks of consecutive users with about ``events_per_block`` events (at least one user each).

    Args:
        lengths: (U, D) events per user and domain.
        events_per_block: the target events per block.

    Returns:
        User ids where blocks start, plus the number of users at the end.
    """
    n_users = lengths.shape[0]
    cum = np.cumsum(lengths.sum(axis=1))
    bounds = [0]
    while bounds[-1] < n_users:
        done = cum[bounds[-1] - 1] if bounds[-1] > 0 else 0
        nxt = int(np.searchsorted(cum, done + events_per_block, side="right"))
        bounds.append(min(max(nxt, bounds[-1] + 1), n_users))
    return np.asarray(bounds, dtype=np.int64)


def _popularity_tables(
    item_cluster: np.ndarray, item_bias: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The popularity sampling tables of ``World``: (sorted items, running popularity, segment lo, hi)."""
    n_dom, n_items = item_cluster.shape
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
    return order.astype(np.int64), cum_pop, seg_lo.ravel(), seg_hi.ravel()


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


def iter_blocks(config: SyntheticConfig) -> Iterator[Block]:
    """Regenerate the event streams block by block (what the rows' histories were cut from).

    Args:
        config: generator arguments (the same as given to ``prepare_synthetic``).
    """
    world = build_world(config)
    for index in range(len(world.block_bounds) - 1):
        yield generate_block(config, world, index)
