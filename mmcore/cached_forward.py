"""The prompts alone through frozen layers, attending to the original tokens' cached keys
and values: exactly the prompt outputs of the full forward, at a fraction of its cost.

Read-only prompts never change what the original tokens compute, so with frozen weights
each layer's keys and values of the original tokens are fixed per sample.
``recording_keys_values`` captures them during one full forward (``TokenCache``); then
``vit_block_prompts`` / ``bert_layer_prompts`` run one timm ``Block`` / HF ``BertLayer`` on
the K prompt tokens only, with the same arithmetic as the layer's own forward, under the
prompt rows of ``mmcore.prompts.read_only_mask`` (``prompt_mask``). The encoders' own
``forward_recording`` and ``forward_cached`` (``mmcore.encoders``) put these together;
``mmcore.prompt_cache`` keeps the caches of a whole split.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
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
        """Rows of the cache, trimmed to the longest real sequence among them."""
        padding = self.padding[rows]
        length = int(padding.any(0).nonzero().max()) + 1 if padding.any() else 1
        return TokenCache(self.keys[rows, :, :length], self.values[rows, :, :length],
                          padding[:, :length], self.embedding[rows])

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


def _attend(q: Tensor, cached_k: Tensor, cached_v: Tensor, k: Tensor, v: Tensor, mask: Tensor,
            heads: int, dropout: float = 0.0, scale: float | None = None) -> Tensor:
    """Multi-head attention of the prompts' queries over [cached originals; prompts].

    All inputs are (B, N, D) with N = K for the prompts' projections and N = L for the
    cached ones; returns the (B, K, D) attention output before the output projection.
    """
    def split(t: Tensor) -> Tensor:  # (B, N, D) -> (B, H, N, D / H)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    keys = torch.cat([split(cached_k.to(k.dtype)), split(k)], dim=2)  # (B, H, L + K, Dh)
    values = torch.cat([split(cached_v.to(v.dtype)), split(v)], dim=2)
    q = split(q)
    # written out, not SDPA: with K queries against L + K keys the product is small, and
    # SDPA's fused CPU backward (gradients for every key) costs 10x the rest of the step
    scores = (q @ keys.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)  # (B, H, K, L + K)
    weights = scores.float().masked_fill(~mask, float("-inf")).softmax(-1).to(values.dtype)
    out = F.dropout(weights, dropout, training=dropout > 0) @ values  # (B, H, K, Dh)
    return out.transpose(1, 2).flatten(2)  # (B, K, D)


def vit_block_prompts(block: nn.Module, x: Tensor, cached_k: Tensor, cached_v: Tensor,
                       mask: Tensor) -> Tensor:
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
                        mask: Tensor) -> Tensor:
    """One HF ``BertLayer`` on the prompt tokens only (post-norm, as ``BertLayer.forward``)."""
    sa = layer.attention.self
    out = _attend(sa.query(x), cached_k, cached_v, sa.key(x), sa.value(x), mask,
                  sa.num_attention_heads, sa.dropout.p if sa.training else 0.0, sa.scaling)
    x = layer.attention.output(out, x)
    return layer.output(layer.intermediate(x), x)


def prompt_mask(padding: Tensor, num_prompts: int, see_each_other: bool) -> Tensor:
    """(B, 1, K, L + K) bool: the prompt rows of ``read_only_mask``."""
    length = padding.shape[1]
    mask = read_only_mask(length, num_prompts, see_each_other, key_padding_mask=padding)
    return mask[:, :, length:]


__all__ = [
    "TokenCache",
    "bert_layer_prompts",
    "compute_dtype",
    "prompt_mask",
    "recording_keys_values",
    "vit_block_prompts",
]
