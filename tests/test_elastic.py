"""ELASTIC and the baselines against straightforward padded references (same weights)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crossrank.models import attention
from crossrank.models.attention import TargetAttention, recency_buckets
from crossrank.models.baselines import DinEncoder, MeanSequenceEncoder, SelfAttentionEncoder
from crossrank.models.elastic import ElasticConfig, ElasticEncoder, LinearDispatcher, ProductKeyMemory

D = 16


def jagged_input(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    return torch.randn(int(lens.sum()), D, generator=g), lens


def padded(values: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L_max, D] zero-padded copy and [B, L_max] validity mask, by a per-user loop (the reference)."""
    b, lmax = lengths.numel(), max(int(lengths.max()), 1)
    out = values.new_zeros(b, lmax, values.shape[1])
    mask = torch.zeros(b, lmax, dtype=torch.bool)
    start = 0
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = values[start : start + n]
        mask[i, :n] = True
        start += n
    return out, mask


def reference_dispatcher(disp: LinearDispatcher, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """LinearDispatcher written the obvious way: padded events, masked softmax over positions."""
    h, dh, k = disp.heads, disp.head_dim, disp.slots
    x, mask = padded(values, lengths)
    ids = recency_buckets(lengths, disp.num_buckets)
    rec, _ = padded(disp.recency(ids), lengths)
    x = x + rec
    b, lmax, _ = x.shape
    slots = None
    for layer in range(disp.num_layers):
        kv = disp.kv[layer](disp.norms[layer](x))
        keys, vals = kv.chunk(2, dim=-1)
        keys = keys.reshape(b, lmax, h, dh)
        vals = vals.reshape(b, lmax, h, dh)
        q = disp.queries[layer].reshape(k, h, dh)
        logits = torch.einsum("blhd,khd->bklh", keys, q) / math.sqrt(dh)
        if disp.recency_bias is not None:  # each event's bucket row, [B, L, K * H] -> [B, K, L, H]
            bias, _ = padded(disp.recency_bias[layer][ids], lengths)
            logits = logits + bias.reshape(b, lmax, k, h).transpose(1, 2)
        logits = logits.masked_fill(~mask[:, None, :, None], float("-inf"))
        att = torch.nan_to_num(torch.softmax(logits, dim=2))  # empty users: all -inf -> 0
        pooled = torch.einsum("bklh,blhd->bkhd", att, vals).reshape(b, k, h * dh)
        slots = disp.out[layer](pooled)
        if disp.event_residual:  # plus the raw events pooled by each head, averaged over the heads
            slots = slots + torch.einsum("bklh,bld->bkd", att, x) / h
        slots = torch.where((lengths == 0).reshape(-1, 1, 1), disp.empty.unsqueeze(0), slots)
        slots = disp.mixers[layer](slots)
        if layer + 1 < disp.num_layers:
            q2 = disp.back_q[layer](x).reshape(b, lmax, h, dh)
            k2, v2 = disp.back_kv[layer](slots).chunk(2, dim=-1)
            a2 = torch.einsum("blhd,bkhd->blkh", q2, k2.reshape(b, k, h, dh)) / math.sqrt(dh)
            upd = torch.einsum("blkh,bkhd->blhd", torch.softmax(a2, dim=2), v2.reshape(b, k, h, dh))
            x = x + upd.reshape(b, lmax, h * dh) * mask.unsqueeze(-1)
    return slots


@pytest.mark.parametrize("prior", [0.0, 2.0])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_jagged_dispatcher_equals_padded_reference(num_layers: int, residual: bool, prior: float) -> None:
    torch.manual_seed(0)
    config = ElasticConfig(
        num_slots=4, num_heads=2, num_layers=num_layers, event_residual=residual, recency_prior=prior
    )
    disp = LinearDispatcher(D, config)
    if disp.recency_bias is not None:  # trained biases, not the initial ramp: the layout must match too
        for table in disp.recency_bias:
            nn.init.normal_(table)
    values, lengths = jagged_input([5, 0, 1, 17, 3, 0, 1])
    out = disp(values, lengths)
    assert out.shape == (7, 4, D)
    torch.testing.assert_close(out, reference_dispatcher(disp, values, lengths), atol=1e-5, rtol=1e-5)


def test_empty_users_get_the_learned_interests_and_no_nan() -> None:
    disp = LinearDispatcher(D, ElasticConfig(num_slots=4, num_heads=2))
    values, lengths = jagged_input([0, 0, 2])
    out = disp(values, lengths)
    assert torch.isfinite(out).all()
    expected = disp.mixers[0](disp.empty.unsqueeze(0))[0]
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], expected)


def test_users_do_not_see_each_others_events() -> None:
    """The jagged analogue of masking: changing one user's events changes only that user's interests."""
    disp = LinearDispatcher(D, ElasticConfig(num_slots=4, num_heads=2, num_layers=2))
    values, lengths = jagged_input([4, 6, 3])
    out = disp(values, lengths)
    changed = values.clone()
    changed[4:10] = torch.randn(6, D) * 5
    out2 = disp(changed, lengths)
    torch.testing.assert_close(out[[0, 2]], out2[[0, 2]])
    assert not torch.allclose(out[1], out2[1])


def test_self_attention_ignores_padded_positions() -> None:
    torch.manual_seed(0)
    enc = SelfAttentionEncoder(D, ElasticConfig(num_slots=4, num_heads=2, num_layers=2))
    values, lengths = jagged_input([5, 1, 9])
    x, mask = padded(values, lengths)
    pad = ~mask
    pad[:, 0] = False
    clean = enc.attend(0, x, pad)
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D) * 100
    dirty = enc.attend(0, garbage, pad)
    torch.testing.assert_close(clean[mask], dirty[mask])
    # and the whole encoder is finite with an empty user in the batch
    values, lengths = jagged_input([5, 0, 9])
    assert torch.isfinite(enc(values, lengths, torch.zeros(3, D))).all()


def test_self_attention_matches_torch_multihead_attention() -> None:
    """The SDPA self-attention block is standard MHA (same weights, key padding mask)."""
    torch.manual_seed(0)
    enc = SelfAttentionEncoder(D, ElasticConfig(num_slots=4, num_heads=2))
    values, lengths = jagged_input([5, 2, 7])
    x, mask = padded(values, lengths)
    mha = nn.MultiheadAttention(D, 2, batch_first=True)
    mha.in_proj_weight.data.copy_(enc.qkv[0].weight)
    mha.in_proj_bias.data.copy_(enc.qkv[0].bias)
    mha.out_proj.weight.data.copy_(enc.proj[0].weight)
    mha.out_proj.bias.data.copy_(enc.proj[0].bias)
    h = enc.norm1[0](x)
    attn = mha(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
    after = x + attn
    expected = after + enc.ffn[0](enc.norm2[0](after))
    torch.testing.assert_close(enc.attend(0, x, ~mask)[mask], expected[mask])


def test_din_jagged_equals_padded_reference() -> None:
    torch.manual_seed(0)
    enc = DinEncoder(D, ElasticConfig())
    values, lengths = jagged_input([3, 0, 1, 6])
    cand = torch.randn(4, D)
    out = enc(values, lengths, cand)
    events = values + enc.recency(recency_buckets(lengths, enc.num_buckets))
    x, mask = padded(events, lengths)
    scores = enc.attention.score(cand.unsqueeze(1).expand_as(x), x).masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(torch.softmax(scores, dim=1))
    ref = (w.unsqueeze(-1) * x).sum(1)
    ref[1] = enc.empty
    torch.testing.assert_close(out[:, 0], ref)


def test_target_attention_dense_and_jagged_agree() -> None:
    ta = TargetAttention(D)
    keys = torch.randn(3, 5, D)
    cand = torch.randn(3, D)
    jagged = ta.jagged(cand, keys.reshape(15, D), torch.tensor([5, 5, 5]))
    torch.testing.assert_close(jagged, ta(cand, keys))


@pytest.mark.parametrize(("size", "topk"), [(16, 2), (64, 3), (256, 5), (4096, 8)])
def test_product_keys_return_the_true_top_m(size: int, topk: int) -> None:
    torch.manual_seed(size)
    mem = ProductKeyMemory(D, size=size, topk=topk, key_dim=8, name="m")
    interests = torch.randn(6, 4, D)
    ids, scores = mem.retrieve(interests)
    q = mem.query(mem.norm(interests)).reshape(-1, 2, 4)
    s1 = q[:, 0] @ mem.sub_keys[0].t()
    s2 = q[:, 1] @ mem.sub_keys[1].t()
    full = (s1.unsqueeze(2) + s2.unsqueeze(1)).reshape(-1, size)  # row i*n + j = s1[i] + s2[j]
    best_scores, best_ids = full.topk(topk, dim=-1)
    torch.testing.assert_close(scores, best_scores)
    assert torch.equal(ids.sort(dim=-1).values, best_ids.sort(dim=-1).values)


def test_memory_read_is_the_softmax_weighted_rows_and_gradients_reach_the_table() -> None:
    torch.manual_seed(0)
    mem = ProductKeyMemory(D, size=4096, topk=4, key_dim=8, name="m")
    interests = torch.randn(3, 2, D)
    out = mem(interests)
    ids, scores = mem.retrieve(interests)
    table = mem.values.embeddings["m"].weight
    expected = interests + (torch.softmax(scores, -1).unsqueeze(-1) * table[ids]).sum(1).reshape(3, 2, D)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    grad = table.grad
    touched = torch.zeros(4096, dtype=torch.bool)
    touched[ids.reshape(-1)] = True
    assert grad[touched].abs().sum(-1).min() > 0  # every retrieved row learns
    assert grad[~touched].abs().sum() == 0  # and only those
    assert mem.sub_keys.grad is not None and mem.sub_keys.grad.abs().sum() > 0  # the keys learn too


def test_elastic_encoder_output_shape_and_memory_sizes() -> None:
    enc = ElasticEncoder(
        D, ElasticConfig(num_slots=4, num_heads=2, memory_size=4096, memory_topk=4), name="A"
    )
    values, lengths = jagged_input([3, 0, 8])
    out = enc(values.float(), lengths, torch.zeros(3, D))
    assert out.shape == (3, 4, D) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="perfect square"):
        ProductKeyMemory(D, size=1000, topk=4, key_dim=8, name="x")


@pytest.mark.parametrize("name", ["elastic", "self_attention", "din", "mean", "mean windows"])
def test_every_encoder_handles_a_batch_without_any_event(name: str) -> None:
    """Padding batches (no events at all) happen on ranks that ran out of data."""
    from crossrank.models.sequence import build_sequence_encoder

    config = ElasticConfig(num_slots=4, num_heads=2, num_layers=2, mean_windows=[2, 8])
    enc = build_sequence_encoder(name.split()[0], D, config, "A")
    out = enc(torch.zeros(0, D), torch.zeros(5, dtype=torch.long), torch.randn(5, D))
    assert out.shape[0] == 5 and out.shape[2] == D and torch.isfinite(out).all()
    out.sum().backward()


# Lengths for the dense-block kernels: uniform (one view block), ragged with empty users, one user 16x
# longer than the rest (a block of its own), many short users (several gathered blocks), no events at all.
KERNEL_CASES = {
    "uniform": [12] * 6,
    "ragged": [5, 0, 1, 17, 3, 0, 1],
    "skewed": [8, 8, 128, 8, 7, 8, 8, 8],
    "many_short": [(7 * i) % 23 for i in range(40)],
    "no_events": [0, 0, 0],
}


def kernel_outputs(
    disp: LinearDispatcher, kernels: str, lengths: list[int]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Slots, d loss / d values and d loss / d parameters of ``disp`` run with the given kernels."""
    disp.jagged_kernels = kernels
    disp.zero_grad(set_to_none=True)
    values, lens = jagged_input(lengths, seed=1)
    values.requires_grad_(True)
    out = disp(values, lens)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).mean().backward()
    assert values.grad is not None
    grads = {name: p.grad for name, p in disp.named_parameters() if p.grad is not None}
    return out.detach(), values.grad, grads


@pytest.mark.parametrize(("residual", "prior"), [(False, 0.0), (True, 0.0), (True, 2.0)])
@pytest.mark.parametrize("overhead", [0, attention.BUCKET_OVERHEAD_ROWS])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_dense_block_kernels_equal_the_fbgemm_path(
    num_layers: int, case: str, overhead: int, residual: bool, prior: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU dense-block path (folded queries, bucketed softmax / bmm, dense dispatch-back) computes what
    the fbgemm jagged path (the implementation before it, still used off CPU) computes: outputs and every
    gradient to 1e-5. Overhead 0 splits the small test batches into several gathered blocks."""
    monkeypatch.setattr(attention, "BUCKET_OVERHEAD_ROWS", overhead)
    torch.manual_seed(0)
    config = ElasticConfig(
        num_slots=4, num_heads=2, num_layers=num_layers, event_residual=residual, recency_prior=prior
    )
    disp = LinearDispatcher(D, config)
    if disp.recency_bias is not None:  # heads differ once trained: the two layouts must agree on them too
        for table in disp.recency_bias:
            nn.init.normal_(table)
    ref_out, ref_grad, ref_params = kernel_outputs(disp, "fbgemm", KERNEL_CASES[case])
    out, grad, params = kernel_outputs(disp, "dense", KERNEL_CASES[case])
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    assert params.keys() == ref_params.keys()  # every parameter gets a gradient (DDP), also without events
    for name, g in params.items():
        torch.testing.assert_close(g, ref_params[name], atol=1e-5, rtol=1e-5, msg=name)


def test_recency_buckets_match_the_log2_definition() -> None:
    """frexp's exponent is floor(log2(back)) + 1 for back >= 1 and 0 for the most recent event."""
    lengths = torch.tensor([1, 0, 2, 3, 17, 1025, 70_000])
    seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    back = lengths[seg] - 1 - (torch.arange(seg.numel()) - starts[seg])
    for num_buckets in (1, 4, 16, 40):
        log2 = torch.floor(torch.log2(back.clamp(min=1).double())).long() + (back > 0).long()
        assert torch.equal(recency_buckets(lengths, num_buckets), log2.clamp(max=num_buckets - 1))
    assert torch.equal(attention.events_back(lengths), back)
    assert attention.events_back(torch.tensor([2, 0, 1])).tolist() == [1, 0, 0]


def test_uniform_lengths_make_one_view_block_and_skewed_ones_little_padding() -> None:
    values = torch.randn(6 * 12, D)
    uniform = attention.segment_buckets(torch.full((6,), 12))
    (block,) = attention.bucket_blocks(values, uniform)
    assert uniform.rows is None and block.shape == (6, 12, D) and block.data_ptr() == values.data_ptr()
    g = torch.Generator().manual_seed(0)
    lengths = (50 * torch.exp(1.3 * torch.randn(512, generator=g))).long().clamp(0, 4096)
    lengths[7] = 16 * int(lengths.max())  # one user 16x longer than the rest
    blocks = attention.plan_buckets(lengths.tolist())
    padded = sum(len(b) * int(lengths[b[0]]) for b in blocks)
    events = int(lengths.sum())
    assert (
        blocks[0] == [7] and sorted(i for b in blocks for i in b) == torch.nonzero(lengths).flatten().tolist()
    )
    assert padded <= attention.BUCKET_SLACK * events + attention.BUCKET_OVERHEAD_ROWS * len(blocks)
    assert len(blocks) <= 16


def test_target_attention_score_is_the_mlp_of_the_concatenation() -> None:
    """The split first layer computes MLP([c, k, c*k, c-k]), with the candidate broadcast over the keys."""
    torch.manual_seed(0)
    ta = TargetAttention(D)
    cand, keys = torch.randn(4, 1, D), torch.randn(4, 6, D)
    c = cand.expand_as(keys)
    expected = ta.mlp(torch.cat([c, keys, c * keys, c - keys], dim=-1)).squeeze(-1)
    torch.testing.assert_close(ta.score(cand, keys), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ta.score(c, keys), expected, atol=1e-6, rtol=1e-5)


def test_blocks_are_right_aligned_and_their_gradient_is_index_selects() -> None:
    """Each segment ends at its block's last position (recency broadcasts over a block), padding comes
    first and is masked, and the gather's gradient (read back by positions) is index_select's own."""
    lengths = torch.tensor([3, 0, 7, 1, 7, 2])
    values = torch.randn(int(lengths.sum()), D, requires_grad=True)
    buckets = attention.segment_buckets(lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    seg = buckets.segments.tolist() if buckets.segments is not None else list(range(6))
    blocks = attention.bucket_blocks(values, buckets)
    row = 0
    for block, mask, (n, width) in zip(blocks, buckets.masks, buckets.shapes, strict=True):
        for i in range(n):
            s, n_i = seg[row + i], int(lengths[seg[row + i]])
            torch.testing.assert_close(block[i, width - n_i :], values[starts[s] : starts[s] + n_i])
            if mask is not None:
                assert mask[i].tolist() == [False] * (width - n_i) + [True] * n_i
        row += n
    weights = torch.randn(sum(n * w for n, w in buckets.shapes), D)
    masks = [
        torch.ones(n, w, dtype=torch.bool) if m is None else m
        for m, (n, w) in zip(buckets.masks, buckets.shapes, strict=True)
    ]
    keep = torch.cat([m.reshape(-1) for m in masks]).unsqueeze(-1)
    flat = torch.cat([b.reshape(-1, D) for b in blocks])
    (grad,) = torch.autograd.grad((flat * weights * keep).sum(), [values])
    assert buckets.rows is not None
    reference = values.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(
        (reference.index_select(0, buckets.rows) * weights * keep).sum(), [reference]
    )
    torch.testing.assert_close(grad, expected)
    none = attention.segment_buckets(torch.zeros(3, dtype=torch.long))
    assert none.shapes == [(0, 0)] and attention.bucket_blocks(values, none)[0].shape == (0, 0, D)


def test_recency_prior_starts_the_slots_from_a_mean_to_the_latest_events() -> None:
    """Without content (zero queries) the dispatch follows the prior: slot 0 is the history's mean, and
    each later slot puts more of its mass on the latest events, the last one most on the latest event."""
    from crossrank.models.diagnostics import dispatch_weights

    disp = LinearDispatcher(D, ElasticConfig(num_slots=4, num_heads=2, recency_prior=2.0))
    disp.queries[0].data.zero_()
    values, lengths = jagged_input([64])
    with torch.no_grad():
        weights = dispatch_weights(disp, values, lengths)  # [64, K, H]
    torch.testing.assert_close(weights[:, 0], torch.full((64, 2), 1 / 64))
    latest8 = weights[-8:].sum(0).mean(-1)  # [K]
    assert (latest8.diff() > 0).all(), latest8
    assert weights[-1, -1].min() > 0.6  # 2^(-2b) per event: 1 / (1 + 1/4 + 2/16 + ...) = 2/3
    off = LinearDispatcher(D, ElasticConfig(num_slots=4, num_heads=2, recency_prior=0.0))
    assert off.recency_bias is None and not any("recency_bias" in n for n, _ in off.named_parameters())


def test_mean_windows_are_the_means_of_the_latest_events() -> None:
    """K = 1 + len(windows): the whole history's mean, then each window's mean of the latest events (all
    of them when the history is shorter); users without events get the learned vectors."""
    enc = MeanSequenceEncoder(D, windows=[2, 8])
    values, lengths = jagged_input([5, 0, 1, 17, 3])
    out = enc(values, lengths, torch.randn(5, D))
    assert out.shape == (5, 3, D)
    start = 0
    for user, n in enumerate(lengths.tolist()):
        events = values[start : start + n]
        start += n
        if n == 0:
            torch.testing.assert_close(out[user, 0], enc.empty)
            assert enc.empty_recent is not None
            torch.testing.assert_close(out[user, 1:], enc.empty_recent)
            continue
        want = torch.stack([events.mean(0), events[-2:].mean(0), events[-8:].mean(0)])
        torch.testing.assert_close(out[user], want)
    plain = MeanSequenceEncoder(D)  # the plain mean keeps its one parameter (checkpoints load as before)
    assert [name for name, _ in plain.named_parameters()] == ["empty"] and plain.num_slots == 1
    assert plain(values, lengths, torch.randn(5, D)).shape == (5, 1, D)
