"""The cached path's parts: the prompts' mask rows, a cache's rows, recorded projections.
(That the whole prompt-only pass equals the full forward: tests/test_prompt_cache.py.)"""
from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn as nn

import mmcore.cached_forward as cached_forward
from mmcore.cached_forward import (CachedLayer, FrozenLinears, PromptAttention, TokenCache,
                                   packs_linears, prompt_mask, reads_in_place,
                                   recording_keys_values)
from mmcore.prompts import read_only_mask


def test_prompt_mask_is_the_prompt_rows_of_the_read_only_mask():
    padding = torch.tensor([[True, True, False], [True, True, True]])
    full = read_only_mask(3, 2, True, key_padding_mask=padding)  # (B, 1, 5, 5)
    mask = prompt_mask(padding, 2, True)
    assert mask.shape == (2, 1, 2, 5) and torch.equal(mask, full[:, :, 3:])
    assert not mask[0, 0, :, 2].any()  # a padded original is never attended


def test_prompt_mask_is_none_only_when_it_would_hide_nothing():
    full = torch.ones(2, 3, dtype=torch.bool)  # no padding: an image batch
    assert prompt_mask(full, 2, True) is None
    apart = prompt_mask(full, 2, False)  # each prompt still must not see the other
    assert apart is not None and not apart[0, 0, 0, 4] and apart[0, 0, 0, 3]


def test_select_keeps_rows_and_trims_to_the_longest_real_sequence():
    padding = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    blocks = [torch.randn(3, 2, 3, 4) for _ in range(4)]  # per layer (B, H, L, Dh)
    cache = TokenCache(tuple(blocks[:2]), tuple(blocks[2:]), padding, torch.randn(3, 4))
    part = cache.select(torch.tensor([2, 0]))  # rows 2 and 0 need all three tokens
    assert len(part) == 2 and torch.equal(part.values[1], blocks[3][[2, 0]])
    part = cache.select(torch.tensor([0, 1]))
    assert len(part) == 2 and [k.shape for k in part.keys] == [(2, 2, 2, 4)] * 2
    assert torch.equal(part.values[1], blocks[3][:2, :, :2])
    assert torch.equal(part.embedding, cache.embedding[:2])
    assert all(k.is_contiguous() for k in part.keys + part.values)  # read in place
    assert part.nbytes() == sum(t.nbytes for t in (*part.keys, *part.values, part.padding,
                                                   part.embedding))


def test_select_leaves_room_after_the_cached_rows_and_with_room_copies_only_when_short():
    padding = torch.tensor([[True, True, False], [True, False, False]])
    blocks = [torch.randn(2, 2, 3, 4) for _ in range(2)]
    cache = TokenCache((blocks[0],), (blocks[1],), padding, torch.randn(2, 4))
    part = cache.select(torch.tensor([1, 0]), room=3)  # 2 real tokens, then 3 free rows
    assert part.room == 3 and part.keys[0].shape == (2, 2, 5, 4)
    assert torch.equal(part.keys[0][:, :, :2], blocks[0][[1, 0], :, :2])
    assert torch.equal(part.values[0][:, :, :2], blocks[1][[1, 0], :, :2])
    assert part.keys[0].is_contiguous() and part.padding.shape == (2, 2)
    assert part.with_room(3) is part
    fewer = part.with_room(1)  # a view of the blocks, one free row
    assert fewer.keys[0].shape == (2, 2, 3, 4)
    assert fewer.keys[0].data_ptr() == part.keys[0].data_ptr()
    roomy = cache.with_room(1)  # every row, in order, trimmed to 2 tokens, then 1 free row
    assert roomy.room == 1 and roomy.keys[0].shape == (2, 2, 3, 4)
    assert torch.equal(roomy.keys[0][:, :, :2], blocks[0][:, :, :2])


def _split(dtype: torch.dtype = torch.float32) -> TokenCache:
    """Four samples of 2 layers, 2 heads, up to 3 tokens of Dh = 4; sample 1 has one token."""
    g = torch.Generator().manual_seed(0)
    padding = torch.tensor([[True, True, False], [True, False, False], [True, True, True],
                            [True, True, False]])
    blocks = [torch.randn(4, 2, 3, 4, generator=g, dtype=dtype) for _ in range(4)]
    return TokenCache(tuple(blocks[:2]), tuple(blocks[2:]), padding,
                      torch.randn(4, 5, generator=g, dtype=dtype))


def test_a_float32_cpu_batch_is_read_in_place_and_gathered_only_to_leave():
    split = _split()
    step = split.batch(torch.tensor([3, 1]), room=2)
    assert step.rows.tolist() == [3, 1] and step.room == 2 and len(step) == 2
    assert all(a is b for a, b in zip(step.keys + step.values, split.keys + split.values))
    assert step.padding.tolist() == [[True, True], [True, False]]  # trimmed to 2 tokens
    assert torch.equal(step.embedding, split.embedding[[3, 1]])
    inner = step.batch(torch.tensor([1]))  # the model's rows that have the modality
    assert inner.rows.tolist() == [1] and inner.padding.shape == (1, 1)
    copy = step.gathered()
    assert copy.rows is None and copy.room == 2 and copy.keys[0].shape == (2, 2, 2 + 2, 4)
    expected = split.select(torch.tensor([3, 1]), room=2)
    assert all(torch.equal(a[:, :, :2], b[:, :, :2])
               for a, b in zip(copy.keys + copy.values, expected.keys + expected.values))
    assert torch.equal(inner.gathered().keys[1], split.keys[1][[1], :, :1])
    assert step.with_room(5).rows is step.rows and step.with_room(5).keys is step.keys
    assert step.to("cpu").keys[0] is split.keys[0]  # staying on the CPU: still in place
    assert step.nbytes() == expected.nbytes() - sum(t[:, :, 2:].nbytes
                                                    for t in expected.keys + expected.values)
    sent = pickle.loads(pickle.dumps(step))  # a DataLoader worker's batch: its rows, not the split
    assert sent.rows is None and torch.equal(sent.values[0][:, :, :2], copy.values[0][:, :, :2])
    assert sent.keys[0].untyped_storage().nbytes() == copy.keys[0].nbytes  # not the split's


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_other_batches_are_gathered(dtype):
    split = _split(dtype)
    assert not reads_in_place(split.keys[0])
    step = split.batch(torch.tensor([2, 0]), room=1)
    assert step.rows is None and step.keys[0].shape == (2, 2, 3 + 1, 4)
    assert torch.equal(step.keys[0][:, :, :3], split.keys[0][[2, 0]])
    assert not reads_in_place(split.keys[0][:, :, :2])  # not contiguous


def test_from_layers_splits_heads_one_block_per_layer():
    keys = [torch.randn(3, 5, 8) for _ in range(2)]  # per layer (B, L, D), D = 2 heads x 4
    cache = TokenCache.from_layers(keys, keys, 2, torch.ones(3, 5, dtype=torch.bool),
                                   torch.randn(3, 8))
    assert [k.shape for k in cache.keys] == [(3, 2, 5, 4)] * 2 and len(cache) == 3
    assert torch.equal(cache.keys[1][2, 1], keys[1][2, :, 4:])  # layer 1, sample 2, head 1


def test_recording_keeps_the_original_tokens_and_removes_its_hooks():
    torch.manual_seed(0)
    layer = nn.Linear(4, 8)
    x = torch.randn(2, 5, 4)  # 3 originals, then 2 prompts
    with recording_keys_values([(layer, lambda out: out.chunk(2, dim=-1))], 3) as recorded:
        out = layer(x)
    (keys, values), = recorded
    assert torch.equal(keys, out[:, :3, :4]) and torch.equal(values, out[:, :3, 4:])
    layer(x)
    assert len(recorded) == 1 and not layer._forward_hooks


def _with_room(cached: torch.Tensor, room: int) -> torch.Tensor:
    """The block with ``room`` rows of NaN after the cached ones: whatever they hold is
    overwritten, never read."""
    return torch.cat([cached, torch.full_like(cached[:, :, :room], float("nan"))], 2)


def _reference_attention(q, k, v, cached_k, cached_v, mask, scale):
    keys, values = torch.cat([cached_k, k], 2), torch.cat([cached_v, v], 2)
    scores = (q @ keys.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ values


def _layer(cached_k: torch.Tensor, cached_v: torch.Tensor, room: int,
           in_place: bool) -> CachedLayer:
    """The batch's cached keys and values as one layer reads them: gathered, with ``room``
    rows of NaN after them, or in place, its B samples at rows B+1, 1, 3, ... of a split of
    2B + 1 whose other samples and later tokens are NaN. Whatever holds NaN is never read."""
    b, length = cached_k.shape[0], cached_k.shape[2]
    if not in_place:
        return CachedLayer(_with_room(cached_k, room), _with_room(cached_v, room), None, length)
    rows = torch.tensor([b + 1] + list(range(1, 2 * b - 1, 2)))[:b]

    def split(cached: torch.Tensor) -> torch.Tensor:
        blocks = torch.full((2 * b + 1, *cached.shape[1:]), float("nan"), dtype=cached.dtype)
        blocks = _with_room(blocks, 2)  # the split is longer than this batch's tokens
        blocks[rows, :, :length] = cached
        return blocks

    return CachedLayer(split(cached_k), split(cached_v), rows, length)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_prompt_attention_matches_autograd_and_leaves_the_cache_alone(masked, in_place):
    """Gathered (room for the prompts) or read in place (float32 CPU batches; here float64,
    which gradcheck needs and the same kernels compute)."""
    g = torch.Generator().manual_seed(0)
    b, h, n, length, dh = 2, 3, 4, 5, 8
    q, k, v = (torch.randn(b, h, n, dh, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    cached_k, cached_v = (torch.randn(b, h, length, dh, generator=g, dtype=torch.float64)
                          for _ in range(2))
    padding = torch.ones(b, length, dtype=torch.bool)
    padding[0, 3:] = False
    mask = prompt_mask(padding, n, True) if masked else None
    layer = _layer(cached_k, cached_v, n, in_place)
    before = layer.keys.clone()
    out = PromptAttention.apply(q, k, v, layer, mask, 0.3, 0.0)
    torch.testing.assert_close(out, _reference_attention(q, k, v, cached_k, cached_v, mask, 0.3))
    if in_place:  # the split's blocks are only read
        assert torch.equal(layer.keys.nan_to_num(), before.nan_to_num())
    else:  # the cached rows are only read; the room holds the prompts'
        assert torch.equal(layer.keys[:, :, :length], cached_k)
        assert torch.equal(layer.values[:, :, length:], v.detach())

    def attention(*qkv: torch.Tensor) -> torch.Tensor:
        fresh = layer._replace(keys=layer.keys.clone(), values=layer.values.clone())
        return PromptAttention.apply(*qkv, fresh, mask, 0.3, 0.0)

    assert torch.autograd.gradcheck(attention, (q, k, v))


def test_a_block_serves_one_forward_until_its_backward():
    q, k, v = (torch.randn(1, 1, 2, 4, requires_grad=True) for _ in range(3))
    layer = _layer(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), 2, in_place=False)
    first = PromptAttention.apply(q, k, v, layer, None, 0.5, 0.0)
    PromptAttention.apply(q, k * 2, v, layer, None, 0.5, 0.0)  # rewrites the room
    with pytest.raises(RuntimeError, match="inplace"):
        first.sum().backward()


@pytest.mark.parametrize("in_place", [False, True])
def test_prompt_attention_dropout_backpropagates_through_its_mask(in_place):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cached = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    layer = _layer(cached, cached, 3, in_place)

    def attention(*qkv: torch.Tensor, dropout: float = 0.5) -> torch.Tensor:
        torch.manual_seed(1)  # gradcheck reruns it: one dropout mask
        fresh = layer._replace(keys=layer.keys.clone(), values=layer.values.clone())
        return PromptAttention.apply(*qkv, fresh, None, 0.5, dropout)

    assert not torch.allclose(attention(q, k, v), attention(q, k, v, dropout=0.0))
    assert torch.autograd.gradcheck(attention, (q, k, v))


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    net[0].requires_grad_(False)  # frozen; net[2] trains
    return net


@pytest.mark.parametrize("packed", [True, False])
def test_frozen_linears_compute_what_autocast_computes_and_restore_the_layers(packed,
                                                                             monkeypatch):
    """Packed (oneDNN's layout, on CPUs that compute bf16) or cast copies (elsewhere): the
    outputs and input gradients of autocast's own bf16 linear, within a bf16 rounding."""
    if packed and not packs_linears(torch.device("cpu"), torch.bfloat16):
        pytest.skip("oneDNN does not compute bf16 on this CPU")
    monkeypatch.setattr(cached_forward, "packs_linears", lambda device, dtype: packed)
    net = _net()
    frozen, trained = net[0].weight, net[2].weight
    linears, x = FrozenLinears(), torch.randn(6, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x)
        (expected_grad,) = torch.autograd.grad(expected.float().square().sum(), x)
        with linears.applied(net, torch.bfloat16):
            assert ("forward" in vars(net[0])) == packed and "forward" not in vars(net[2])
            assert net[2].weight is trained  # a trained layer is left as it is
            got = net(x)
            (grad,) = torch.autograd.grad(got.float().square().sum(), x)
    torch.testing.assert_close(got, expected, atol=2 ** -6, rtol=2 ** -7)
    torch.testing.assert_close(grad, expected_grad, atol=2 ** -5, rtol=2 ** -6)
    assert net[0].weight is frozen and "forward" not in vars(net[0])  # restored
    with torch.no_grad():
        frozen.mul_(-1.0)  # a changed weight: its copy is remade
        net[0].bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with linears.applied(net, torch.bfloat16):
            flipped = net[0](x)
    torch.testing.assert_close(flipped, nn.functional.linear(x.bfloat16(), frozen.bfloat16()),
                               atol=2 ** -6, rtol=2 ** -7)
    frozen.data = torch.zeros_like(frozen)  # new storage, as module.to(device) gives
    with linears.applied(net, torch.bfloat16):
        assert not net[0](x.bfloat16()).sub(net[0].bias.bfloat16()).any()
    with linears.applied(net, torch.float32):  # full precision: nothing to hold
        assert net[0].weight is frozen and "forward" not in vars(net[0])
