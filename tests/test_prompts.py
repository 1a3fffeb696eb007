import pytest
import torch

from mmcore.prompts import ReadOnlyPrompts, read_only_mask


def test_mask_blocks_originals_from_prompts():
    mask = read_only_mask(num_tokens=3, num_prompts=2, prompts_see_each_other=True)
    assert mask.shape == (5, 5) and mask.dtype == torch.bool
    assert mask[:3, :3].all()  # originals see originals
    assert not mask[:3, 3:].any()  # ... and never a prompt
    assert mask[3:, :].all()  # prompts see everything


def test_prompts_that_do_not_see_each_other_still_see_themselves():
    mask = read_only_mask(3, 3, prompts_see_each_other=False)
    assert torch.equal(mask[3:, 3:], torch.eye(3, dtype=torch.bool))
    assert mask[3:, :3].all()


def test_padding_keys_are_hidden_from_everyone():
    pad = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mask = read_only_mask(3, 2, True, key_padding_mask=pad)
    assert mask.shape == (2, 1, 5, 5)
    assert not mask[0, 0, :, 2].any()  # the padding token is no one's key
    assert mask[1, 0, :, 2].all()
    assert not mask[0, 0, :3, 3:].any()
    assert mask[0, 0, 3:, 3:].all()


def test_padding_mask_length_is_checked():
    with pytest.raises(ValueError, match="num_tokens=4"):
        read_only_mask(4, 2, True, key_padding_mask=torch.ones(1, 3))


def test_prompts_start_near_the_init_vector_and_differ():
    torch.manual_seed(0)
    init = torch.randn(16) * 5
    prompts = ReadOnlyPrompts(4, 16, init=init)
    tokens = prompts(batch_size=3)
    assert tokens.shape == (3, 4, 16)
    rms = init.pow(2).mean().sqrt()
    assert (tokens[0] - init).pow(2).mean().sqrt() < 0.1 * rms
    assert not torch.allclose(tokens[0, 0], tokens[0, 1])  # symmetry broken by noise


def test_independent_prompts_spread_at_the_init_scale():
    torch.manual_seed(0)
    init = torch.randn(64) * 5
    tokens = ReadOnlyPrompts(4, 64, init=init, independent=True).tokens.detach()
    rms = init.pow(2).mean().sqrt()
    assert 0.7 * rms < tokens.pow(2).mean().sqrt() < 1.3 * rms
    cosine = torch.nn.functional.cosine_similarity(tokens[:, None], tokens[None], dim=-1)
    assert cosine[~torch.eye(4, dtype=torch.bool)].abs().max() < 0.5  # not near-copies


def test_prompts_are_learnable_and_validated():
    prompts = ReadOnlyPrompts(2, 8)
    prompts(2).sum().backward()
    assert prompts.tokens.grad is not None and prompts.tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="prompt_length"):
        ReadOnlyPrompts(0, 8)
    with pytest.raises(ValueError, match="dim=8"):
        ReadOnlyPrompts(2, 8, init=torch.zeros(7))


def test_originals_see_prompts_drops_only_the_read_only_rule():
    padding = torch.tensor([[1, 1, 0]])  # the third original is padding
    leaky = read_only_mask(3, 2, True, key_padding_mask=padding, originals_see_prompts=True)[0, 0]
    strict = read_only_mask(3, 2, True, key_padding_mask=padding)[0, 0]
    assert leaky[:3, 3:].all()  # originals now read the prompts
    assert torch.equal(leaky[:, :3], strict[:, :3]) and torch.equal(leaky[3:], strict[3:])
    assert not leaky[:, 2].any()  # padding stays unseen
