"""The text encoder's read-only mask holds under every attention implementation.

A boolean mask is applied by SDPA but added as 0 / 1 by eager attention, which would let
the original tokens attend to the prompts; ``TextEncoder`` passes an additive mask.
"""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from mmcore.encoders import TextEncoder
from mmcore.prompts import read_only_mask


@pytest.fixture
def encoder() -> TextEncoder:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, attn_implementation="sdpa")
    return TextEncoder(BertModel(config).eval(), "mean", prompt_length=3).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 120, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return ids, mask


@torch.no_grad()
def test_eager_and_sdpa_attention_give_the_same_outputs(encoder):
    ids, mask = _inputs()
    backbone = encoder.backbone
    sdpa = encoder(ids, mask)
    x = torch.cat([backbone.embeddings(input_ids=ids), encoder.prompts(2)], 1)
    boolean = read_only_mask(7, 3, True, key_padding_mask=mask.bool())
    before = backbone.encoder(x, attention_mask=boolean).last_hidden_state
    backbone.config._attn_implementation = "eager"
    after = backbone.encoder(x, attention_mask=boolean).last_hidden_state
    assert (before - after).abs().max() > 1e-3  # the switch is real: a bool mask breaks
    eager = encoder(ids, mask)
    torch.testing.assert_close(eager.embedding, sdpa.embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.prompts, sdpa.prompts, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tokens_ignore_the_prompts_under_eager_attention(encoder):
    ids, mask = _inputs()
    encoder.backbone.config._attn_implementation = "eager"
    first = encoder(ids, mask)
    encoder.prompts.tokens.add_(torch.randn_like(encoder.prompts.tokens))
    second = encoder(ids, mask)
    torch.testing.assert_close(second.embedding, first.embedding)  # read-only
    assert (second.prompts - first.prompts).abs().max() > 1e-3
