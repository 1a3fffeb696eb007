"""The prompts alone through frozen layers, attending to the original tokens' cached keys
and values: exactly the prompt outputs of the full forward, at a fraction of its cost.

Read-only prompts never change what the original tokens compute, so with frozen weights
each layer's keys and values of the original tokens are fixed per sample.
``recording_keys_values`` captures them during one full forward (``TokenCache``); then
``vit_block_prompts`` / ``bert_layer_prompts`` run one timm ``Block`` / HF ``BertLayer`` on
the K prompt tokens only, with the same arithmetic as the layer's own forward, under the
prompt rows of ``mmcore.prompts.read_only_mask`` (``prompt_mask``); their attention
(``PromptAttention``) differentiates only what trains, never the cache, and
``FrozenWeightCasts`` keeps the bf16 copy of the frozen weights that autocast would remake
at every call. The encoders' own ``forward_recording`` and ``forward_cached``
(``mmcore.encoders``) put these together; ``mmcore.prompt_cache`` keeps the caches of a
whole split.
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
    Keys and values are split into heads, one contiguous (B, H, L, Dh) block per layer, the
    layout the prompts' attention reads in place. One block per layer, not one for all
    layers: a batch's rows are gathered at every step, and blocks of a layer's size are
    reused by the C allocator from step to step, where a single (layers, B, ...) block was
    large enough to be mapped fresh from the system each time (at 224 px its page faults
    took 92 ms a batch of 32, half a cached training step).
    """

    keys: tuple[Tensor, ...]  # per layer (B, H, L, Dh): the keys of the L original tokens
    values: tuple[Tensor, ...]  # per layer (B, H, L, Dh)
    padding: Tensor  # (B, L) bool, True = a real token
    embedding: Tensor  # (B, D) the encoder's embedding (unchanged by prompts)

    @classmethod
    def from_layers(cls, keys: list[Tensor], values: list[Tensor], heads: int, padding: Tensor,
                    embedding: Tensor) -> "TokenCache":
        """The cache of per-layer (B, L, D) keys and values, as a layer's projections give them."""
        def split(per_layer: list[Tensor]) -> tuple[Tensor, ...]:  # -> (B, H, L, Dh) each
            return tuple(t.unflatten(-1, (heads, -1)).transpose(1, 2).contiguous()
                         for t in per_layer)
        return cls(split(keys), split(values), padding, embedding)

    def select(self, rows: Tensor) -> "TokenCache":
        """Rows of the cache, trimmed to the longest real sequence among them.

        ``index_select`` copies whole rows, several times faster than advanced indexing;
        taken from the trimmed view, it leaves every layer's block contiguous, which the
        batched products read twice as fast as a strided view.
        """
        padding = self.padding[rows]
        length = int(padding.any(0).nonzero().max()) + 1 if padding.any() else 1
        keys, values = (tuple(t[:, :, :length].index_select(0, rows) for t in blocks)
                        for blocks in (self.keys, self.values))
        return TokenCache(keys, values, padding[:, :length], self.embedding[rows])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenCache":
        def moved(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)
        return TokenCache(tuple(map(moved, self.keys)), tuple(map(moved, self.values)),
                          moved(self.padding), moved(self.embedding))

    def nbytes(self) -> int:
        return (sum(t.nbytes for t in self.keys + self.values) + self.padding.nbytes
                + self.embedding.nbytes)

    def __len__(self) -> int:
        return self.keys[0].shape[0]


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


class FrozenWeightCasts:
    """One low-precision copy of each frozen linear layer's weight and bias, kept across steps.

    Autocast keeps its casts only of weights that require grad, so a frozen encoder's linear
    weights are cast to bf16 again at every call: a tenth of a cached training step, for the
    same numbers each time. While ``applied``, the frozen linear layers hold the copy that
    autocast would have made; a copy is remade when its weight changes, in place (its version
    moves) or by a new storage (``module.to(device)``).
    """

    def __init__(self) -> None:
        self._copies: dict[tuple[int, torch.dtype], tuple[nn.Parameter, tuple[int, int],
                                                          nn.Parameter]] = {}

    def _copy(self, param: nn.Parameter, dtype: torch.dtype) -> nn.Parameter:
        key, state = (id(param), dtype), (param._version, param.data_ptr())
        entry = self._copies.get(key)
        if entry is None or entry[0] is not param or entry[1] != state:
            entry = (param, state, nn.Parameter(param.detach().to(dtype), requires_grad=False))
            self._copies[key] = entry
        return entry[2]

    @contextlib.contextmanager
    def applied(self, module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
        """``module``'s frozen linear layers hold ``dtype`` copies; float32 changes nothing."""
        swapped = []
        if dtype != torch.float32:
            for linear in module.modules():
                if isinstance(linear, nn.Linear):
                    for name in ("weight", "bias"):
                        param = getattr(linear, name)
                        if param is not None and not param.requires_grad:
                            swapped.append((linear, name, param))
                            setattr(linear, name, self._copy(param, dtype))
        try:
            yield
        finally:
            for linear, name, param in swapped:
                setattr(linear, name, param)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the full forward's token stream has here: autocast's, else float32."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32


def _times_cache_t(cached: Tensor, x: Tensor) -> Tensor:
    """x @ cached^T, (B, H, K, L), computed as (cached @ x^T)^T.

    The same numbers, but oneDNN's batched product then reads the large cached block as its
    left operand as it lies, instead of repacking it as the right one at every call: 2x
    faster for K = 6 queries over 257 cached tokens on an AMX host (0.31 vs 0.66 ms a layer).
    """
    return (cached @ x.transpose(-2, -1).contiguous()).transpose(-2, -1)


class PromptAttention(torch.autograd.Function):
    """softmax(q [Kc; k]^T * scale) [Vc; v] for the prompts' queries, keys and values.

    Written out, not SDPA: with K queries against L + K keys the products are small, and
    SDPA's fused CPU backward costs 10x the rest of the step. Written as a Function because
    autograd would differentiate the concatenated keys and values in full, L + K rows a head,
    only to drop the L cached ones: two of the step's largest products for nothing. Here the
    backward computes the gradients of q, k and v alone, and the cached keys and values are
    never concatenated with the prompts' (that copy was a fifth of the step): the products
    with them and with the prompts' are taken apart, and only the small (K, L + K) scores
    are joined.

    Inputs are (B, H, N, Dh): N = K for the prompts' q, k, v, N = L for the cached keys and
    values; ``mask`` is (B, 1, K, L + K) bool or None; returns (B, H, K, Dh).
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, cached_k: Tensor, cached_v: Tensor,
                mask: Tensor | None, scale: float, dropout: float) -> Tensor:
        cached_k, cached_v = cached_k.to(k.dtype), cached_v.to(v.dtype)
        q = q * scale  # scaled before the products, as timm's attention does
        scores = torch.cat([_times_cache_t(cached_k, q), q @ k.transpose(-2, -1)], dim=-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # in the scores' dtype: the CPU kernels accumulate bf16 in float32 and round once,
        # the same numbers as a float32 softmax rounded to bf16, without two conversions
        weights = scores.softmax(-1)  # (B, H, K, L + K)
        keep = None
        if dropout > 0:  # inverted dropout on the weights, its mask kept for the backward
            keep = torch.empty_like(weights).bernoulli_(1 - dropout).div_(1 - dropout)
        ctx.save_for_backward(q, k, v, cached_k, cached_v, weights, keep)
        ctx.scale = scale
        kept = weights if keep is None else weights * keep
        length = cached_k.shape[2]
        return kept[..., :length] @ cached_v + kept[..., length:] @ v

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, cached_k, cached_v, weights, keep = ctx.saved_tensors
        length = cached_k.shape[2]
        d_weights = torch.cat([_times_cache_t(cached_v, d_out), d_out @ v.transpose(-2, -1)],
                              dim=-1)  # (B, H, K, L + K)
        kept = weights[..., length:]  # the weights of the prompts' values
        if keep is not None:
            d_weights, kept = d_weights * keep, kept * keep[..., length:]
        # softmax's own backward kernel (float32 inside): one pass for the formula's six
        d_scores = torch._softmax_backward_data(d_weights, weights, -1, weights.dtype)
        d_cached, d_prompts = d_scores[..., :length], d_scores[..., length:]
        d_q = (d_cached @ cached_k + d_prompts @ k) * ctx.scale
        d_k = d_prompts.transpose(-2, -1) @ q
        d_v = kept.transpose(-2, -1) @ d_out
        return d_q, d_k, d_v, None, None, None, None, None


def _attend(q: Tensor, cached_k: Tensor, cached_v: Tensor, k: Tensor, v: Tensor,
            mask: Tensor | None, heads: int, dropout: float = 0.0,
            scale: float | None = None) -> Tensor:
    """Multi-head attention of the prompts' queries over [cached originals; prompts].

    The prompts' projections are (B, K, D), the cached keys and values (B, H, L, Dh);
    returns the (B, K, D) attention output before the output projection.
    """
    def split(t: Tensor) -> Tensor:  # (B, K, D) -> (B, H, K, D / H)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    q = split(q)
    out = PromptAttention.apply(q, split(k), split(v), cached_k, cached_v, mask,
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
    cached_k = attn.k_norm(cached_k.to(k.dtype))  # (B, H, L, Dh), normed per head as timm's
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
    "FrozenWeightCasts",
    "PromptAttention",
    "TokenCache",
    "bert_layer_prompts",
    "compute_dtype",
    "prompt_mask",
    "recording_keys_values",
    "vit_block_prompts",
]
