"""The ranker under TorchRec's pipeline tracer, in one process: every sequence encoder x every fusion.

``TrainPipelineSparseDist`` (``_rewrite_model`` in ``torchrec/distributed/train_pipeline/utils.py``) fx-traces
the model with ``torchrec.distributed.train_pipeline.tracing.Tracer(leaf_modules=_get_leaf_module_names(
model))``: sharded modules and every table-free sibling of a module holding one are leaves, the rest is
traced. Here the same ``Tracer`` and ``_get_leaf_module_names`` run on the unsharded model with TorchRec's
embedding modules standing in for the sharded ones, so a data-dependent encoder that is not a leaf fails
here (``TraceError``) instead of at the first step of a distributed job.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torchrec.distributed.train_pipeline import tracing
from torchrec.distributed.train_pipeline.pipeline_context import TrainPipelineContext
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from crossrank.features.spec import FeatureSpec, parse_spec
from crossrank.models.elastic import ElasticConfig
from crossrank.models.fusion import FUSIONS, FusionConfig
from crossrank.models.ranker import CrossDomainRanker, RankerConfig, RankerTrain
from crossrank.models.sequence import SEQUENCE_ENCODERS
from crossrank.pipeline.reading.batch import Batch

TINY_SPEC = {
    "name": "tiny",
    "label": "label",
    "row_id": "row_id",
    "domains": [{"name": "A", "table": "item_A"}, {"name": "B", "table": "item_B"}],
    "tables": [
        {"name": "user", "num_embeddings": 50, "embedding_dim": 8},
        {"name": "item_A", "num_embeddings": 30, "embedding_dim": 8},
        {"name": "item_B", "num_embeddings": 30, "embedding_dim": 8},
    ],
    "features": [
        {"name": "user_id", "kind": "id", "column": "user_id", "table": "user"},
        {"name": "item", "kind": "candidate", "column": "item_id", "domain_column": "domain"},
        {"name": "hist_A", "kind": "sequence", "column": "hist_A", "domain": "A", "max_len": 20},
        {"name": "hist_B", "kind": "sequence", "column": "hist_B", "domain": "B", "max_len": 20},
        {"name": "n_A", "kind": "dense", "column": "n_A"},
    ],
}
FEATURE_TABLES = {"model.sparse_arch.embedding_bag_collection", "model.embedding_collection"}

# (sequence_encoder, fusion.kind, fusion.placement, encoder.memory_size)
Combo = tuple[str, str, str, int]
COMBOS: list[Combo] = [
    *[(enc, kind, "early", 16) for enc in SEQUENCE_ENCODERS for kind in FUSIONS],
    *[("elastic", kind, "stack", 16) for kind in ("gca", "cross_attention")],
    ("elastic", "gca", "early", 0),  # no memory table: the whole encoder dict is one leaf
    ("elastic", "gca", "stack", 0),
]

# logits[:4] of the seeded tiny model on the tiny batch, rounded to 1e-4 (printed by the test under
# ``pytest -s``). Recompute, and say why they moved, only when the model's math is meant to change. Last moved
# for ELASTIC and self-attention (whose readout is ELASTIC's dispatcher): ``event_residual`` and
# ``query_init_std`` 1.0 became the defaults.
GOLDEN: dict[Combo, list[float]] = {
    ("elastic", "gca", "early", 16): [-0.2558, -0.2271, -0.2463, -0.2663],
    ("elastic", "cross_attention", "early", 16): [-0.0313, -0.1017, -0.0338, -0.0019],
    ("elastic", "concat", "early", 16): [0.0248, 0.0177, 0.033, 0.0103],
    ("elastic", "none", "early", 16): [0.0221, 0.0178, 0.0644, 0.0592],
    ("self_attention", "gca", "early", 16): [-0.473, -0.4006, -0.3928, -0.4876],
    ("self_attention", "cross_attention", "early", 16): [-0.2359, -0.2411, -0.2194, -0.3114],
    ("self_attention", "concat", "early", 16): [0.4295, 0.4211, 0.41, 0.5867],
    ("self_attention", "none", "early", 16): [0.3252, 0.3394, 0.2985, 0.458],
    ("din", "gca", "early", 16): [0.2386, 0.2513, 0.2297, 0.2153],
    ("din", "cross_attention", "early", 16): [0.1348, 0.1641, 0.1509, 0.137],
    ("din", "concat", "early", 16): [0.2001, 0.1788, 0.1862, 0.1811],
    ("din", "none", "early", 16): [0.2039, 0.1796, 0.1896, 0.1841],
    ("mean", "gca", "early", 16): [-0.2545, -0.2497, -0.2474, -0.2921],
    ("mean", "cross_attention", "early", 16): [-0.2228, -0.2286, -0.2277, -0.2175],
    ("mean", "concat", "early", 16): [0.1426, 0.1295, 0.1383, 0.1466],
    ("mean", "none", "early", 16): [0.1446, 0.1297, 0.1391, 0.1457],
    ("elastic", "gca", "stack", 16): [0.1042, 0.1457, 0.1304, 0.2446],
    ("elastic", "cross_attention", "stack", 16): [0.015, -0.0972, -0.0046, -0.0726],
    ("elastic", "gca", "early", 0): [0.1256, 0.0873, 0.0263, 0.1946],
    ("elastic", "gca", "stack", 0): [0.1965, 0.1856, 0.1371, 0.167],
}


def tiny_spec() -> FeatureSpec:
    spec, problems = parse_spec(TINY_SPEC, "<tiny>")
    assert spec is not None, problems
    return spec


def tiny_model(combo: Combo, spec: FeatureSpec | None = None) -> RankerTrain:
    """The seeded tiny model of ``combo`` on ``spec`` (default: :func:`tiny_spec`)."""
    encoder, kind, placement, memory_size = combo
    enc = ElasticConfig(
        num_slots=4,
        num_heads=2,
        num_layers=2 if placement == "stack" else 1,
        recency_buckets=4,
        memory_size=memory_size,
        memory_topk=2,
        memory_key_dim=4,
    )
    config = RankerConfig(
        dense_arch_layer_sizes=[8],
        over_arch_layer_sizes=[16, 1],
        sequence_encoder=encoder,
        encoder=enc,
        fusion=FusionConfig(kind=kind, placement=placement),
    )
    torch.manual_seed(0)
    return RankerTrain(CrossDomainRanker(spec or tiny_spec(), config))


def tiny_batch() -> Batch:
    """6 rows (3 per candidate domain), an empty history in each domain, key-major sequence lengths."""
    g = torch.Generator().manual_seed(1)
    hist_a, hist_b = torch.tensor([5, 0, 3, 7, 1, 2]), torch.tensor([2, 4, 0, 1, 6, 3])
    domains = torch.tensor([0, 0, 0, 1, 1, 1])
    lengths = torch.cat([hist_a, (domains == 0).long(), hist_b, (domains == 1).long()]).int()
    sequences = KeyedJaggedTensor(
        keys=["hist_A", "item@A", "hist_B", "item@B"],
        values=torch.randint(0, 30, (int(lengths.sum()),), generator=g),
        lengths=lengths,
    )
    pooled = KeyedJaggedTensor(
        keys=["user_id"],
        values=torch.randint(0, 50, (6,), generator=g),
        lengths=torch.ones(6, dtype=torch.int32),
    )
    return Batch(
        dense=torch.rand(6, 1, generator=g),
        pooled=pooled,
        sequences=sequences,
        labels=torch.tensor([1.0, 0, 1, 0, 0, 1]),
        weights=torch.ones(6),
        domains=domains,
        row_ids=torch.arange(6),
        loss_scale=torch.tensor([1 / 6]),
    )


def pipeline_trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    """Trace as ``_rewrite_model`` does, TorchRec's embedding modules playing the sharded modules."""
    as_sharded = (tracing.ShardedModule, EmbeddingBagCollection, EmbeddingCollection)
    with mock.patch.object(tracing, "ShardedModule", as_sharded):  # the global both helpers test against
        graph = tracing.Tracer(leaf_modules=tracing._get_leaf_module_names(model)).trace(model)
    return torch.fx.GraphModule(model, graph)


def pipelined_tables(traced: torch.fx.GraphModule) -> tuple[set[str], set[str]]:
    """(embedding modules whose inputs come straight from the batch, the others), by the pipeline's own
    ``NodeArgsHelper`` test: what ``_rewrite_model`` would pipeline and what it would leave."""
    tables = {
        n for n, m in traced.named_modules() if isinstance(m, EmbeddingBagCollection | EmbeddingCollection)
    }
    helper = tracing.NodeArgsHelper(traced, TrainPipelineContext(), pipeline_postproc=False)
    found, left = set(), set()
    for node in traced.graph.nodes:
        if node.op == "call_module" and node.target in tables:
            _, num_found = helper.get_node_args(node)
            (found if num_found == len(node.args) + len(node.kwargs) else left).add(node.target)
    return found, left


def test_golden_table_covers_every_encoder_and_fusion() -> None:
    assert set(GOLDEN) == set(COMBOS), "add goldens for new encoders / fusions (see GOLDEN)"


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(map(str, c)) for c in COMBOS])
def test_pipeline_trace_matches_eager_and_golden(combo: Combo) -> None:
    model = tiny_model(combo)
    traced = pipeline_trace(model)
    batch = tiny_batch()
    with torch.no_grad():
        loss, (_, logits, *_, ortho) = model(batch)
        t_loss, (_, t_logits, *_, t_ortho) = traced(batch)
    torch.testing.assert_close(t_logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(t_ortho, ortho, rtol=0, atol=0)
    torch.testing.assert_close(t_loss, loss, rtol=0, atol=0)
    assert torch.isfinite(logits).all() and torch.isfinite(ortho).all()
    # The feature tables read the batch's KJTs unmodified (pipelined); memory tables read computed ids.
    found, left = pipelined_tables(traced)
    assert found == FEATURE_TABLES
    memories = {f"model.sequence_encoders.{d}.memory.values" for d in "AB"}
    assert left == (memories if combo[0] == "elastic" and combo[3] else set())
    print(f"    {combo!r}: {[round(v, 4) for v in logits[:4].tolist()]},")  # a GOLDEN line, with -s
    torch.testing.assert_close(logits[:4], torch.tensor(GOLDEN[combo]), rtol=0, atol=1e-4)
