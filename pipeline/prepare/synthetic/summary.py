"""What a synthetic generation wrote: per-split statistics, saved as ``summary.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
