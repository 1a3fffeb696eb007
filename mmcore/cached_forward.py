"""The prompts alone through frozen layers, attending to the original tokens' cached keys
and values: exactly the prompt outputs of the full forward, at a fraction of its cost.

Read-only prompts never change what the original tokens compute, so with frozen weights
each layer's keys and values of the original tokens are fixed per sample.
``recording_keys_values`` captures them during one full forward (``TokenCache``); then
``vit_block_prompts`` / ``bert_layer_prompts`` run one timm ``Block`` / HF ``BertLayer`` on
the K prompt tokens only, with the same arithmetic as the layer's own forward, under the
prompt rows of ``mmcore.prompts.read_only_mask`` (``prompt_mask``); their attention
(``PromptAttention``) differentiates only what trains, never the cache. The encoders' own
``forward_recording`` and ``forward_cached`` (``mmcore.encoders``) put these together;
``mmcore.prompt_cache`` keeps the caches of a whole split.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor

from mmcore.prompts import read_only_mask


@dataclass
class TokenCache:
    """What a frozen encoder's original tokens give every layer: their keys and values.

    No original token attends to a prompt, so with frozen weights these never depend on
    the prompts: cached once per sample, they let ``forward_cached`` run only the K prompt
    tokens through the layers and still give exactly the outputs of the full forward.
    """

    keys: Tensor  # (B, layers, L, D): each layer's keys of the L original tokens
    values: Tensor  # (B, layers, L, D)
    padding: Tensor  # (B, L) bool, True = a real token
    embedding: Tensor  # (B, D) the encoder's embedding (unchanged by prompts)

    def select(self, rows: Tensor) -> "TokenCache":
        """Rows of the cache, trimmed (a view) to the longest real sequence among them.

        ``index_select`` copies whole rows, several times faster than indexing with a slice.
        """
        padding = self.padding[rows]
        length = int(padding.any(0).nonzero().max()) + 1 if padding.any() else 1
        keys, values = (t.index_select(0, rows)[:, :, :length] for t in (self.keys, self.values))
        return TokenCache(keys, values, padding[:, :length], self.embedding[rows])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenCache":
        return TokenCache(*(t.to(device, non_blocking=non_blocking)
                            for t in (self.keys, self.values, self.padding, self.embedding)))

    def __len__(self) -> int:
        return self.keys.shape[0]


@contextlib.contextmanager
def recording_keys_values(
    projections: list[tuple[nn.Module, Callable[[Tensor], tuple[Tensor, ...]]]], num_tokens: int
) -> Iterator[list[tuple[Tensor, ...]]]:
    """Record what projection modules output for the original tokens during a forward pass.

    Args:
        projections: the modules whose outputs hold keys and/or values, in call order,
            each with a function splitting its (B, N, ...) output into the parts to keep.
        num_tokens: how many leading tokens are original (the prompts follow them).

    Yields:
        A list that holds, once the forward has run, one tuple of (B, num_tokens, D)
        parts per module call.
    """
    recorded: list[tuple[Tensor, ...]] = []

    def hook(split: Callable, module: nn.Module, args: object, output: Tensor) -> None:
        recorded.append(tuple(t[:, :num_tokens].detach() for t in split(output)))

    handles = [module.register_forward_hook(functools.partial(hook, split))
               for module, split in projections]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the full forward's token stream has here: autocast's, else float32."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class PromptAttention(torch.autograd.Function):
    """softmax(q [Kc; k]^T * scale) [Vc; v] for the prompts' queries, keys and values.

    Written out, not SDPA: with K queries against L + K keys the products are small, and
    SDPA's fused CPU backward costs 10x the rest of the step. Written as a Function because
    autograd would differentiate the concatenated keys and values in full, L + K rows a head,
    only to drop the L cached ones: two of the step's largest products for nothing. Here the
    backward computes the gradients of q, k and v alone.

    Inputs are (B, H, N, Dh): N = K for the prompts' q, k, v, N = L for the cached keys and
    values; ``mask`` is (B, 1, K, L + K) bool or None; returns (B, H, K, Dh).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, cached_k: Tensor, cached_v: Tensor,
                mask: Tensor | None, scale: float, dropout: float) -> Tensor:
        keys = torch.cat([cached_k.to(k.dtype), k], dim=2)  # (B, H, L + K, Dh)
        values = torch.cat([cached_v.to(v.dtype), v], dim=2)
        # the softmax in float32 at least (bf16 scores under autocast)
        scores = ((q @ keys.transpose(-2, -1)) * scale).to(_at_least_float32(q.dtype))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1).to(values.dtype)  # (B, H, K, L + K)
        keep = None
        if dropout > 0:  # inverted dropout on the weights, its mask kept for the backward
            keep = torch.empty_like(weights).bernoulli_(1 - dropout).div_(1 - dropout)
        ctx.save_for_backward(q, keys, values, weights, keep)
        ctx.scale = scale
        return (weights if keep is None else weights * keep) @ values

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, keys, values, weights, keep = ctx.saved_tensors
        n = q.shape[2]  # the prompts: the last n keys and values
        d_weights = d_out @ values.transpose(-2, -1)  # (B, H, K, L + K)
        kept = weights
        if keep is not None:
            d_weights, kept = d_weights * keep, weights * keep
        wide = _at_least_float32(weights.dtype)  # the softmax's backward, as its forward
        w, g = weights.to(wide), d_weights.to(wide)
        d_scores = (w * (g - (g * w).sum(-1, keepdim=True)) * ctx.scale).to(q.dtype)
        d_q = d_scores @ keys
        d_k = d_scores[..., -n:].transpose(-2, -1) @ q
        d_v = kept[..., -n:].transpose(-2, -1) @ d_out
        return d_q, d_k, d_v, None, None, None, None, None


def _attend(q: Tensor, cached_k: Tensor, cached_v: Tensor, k: Tensor, v: Tensor,
            mask: Tensor | None, heads: int, dropout: float = 0.0,
            scale: float | None = None) -> Tensor:
    """Multi-head attention of the prompts' queries over [cached originals; prompts].

    All inputs are (B, N, D) with N = K for the prompts' projections and N = L for the
    cached ones; returns the (B, K, D) attention output before the output projection.
    """
    def split(t: Tensor) -> Tensor:  # (B, N, D) -> (B, H, N, D / H)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    q = split(q)
    out = PromptAttention.apply(q, split(k), split(v), split(cached_k), split(cached_v), mask,
                                scale or q.shape[-1] ** -0.5, dropout)
    return out.transpose(1, 2).flatten(2)  # (B, K, D)


def vit_block_prompts(block: nn.Module, x: Tensor, cached_k: Tensor, cached_v: Tensor,
                       mask: Tensor | None) -> Tensor:
    """One timm ``Block`` on the prompt tokens only (the same arithmetic as ``Block.forward``)."""
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(x)).chunk(3, dim=-1)  # (B, K, D) each
    heads = attn.num_heads
    q = attn.q_norm(q.unflatten(-1, (heads, -1))).flatten(2)
    k = attn.k_norm(k.unflatten(-1, (heads, -1))).flatten(2)
    cached_k = attn.k_norm(cached_k.unflatten(-1, (heads, -1)).to(k.dtype)).flatten(2)
    out = _attend(q, cached_k, cached_v, k, v, mask, heads,
                  attn.attn_drop.p if attn.training else 0.0)
    x = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def bert_layer_prompts(layer: nn.Module, x: Tensor, cached_k: Tensor, cached_v: Tensor,
                        mask: Tensor | None) -> Tensor:
    """One HF ``BertLayer`` on the prompt tokens only (post-norm, as ``BertLayer.forward``)."""
    sa = layer.attention.self
    out = _attend(sa.query(x), cached_k, cached_v, sa.key(x), sa.value(x), mask,
                  sa.num_attention_heads, sa.dropout.p if sa.training else 0.0, sa.scaling)
    x = layer.attention.output(out, x)
    return layer.output(layer.intermediate(x), x)


def prompt_mask(padding: Tensor, num_prompts: int, see_each_other: bool) -> Tensor | None:
    """(B, 1, K, L + K) bool: the prompt rows of ``read_only_mask``; None when it hides nothing
    (no padding, prompts that see each other: every image batch), so no masking is done."""
    if see_each_other and bool(padding.all()):
        return None
    length = padding.shape[1]
    mask = read_only_mask(length, num_prompts, see_each_other, key_padding_mask=padding)
    return mask[:, :, length:]


__all__ = [
    "PromptAttention",
    "TokenCache",
    "bert_layer_prompts",
    "compute_dtype",
    "prompt_mask",
    "recording_keys_values",
    "vit_block_prompts",
]
