"""What a trained model's ELASTIC parts do on real rows (``crossrank.models.diagnostics.ElasticProbe``): the
dispatcher's entropy over positions, its mass on the most recent events, how much its K slots differ, how
the readout uses the slots, and how much of the interest memory bank is read.

    python benchmarks/elastic_diagnostics.py --checkpoint RUN_DIR/best --data DATA/valid \
        [--batches 20] [--batch-size 512] [--recent 16]

Prints the table, then one JSON line ``{domain: {statistic: value}}``; ``benchmarks/quality.py`` stores
that line with each ELASTIC run of its long-history study.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def diagnose(checkpoint: str, data: str, batches: int, batch_size: int, recent: int) -> dict:
    """Run ``batches`` batches of ``data`` through the checkpoint's model with the probe's hooks on."""
    from crossrank.models.diagnostics import ElasticProbe
    from crossrank.pipeline.core.distributed import init_distributed
    from crossrank.pipeline.evaluation.predict import model_outputs
    from crossrank.pipeline.reading.history_groups import ranker_of
    from crossrank.pipeline.reading.reader import ParquetBatchReader
    from crossrank.pipeline.scoring.model import load_for_inference

    ctx = init_distributed()
    loaded = load_for_inference(checkpoint, ctx)
    reader = ParquetBatchReader(loaded.spec, data, batch_size, rank=ctx.rank, world_size=ctx.world_size)
    probe = ElasticProbe(ranker_of(loaded.sharded.model), recent)
    outputs = model_outputs(loaded.sharded.model, reader, ctx)
    for done, _ in enumerate(outputs, start=1):
        if done >= batches:
            outputs.close()
            break
    probe.close()
    return probe.summary()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder, or a run folder (its best)")
    parser.add_argument("--data", required=True, help="labeled Parquet rows (a validation split)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--recent", type=int, default=16, help="how many latest events count as recent")
    args = parser.parse_args()
    summary = diagnose(args.checkpoint, args.data, args.batches, args.batch_size, args.recent)
    names = sorted({n for stats in summary.values() for n in stats})
    print("| statistic | " + " | ".join(summary) + " |")
    print("| --- |" + " --- |" * len(summary))
    for name in names:
        print(
            f"| {name} | "
            + " | ".join(f"{s[name]:.4f}" if name in s else "-" for s in summary.values())
            + " |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
