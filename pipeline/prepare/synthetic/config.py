"""``SyntheticConfig``: the generator's arguments, and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from crossrank.features.errors import InputError

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
        domain_medians: per domain, its median events per user (overrides ``hist_median``), e.g. ``(4, 400)``
            for a sparse first domain: most users have a few events there and many in the other.
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
    domain_medians: tuple[float, ...] = ()
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
        self.domain_medians = tuple(self.domain_medians)
        self.validate()

    @property
    def median_events(self) -> float:
        """Median events per user and domain, ``hist_median`` resolved."""
        return float(self.hist_median) if self.hist_median is not None else self.max_len / 2

    @property
    def medians(self) -> np.ndarray:
        """Median events per user of each domain, ``domain_medians`` or ``median_events`` resolved."""
        return np.array(self.domain_medians or [self.median_events] * len(self.domains), np.float64)

    @property
    def events_cap(self) -> int:
        """Cap of events per user and domain, ``hist_cap`` resolved."""
        return int(self.hist_cap) if self.hist_cap is not None else 4 * self.max_len

    def validate(self) -> None:
        """Raise InputError naming the first bad argument."""
        # The order of the checks decides which argument is named when several are bad.
        _check_counts(self)
        _check_domains(self)
        _check_rates(self)
        _check_history(self)


def _bad(name: str, what: str, fix: str) -> InputError:
    """The InputError for argument ``name``."""
    return InputError(f"{name} {what}", where="synthetic config", fix=fix)


def _check_counts(config: SyntheticConfig) -> None:
    """The integer arguments and the seed."""
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
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _bad(name, f"must be an integer, got {value!r}", f"pass an integer >= {low}")
        if value < low:
            raise _bad(name, f"must be >= {low}, got {value}", f"pass an integer >= {low}")
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise _bad("seed", f"must be a non-negative integer, got {seed!r}", "pass e.g. 0")


def _check_domains(config: SyntheticConfig) -> None:
    """The domain names, and the clusters and interests they must hold."""
    domains = config.domains
    if len(domains) < 2:
        raise _bad("domains", f"needs at least 2 domains, got {list(domains)}", "pass e.g. A B")
    for name in domains:
        if not isinstance(name, str) or not _DOMAIN_NAME.match(name):
            raise _bad("domains", f"has a bad name {name!r}", "use letters, digits and _ only")
    if len(set(domains)) != len(domains):
        raise _bad("domains", f"has duplicate names: {list(domains)}", "give each domain its name")
    if config.items_per_domain < config.n_clusters:
        raise _bad(
            "items_per_domain",
            f"({config.items_per_domain}) must be >= n_clusters ({config.n_clusters})",
            "every cluster needs an item in every domain: raise items_per_domain or lower n_clusters",
        )
    if not len(domains) <= config.interests_per_user <= config.n_clusters:
        raise _bad(
            "interests_per_user",
            f"({config.interests_per_user}) must be between the number of domains "
            f"({len(domains)}) and n_clusters ({config.n_clusters})",
            "every domain expresses at least one interest, and interests are distinct clusters",
        )


def _check_rates(config: SyntheticConfig) -> None:
    """Probabilities, spreads and the click model's coefficients."""
    for name in ("switch_prob", "random_event_prob", "candidate_interest_frac"):
        value = getattr(config, name)
        if not 0.0 <= float(value) <= 1.0:
            raise _bad(name, f"must be in [0, 1], got {value}", "pass a probability")
    for name in ("item_noise", "item_bias_sd", "user_bias_sd", "hist_sigma", "current_weight"):
        value = getattr(config, name)
        if not float(value) >= 0.0:  # also rejects NaN
            raise _bad(name, f"must be >= 0, got {value}", "pass a non-negative number")
    for name in ("affinity_scale", "logit_offset"):
        if not np.isfinite(float(getattr(config, name))):
            raise _bad(name, f"must be finite, got {getattr(config, name)}", "pass a finite number")


def _check_history(config: SyntheticConfig) -> None:
    """The history length distribution."""
    if config.hist_median is not None and not float(config.hist_median) > 0.0:
        raise _bad("hist_median", f"must be > 0, got {config.hist_median}", "pass a positive number")
    medians = config.domain_medians
    if medians and (len(medians) != len(config.domains) or not all(float(m) > 0.0 for m in medians)):
        raise _bad(
            "domain_medians",
            f"must hold one positive number per domain ({len(config.domains)}), got {list(medians)}",
            "pass e.g. 4 400 for two domains, or leave it out for hist_median in every domain",
        )
    if config.hist_cap is not None and config.hist_cap < 2 * config.max_len:
        raise _bad(
            "hist_cap",
            f"({config.hist_cap}) must be >= 2 * max_len ({2 * config.max_len})",
            "histories must be able to exceed max_len so that truncation matters",
        )
