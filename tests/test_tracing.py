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
# for ELASTIC and self-attention (whose readout is ELASTIC's dispatcher): ``recency_prior`` 2.0 became the
# default (before it, ``event_residual`` and ``query_init_std`` 1.0).
GOLDEN: dict[Combo, list[float]] = {
    ("elastic", "gca", "early", 16): [-0.2943, -0.2301, -0.2397, -0.2642],
    ("elastic", "cross_attention", "early", 16): [-0.0334, -0.103, -0.034, -0.0238],
    ("elastic", "concat", "early", 16): [0.0283, 0.0155, 0.0371, 0.009],
    ("elastic", "none", "early", 16): [0.051, 0.0186, 0.06, 0.0637],
    ("self_attention", "gca", "early", 16): [-0.4897, -0.404, -0.3971, -0.4913],
    ("self_attention", "cross_attention", "early", 16): [-0.2385, -0.2435, -0.2151, -0.3192],
    ("self_attention", "concat", "early", 16): [0.4417, 0.4224, 0.4162, 0.5934],
    ("self_attention", "none", "early", 16): [0.3436, 0.3391, 0.3039, 0.4707],
    ("din", "gca", "early", 16): [0.2386, 0.2513, 0.2297, 0.2153],
    ("din", "cross_attention", "early", 16): [0.1348, 0.1641, 0.1509, 0.137],
    ("din", "concat", "early", 16): [0.2001, 0.1788, 0.1862, 0.1811],
    ("din", "none", "early", 16): [0.2039, 0.1796, 0.1896, 0.1841],
    ("mean", "gca", "early", 16): [-0.2545, -0.2497, -0.2474, -0.2921],
    ("mean", "cross_attention", "early", 16): [-0.2228, -0.2286, -0.2277, -0.2175],
    ("mean", "concat", "early", 16): [0.1426, 0.1295, 0.1383, 0.1466],
    ("mean", "none", "early", 16): [0.1446, 0.1297, 0.1391, 0.1457],
    ("elastic", "gca", "stack", 16): [0.1002, 0.1479, 0.1296, 0.2732],
    ("elastic", "cross_attention", "stack", 16): [0.0381, -0.1012, -0.0157, -0.0568],
    ("elastic", "gca", "early", 0): [0.1299, 0.0786, 0.0291, 0.2017],
    ("elastic", "gca", "stack", 0): [0.2119, 0.1864, 0.1365, 0.1679],
}


def tiny_spec() -> FeatureSpec:
    spec, problems = parse_spec(TINY_SPEC, "<tiny>")
    assert spec is not None, problems
    return spec


def tiny_model(
    combo: Combo, spec: FeatureSpec | None = None, mean_windows: tuple[int, ...] = ()
) -> RankerTrain:
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
        mean_windows=list(mean_windows),
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


@pytest.mark.parametrize("kind", ["gca", "none"])
def test_mean_windows_trace_like_eager_and_give_k_interests(kind: str) -> None:
    """``mean_windows`` keeps the encoders a leaf (no table) and the feature tables pipelined; the traced
    model equals the eager one, and a window changes the logits (the readout sees K = 3 interests)."""
    model = tiny_model(("mean", kind, "early", 16))
    windows = tiny_model(("mean", kind, "early", 16), mean_windows=(1, 3))
    assert [enc.num_slots for enc in windows.model.sequence_encoders.values()] == [3, 3]
    traced = pipeline_trace(windows)
    with torch.no_grad():
        _, (_, logits, *_) = windows(tiny_batch())
        _, (_, t_logits, *_) = traced(tiny_batch())
        _, (_, plain, *_) = model(tiny_batch())
    torch.testing.assert_close(t_logits, logits, rtol=0, atol=0)
    assert pipelined_tables(traced) == (FEATURE_TABLES, set())
    assert not torch.allclose(logits, plain)
