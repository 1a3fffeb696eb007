"""The cached path's parts: the prompts' mask rows, a cache's rows, recorded projections.
(That the whole prompt-only pass equals the full forward: tests/test_prompt_cache.py.)"""
from __future__ import annotations

import torch
import torch.nn as nn

from mmcore.cached_forward import TokenCache, prompt_mask, recording_keys_values
from mmcore.prompts import read_only_mask


def test_prompt_mask_is_the_prompt_rows_of_the_read_only_mask():
    padding = torch.tensor([[True, True, False], [True, True, True]])
    full = read_only_mask(3, 2, True, key_padding_mask=padding)  # (B, 1, 5, 5)
    mask = prompt_mask(padding, 2, True)
    assert mask.shape == (2, 1, 2, 5) and torch.equal(mask, full[:, :, 3:])
    assert not mask[0, 0, :, 2].any()  # a padded original is never attended


def test_select_keeps_rows_and_trims_to_the_longest_real_sequence():
    padding = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    cache = TokenCache(torch.randn(3, 2, 3, 4), torch.randn(3, 2, 3, 4), padding,
                       torch.randn(3, 4))
    part = cache.select(torch.tensor([0, 1]))
    assert len(part) == 2 and part.keys.shape == (2, 2, 2, 4)
    assert torch.equal(part.values, cache.values[:2, :, :2])
    assert torch.equal(part.embedding, cache.embedding[:2])


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
