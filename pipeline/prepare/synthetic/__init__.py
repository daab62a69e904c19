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
chunks (bounded by their history values), so memory does not grow with ``rows`` (the world's arrays
grow with ``users``; the oracle AUC is exact up to 2**20 rows per split, then counted in a fixed
histogram: ``crossrank.pipeline.core.auc.StreamingAuc``). Users
are i.i.d., so a part file drawn from one block is a representative sample of the whole set.

Modules: ``config`` (``SyntheticConfig`` and its validation), ``world`` (clusters, items, users and the
per-block event streams), ``rows`` (impressions, their histories and Arrow table), ``writer`` (part files of
one split), ``summary`` (``summary.json``) and ``job`` (``prepare_synthetic``, tying them together).
"""

from crossrank.pipeline.prepare.synthetic.config import SyntheticConfig
from crossrank.pipeline.prepare.synthetic.job import SPLIT_BOUNDS, SPLITS, prepare_synthetic
from crossrank.pipeline.prepare.synthetic.rows import _histories as _histories  # private; the tests use it
from crossrank.pipeline.prepare.synthetic.rows import output_schema
from crossrank.pipeline.prepare.synthetic.summary import SplitSummary, SyntheticSummary
from crossrank.pipeline.prepare.synthetic.world import (
    TIME_SCALE,
    Block,
    World,
    build_world,
    generate_block,
    iter_blocks,
)

__all__ = [
    "SPLITS",
    "SPLIT_BOUNDS",
    "TIME_SCALE",
    "Block",
    "SplitSummary",
    "SyntheticConfig",
    "SyntheticSummary",
    "World",
    "build_world",
    "generate_block",
    "iter_blocks",
    "output_schema",
    "prepare_synthetic",
]
