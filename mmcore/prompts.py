"""Read-only prompts: learnable tokens appended to an encoder's sequence that only read it.

The prompts attend to the original tokens, but no original token attends to a prompt.
So the encoder's outputs for its own tokens (CLS, patches, word pieces) are exactly what
they would be without prompts, and the prompts' outputs are a learned read-out of every
layer that a feature predictor can use without disturbing the unimodal embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class ReadOnlyPrompts(nn.Module):
    """K learnable prompt tokens of width D, shared by every sample of a batch.

    Initialisation (RPO practice, ``independent=False``): every prompt starts at a given
    vector (the encoder's CLS input embedding) plus Gaussian noise of ``noise_scale`` times
    that vector's RMS. Starting near CLS puts the prompts where the pretrained layers expect
    a summary token; the noise breaks the symmetry so the K prompts can learn different
    read-outs. ``independent=True`` draws each prompt on its own at that RMS instead, so
    the K read-outs differ from the first step. Prompts carry no position embedding: they
    are appended after position embeddings.
    """

    def __init__(self, num_prompts: int, dim: int, init: Tensor | None = None,
                 noise_scale: float = 0.02, independent: bool = False) -> None:
        """
        Args:
            num_prompts: K >= 1.
            dim: token width D.
            init: (D,) vector to start from; None starts from zero plus unit-RMS noise.
            noise_scale: noise std relative to the RMS of ``init``.
            independent: start from zero plus noise of the RMS of ``init`` (``noise_scale``
                is then 1).
        """
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"model.prompt_length={num_prompts}; read-only prompts need K >= 1")
        if init is None:
            base, rms = torch.zeros(dim), 1.0
        else:
            base = init.detach().float().reshape(-1)
            if base.numel() != dim:
                raise ValueError(f"prompt init has {base.numel()} values; expected dim={dim}")
            rms = float(base.pow(2).mean().sqrt()) or 1.0
        if independent:
            base, noise_scale = torch.zeros(dim), 1.0
        noise = torch.randn(num_prompts, dim) * noise_scale * rms
        self.tokens = nn.Parameter(base.expand(num_prompts, dim) + noise)  # (K, D)

    @property
    def num_prompts(self) -> int:
        return self.tokens.shape[0]

    def forward(self, batch_size: int) -> Tensor:
        """The prompts for a batch: (B, K, D)."""
        return self.tokens.unsqueeze(0).expand(batch_size, -1, -1)


def prompt_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of every ``ReadOnlyPrompts`` inside ``module`` (they always train)."""
    return [p for m in module.modules() if isinstance(m, ReadOnlyPrompts) for p in m.parameters()]


def read_only_mask(num_tokens: int, num_prompts: int, prompts_see_each_other: bool,
                   key_padding_mask: Tensor | None = None, device: torch.device | None = None,
                   originals_see_prompts: bool = False) -> Tensor:
    """Boolean attention mask (True = may attend) for ``num_tokens`` originals + prompts.

    Queries are rows, keys are columns. Original tokens attend only to original,
    non-padding tokens; prompts attend to the original non-padding tokens, to
    themselves, and to each other if ``prompts_see_each_other``.

    Args:
        num_tokens: L, the original sequence length (prompts follow at L .. L+K-1).
        num_prompts: K.
        prompts_see_each_other: whether prompt i may attend to prompt j != i.
        key_padding_mask: optional (B, L) mask, True/1 = real token.
        device: where to build the mask (defaults to ``key_padding_mask``'s device).
        originals_see_prompts: drop the read-only rule, so that original tokens also attend
            to the prompts (the counterfactual that shows what the rule protects).

    Returns:
        (L+K, L+K) bool, or (B, 1, L+K, L+K) bool when ``key_padding_mask`` is given.
    """
    if key_padding_mask is not None:
        device = key_padding_mask.device
    size = num_tokens + num_prompts
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[:, :num_tokens] = True  # everyone reads the originals
    mask[:num_tokens, num_tokens:] = originals_see_prompts  # the read-only rule: False
    prompt_block = mask[num_tokens:, num_tokens:]  # (K, K) view
    if prompts_see_each_other:
        prompt_block.fill_(True)
    else:
        prompt_block.fill_diagonal_(True)
    if key_padding_mask is None:
        return mask
    if key_padding_mask.shape[-1] != num_tokens:
        raise ValueError(f"key_padding_mask has length {key_padding_mask.shape[-1]}; "
                         f"expected num_tokens={num_tokens}")
    keys = torch.ones(key_padding_mask.shape[0], size, dtype=torch.bool, device=device)
    keys[:, :num_tokens] = key_padding_mask.bool()
    return (mask.unsqueeze(0) & keys[:, None, :]).unsqueeze(1)  # (B, 1, L+K, L+K)
