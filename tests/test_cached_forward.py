"""The cached path's parts: the prompts' mask rows, a cache's rows, recorded projections.
(That the whole prompt-only pass equals the full forward: tests/test_prompt_cache.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import mmcore.cached_forward as cached_forward
from mmcore.cached_forward import (FrozenLinears, PromptAttention, TokenCache, packs_linears,
                                   prompt_mask, recording_keys_values)
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


@pytest.mark.parametrize("masked", [False, True])
def test_prompt_attention_matches_autograd_and_leaves_the_cache_alone(masked):
    g = torch.Generator().manual_seed(0)
    b, h, n, length, dh = 2, 3, 4, 5, 8
    q, k, v = (torch.randn(b, h, n, dh, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    cached_k, cached_v = (torch.randn(b, h, length, dh, generator=g, dtype=torch.float64)
                          for _ in range(2))
    padding = torch.ones(b, length, dtype=torch.bool)
    padding[0, 3:] = False
    mask = prompt_mask(padding, n, True) if masked else None
    keys, values = _with_room(cached_k, n), _with_room(cached_v, n)
    out = PromptAttention.apply(q, k, v, keys, values, mask, 0.3, 0.0)
    torch.testing.assert_close(out, _reference_attention(q, k, v, cached_k, cached_v, mask, 0.3))
    assert torch.equal(keys[:, :, :length], cached_k)  # the cached rows are only read
    assert torch.equal(values[:, :, length:], v.detach())  # the room holds the prompts'
    assert torch.autograd.gradcheck(
        lambda *t: PromptAttention.apply(*t, keys.clone(), values.clone(), mask, 0.3, 0.0),
        (q, k, v))


def test_a_block_serves_one_forward_until_its_backward():
    q, k, v = (torch.randn(1, 1, 2, 4, requires_grad=True) for _ in range(3))
    keys, values = _with_room(torch.randn(1, 1, 3, 4), 2), _with_room(torch.randn(1, 1, 3, 4), 2)
    first = PromptAttention.apply(q, k, v, keys, values, None, 0.5, 0.0)
    PromptAttention.apply(q, k * 2, v, keys, values, None, 0.5, 0.0)  # rewrites the room
    with pytest.raises(RuntimeError, match="inplace"):
        first.sum().backward()


def test_prompt_attention_dropout_backpropagates_through_its_mask():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    cached = _with_room(torch.randn(2, 2, 5, 4, dtype=torch.float64), 3)

    def dropped(*qkv: torch.Tensor) -> torch.Tensor:  # gradcheck reruns it: one dropout mask
        torch.manual_seed(1)
        return PromptAttention.apply(*qkv, cached.clone(), cached.clone(), None, 0.5, 0.5)

    whole = PromptAttention.apply(q, k, v, cached.clone(), cached.clone(), None, 0.5, 0.0)
    assert not torch.allclose(dropped(q, k, v), whole)
    assert torch.autograd.gradcheck(dropped, (q, k, v))


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
