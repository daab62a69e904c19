"""What a MovieLens preparation wrote: per-split counts, saved as ``summary.json`` and shown as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from crossrank.pipeline.prepare.movielens.domains import STAR

SUMMARY_NAME = "summary.json"


@dataclass
class SplitStats:
    """Counts for one split (or ``all``).

    Args:
        rows: number of rows.
        users: distinct users.
        positive_rate: mean label, None for an empty split.
        rows_per_domain: rows per candidate domain, in domain order.
        items_per_domain: distinct candidate movies per domain, in domain order.
    """

    rows: int
    users: int
    positive_rate: float | None
    rows_per_domain: dict[str, int]
    items_per_domain: dict[str, int]


@dataclass
class PrepareSummary:
    """What ``prepare_movielens`` wrote; also saved as ``OUT_DIR/summary.json``.

    Args:
        source_format: ``ml-100k``, ``ml-1m`` or ``ml-latest``.
        src_dir: the input folder.
        out_dir: the output folder.
        domains: domain names in column order.
        domain_map: domain -> genres or ``"*"``.
        max_len: history truncation length.
        n_test: test rows per user.
        n_valid: valid rows per user.
        splits: ``train``, ``valid``, ``test`` and ``all`` -> counts.
        dropped_ratings: ratings dropped because their movie fell in no domain (no ``"*"`` domain).
        dropped_items: distinct movies of those ratings.
        catalog_items_per_domain: movies of the movies file per domain (rated or not; movies in no domain
            are left out), in domain order.
        unused_genres: genres the domain map names that no movie has as first genre (likely a typo or a
            genre spelt differently in this release, e.g. "Children's" vs "Children").
        item_columns: the columns that describe the candidate movie (its genres and year).
    """

    source_format: str
    src_dir: str
    out_dir: str
    domains: list[str]
    domain_map: dict[str, list[str] | str]
    max_len: int
    n_test: int
    n_valid: int
    splits: dict[str, SplitStats] = field(default_factory=dict)
    dropped_ratings: int = 0
    dropped_items: int = 0
    catalog_items_per_domain: dict[str, int] = field(default_factory=dict)
    unused_genres: list[str] = field(default_factory=list)
    # Columns that describe the candidate movie (not the user): ``prepare ranking`` gives each sampled
    # negative its own movie's values there.
    item_columns: list[str] = field(default_factory=lambda: ["genres", "year"])

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the content of ``summary.json``)."""
        return asdict(self)

    def format(self) -> str:
        """A readable multi-line table for the terminal."""
        head = ["split", "rows", "users", "pos rate"]
        head += [f"rows {d}" for d in self.domains] + [f"items {d}" for d in self.domains]
        table = [head]
        for name, s in self.splits.items():
            rate = "-" if s.positive_rate is None else f"{s.positive_rate:.3f}"
            row = [name, f"{s.rows:,}", f"{s.users:,}", rate]
            row += [f"{s.rows_per_domain[d]:,}" for d in self.domains]
            row += [f"{s.items_per_domain[d]:,}" for d in self.domains]
            table.append(row)
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        lines = [
            f"MovieLens {self.source_format}: {self.src_dir} -> {self.out_dir}",
            f"domains {', '.join(f'{d}={_describe(g)}' for d, g in self.domain_map.items())}",
            f"per user: last {self.n_test} rows test, {self.n_valid} before valid; histories max_len "
            f"{self.max_len}",
            "",
        ]
        for r in table:
            lines.append(
                "  ".join(
                    [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
                )
            )
        catalog = ", ".join(f"{d} {c:,}" for d, c in self.catalog_items_per_domain.items())
        lines.append(f"movies in the catalog per domain (rated or not): {catalog}")
        if self.dropped_ratings:
            lines.append(
                f"dropped {self.dropped_ratings:,} ratings of {self.dropped_items:,} movies in no domain "
                '(add a "*" domain to keep them)'
            )
        if self.unused_genres:
            lines.append(f"warning: no movie has first genre {', '.join(map(repr, self.unused_genres))}")
        return "\n".join(lines)


def _describe(genres: list[str] | str) -> str:
    """Short text for one domain's genres."""
    return "every other genre" if genres == STAR else "|".join(genres)


def _split_stats(
    users: np.ndarray, items: np.ndarray, dom: np.ndarray, labels: np.ndarray, domains: list[str]
) -> SplitStats:
    """Counts of one split's rows (arrays in (user, ts, item) order)."""
    rows = int(users.size)
    return SplitStats(
        rows=rows,
        users=int(np.count_nonzero(np.diff(users)) + 1) if rows else 0,
        positive_rate=round(float(labels.mean()), 6) if rows else None,
        rows_per_domain={d: int(np.count_nonzero(dom == i)) for i, d in enumerate(domains)},
        items_per_domain={d: int(np.unique(items[dom == i]).size) for i, d in enumerate(domains)},
    )
