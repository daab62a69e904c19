"""The end-of-epoch OOV report: per ``oov: clip`` key, the ids sent to the OOV row over all processes, held to
``mapping.max_oov_fraction``.

Each process counts its own share while reading (:class:`~crossrank.pipeline.reading.reader.ReaderStats`) and
already stops once its own fraction is above the limit (after enough ids); at an epoch's end the counts of
every process are summed (one all-reduce), rank 0 prints them, and every process raises the same InputError
when a key is above its limit, so all ranks stop together.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from crossrank.features.idmap import check_oov_fraction
from crossrank.features.spec import FeatureSpec
from crossrank.pipeline.core.distributed import DistContext


def summed_counts(
    spec: FeatureSpec, oov: dict[str, int], ids: dict[str, int], ctx: DistContext
) -> tuple[dict[str, int], dict[str, int]]:
    """(oov, ids) per clipped key, summed over every process of the job (collective when world_size > 1)."""
    keys = spec.clipped_keys
    counts = [oov.get(k, 0) for k in keys] + [ids.get(k, 0) for k in keys]
    if ctx.world_size > 1 and keys:
        t = torch.tensor(counts, dtype=torch.int64, device=ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        counts = [int(x) for x in t.tolist()]
    n = len(keys)
    return dict(zip(keys, counts[:n], strict=True)), dict(zip(keys, counts[n:], strict=True))


def format_oov(spec: FeatureSpec, oov: dict[str, int], ids: dict[str, int], label: str) -> str:
    """One line: each clipped key's OOV ids, of all its ids, as a share, beside its limit."""
    parts = []
    for key in spec.clipped_keys:
        n, bad = ids.get(key, 0), oov.get(key, 0)
        share = f"{bad / n:.2%}" if n else "-"
        limit = spec.mapping_of_key(key).max_oov_fraction
        parts.append(f"{key} {bad:,}/{n:,} = {share} (max {limit:.2%})")
    return f"{label}: " + "; ".join(parts)


def epoch_oov_check(
    spec: FeatureSpec,
    oov: dict[str, int],
    ids: dict[str, int],
    ctx: DistContext,
    *,
    epoch: int,
    data: str,
    write: Callable[[str], object] = print,
) -> None:
    """At the end of ``epoch``: sum this process's counts (what it read so far) over the job, print them on
    rank 0 with ``write`` and raise the same InputError on every rank for a key above its limit.

    Args:
        oov / ids: this process's counts (``ReaderStats.oov`` / ``ReaderStats.ids``).
        data: what was read (e.g. ``data.train``), named in the error.
        write: how rank 0 prints the line (``tqdm.write`` beside a progress bar).
    """
    if not spec.clipped_keys:
        return
    total_oov, total_ids = summed_counts(spec, oov, ids, ctx)
    procs = f"all {ctx.world_size} processes" if ctx.world_size > 1 else "1 process"
    if ctx.is_main:
        label = f"epoch {epoch} OOV ids (oov: clip; {procs}, read so far)"
        write(format_oov(spec, total_oov, total_ids, label))
    where = f"{data} (read so far up to the end of epoch {epoch}, counted over {procs})"
    check_oov_fraction(spec, total_oov, total_ids, where=where, min_ids=0)
