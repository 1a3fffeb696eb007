"""The prompts alone through frozen layers, attending to the original tokens' cached keys
and values: exactly the prompt outputs of the full forward, at a fraction of its cost.

Read-only prompts never change what the original tokens compute, so with frozen weights
each layer's keys and values of the original tokens are fixed per sample.
``recording_keys_values`` captures them during one full forward (``TokenCache``); then
``vit_block_prompts`` / ``bert_layer_prompts`` run one timm ``Block`` / HF ``BertLayer`` on
the K prompt tokens only, with the same arithmetic as the layer's own forward, under the
prompt rows of ``mmcore.prompts.read_only_mask`` (``prompt_mask``); their attention
(``PromptAttention``) differentiates only what trains, never the cache, and
``FrozenLinears`` keeps the bf16 copy of the frozen weights that autocast would remake at
every call, prepacked for oneDNN on a CPU (``PackedLinear``). The encoders' own
``forward_recording`` and ``forward_cached`` (``mmcore.encoders``) put these together;
``mmcore.prompt_cache`` keeps the caches of a whole split.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

from mmcore.prompts import read_only_mask
from mmcore.row_products import mix_rows, times_rows_t
from mmcore.runtime import has_fast_bf16


class CachedLayer(NamedTuple):
    """What one layer's prompt attention reads of a ``TokenCache``."""

    keys: Tensor  # (B, H, length + room, Dh) the batch's own block, or (N, H, L0, Dh) the split's
    values: Tensor  # the same for the values
    rows: Tensor | None  # (B,) the batch's samples in the split's blocks; None: its own blocks
    length: int  # the cached tokens each sample has (the rest is room, or other samples' length)


def reads_in_place(block: Tensor) -> bool:
    """Whether a step reads a block's rows where they lie (``mmcore.row_products``): float32 on
    a CPU. Elsewhere the batched products of a gathered copy are faster (bf16 on CPUs with
    bf16 units, GPUs)."""
    return block.device.type == "cpu" and block.dtype == torch.float32 and block.is_contiguous()


@dataclass
class TokenCache:
    """What a frozen encoder's original tokens give every layer: their keys and values.

    No original token attends to a prompt, so with frozen weights these never depend on
    the prompts: cached once per sample, they let ``forward_cached`` run only the K prompt
    tokens through the layers and still give exactly the outputs of the full forward.
    Keys and values are split into heads, one contiguous (B, H, L, Dh) block per layer.

    A training step takes its batch with ``batch``, in one of two forms:

    - **In place** (``rows`` set; float32 on a CPU, ``reads_in_place``): the blocks stay the
      whole split's and ``rows`` says which samples the batch is; the attention reads them
      where they lie (``mmcore.row_products``), with no copy at all.
    - **Gathered** (``rows`` None; ``select``): the batch's rows copied into fresh blocks that
      keep ``room`` free rows after the L cached ones. The prompts' own keys and values are
      written there, so that one batched product covers all L + K keys. One block per layer,
      not one for all layers: blocks of a layer's size can be reused by the C allocator from
      step to step (``CachedCollator`` has it keep them: ``mmcore.runtime.keep_freed_memory``),
      where a single (layers, B, ...) block was mapped fresh from the system each time (at
      224 px its page faults took 92 ms a batch of 32, half a cached training step).

    An in-place batch is gathered where it must leave the process or the CPU (``to``,
    pickling for a DataLoader worker).
    """

    keys: tuple[Tensor, ...]  # per layer (N, H, L + room, Dh): the L original tokens' keys
    values: tuple[Tensor, ...]  # per layer (N, H, L + room, Dh)
    padding: Tensor  # (B, L) bool, True = a real token
    embedding: Tensor  # (B, D) the encoder's embedding (unchanged by prompts)
    room: int = 0  # free rows after the L cached ones in every block (gathered)
    rows: Tensor | None = None  # (B,) the batch's samples in the blocks (in place)

    @classmethod
    def from_layers(cls, keys: list[Tensor], values: list[Tensor], heads: int, padding: Tensor,
                    embedding: Tensor) -> "TokenCache":
        """The cache of per-layer (B, L, D) keys and values, as a layer's projections give them."""
        def split(per_layer: list[Tensor]) -> tuple[Tensor, ...]:  # -> (B, H, L, Dh) each
            return tuple(t.unflatten(-1, (heads, -1)).transpose(1, 2).contiguous()
                         for t in per_layer)
        return cls(split(keys), split(values), padding, embedding)

    def _trimmed(self, rows: Tensor) -> tuple[Tensor, int]:
        """The padding of ``rows``, trimmed to their longest real sequence, and that length."""
        padding = self.padding[rows]
        length = int(padding.any(0).nonzero().max()) + 1 if padding.any() else 1
        return padding[:, :length], length

    def _source(self, rows: Tensor) -> Tensor:
        """Positions of this cache's ``rows`` in its blocks."""
        return rows if self.rows is None else self.rows[rows]

    def select(self, rows: Tensor, room: int = 0) -> "TokenCache":
        """Rows of the cache, copied and trimmed to the longest real sequence among them, with
        ``room`` free rows after it in every block (for ``forward_cached`` with K <= room).

        ``index_select`` copies whole rows, several times faster than advanced indexing;
        written into the leading rows of a fresh block, it leaves every layer's block
        contiguous, which the batched products read twice as fast as a strided view.
        """
        padding, length = self._trimmed(rows)
        source = self._source(rows)

        def gathered(block: Tensor) -> Tensor:
            _, heads, _, dim = block.shape
            out = block.new_empty(len(rows), heads, length + room, dim)
            torch.index_select(block[:, :, :length], 0, source, out=out[:, :, :length])
            return out

        return TokenCache(tuple(map(gathered, self.keys)), tuple(map(gathered, self.values)),
                          padding, self.embedding[rows], room)

    def batch(self, rows: Tensor, room: int = 0) -> "TokenCache":
        """Rows of the cache as a training step reads them: in place where ``reads_in_place``
        (no copy: only their padding and embeddings are taken), else ``select``."""
        if not reads_in_place(self.keys[0]):
            return self.select(rows, room)
        padding, _ = self._trimmed(rows)
        return TokenCache(self.keys, self.values, padding, self.embedding[rows], room,
                          self._source(rows))

    def gathered(self) -> "TokenCache":
        """This cache with blocks of its own: itself, or an in-place batch's rows copied."""
        if self.rows is None:
            return self
        return self.select(torch.arange(len(self), device=self.padding.device), self.room)

    def layer(self, index: int) -> CachedLayer:
        return CachedLayer(self.keys[index], self.values[index], self.rows,
                           self.padding.shape[1])

    def with_room(self, room: int) -> "TokenCache":
        """This cache with exactly ``room`` free rows: itself, a view of fewer, or ``batch`` of
        all its rows (a copy, or in place where ``reads_in_place``: an in-place batch only
        records ``room``, as the prompts' keys and values never enter its blocks)."""
        if self.room == room:
            return self
        if self.rows is not None:
            return replace(self, room=room)
        if self.room > room:
            end = self.padding.shape[1] + room
            return TokenCache(tuple(t[:, :, :end] for t in self.keys),
                              tuple(t[:, :, :end] for t in self.values), self.padding,
                              self.embedding, room)
        return self.batch(torch.arange(len(self), device=self.padding.device), room)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TokenCache":
        if self.rows is not None and torch.device(device) != self.padding.device:
            return self.gathered().to(device, non_blocking)

        def moved(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)
        return TokenCache(tuple(map(moved, self.keys)), tuple(map(moved, self.values)),
                          moved(self.padding), moved(self.embedding), self.room,
                          self.rows if self.rows is None else moved(self.rows))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a DataLoader worker's batch), an in-place batch sends its rows, not the
        split."""
        return dict(vars(self.gathered()))

    def nbytes(self) -> int:
        """The bytes of its samples' keys, values, padding and embeddings (of an in-place
        batch: those of its rows in the split's blocks)."""
        blocks = self.keys + self.values
        held = (sum(t.nbytes for t in blocks) if self.rows is None
                else len(self) * sum(t[0, :, :self.padding.shape[1]].nbytes for t in blocks))
        return held + self.padding.nbytes + self.embedding.nbytes

    def __len__(self) -> int:
        return self.padding.shape[0]


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


def packs_linears(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether frozen linear layers run prepacked here: bf16 on a CPU oneDNN computes in."""
    return device.type == "cpu" and dtype == torch.bfloat16 and has_fast_bf16(device)


class PackedLinear(torch.autograd.Function):
    """x W^T + b for a frozen W held in oneDNN's own blocked layout, and dx = dy W likewise.

    A plain bf16 ``F.linear`` reorders its weight into that layout at every call; with the
    small products of the prompts alone (K rows a sample) that reorder is a large part of
    each product. Prepacked once, a cached step's linear products at 224 px took 33 ms
    against 41 (39 against 42 with this Function's own overhead) on the AMX host measured.
    The weight is frozen: only the input's gradient is computed, from a prepacked W^T.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, packed: Tensor, packed_t: Tensor,
                bias: Tensor | None) -> Tensor:
        ctx.packed_t = packed_t
        return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, bias, "none",
                                                  [], "")

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        d_x = torch.ops.mkldnn._linear_pointwise(d_out.contiguous(), ctx.packed_t, None,
                                                 "none", [], "")
        return d_x, None, None, None


def _run_packed(copies: tuple[Tensor, ...], x: Tensor) -> Tensor:
    return PackedLinear.apply(x, *copies)


class FrozenLinears:
    """Low-precision copies of the frozen linear layers, kept across steps.

    Autocast keeps its casts only of weights that require grad, so a frozen encoder's linear
    weights are cast to bf16 again at every call: a tenth of a cached training step, for the
    same numbers each time. While ``applied``, each linear layer whose weight and bias are
    frozen runs on the copy autocast would have made; on a CPU in bf16 that copy is also
    prepacked for oneDNN (``PackedLinear``). A copy is remade when its weight changes, in
    place (its version moves) or by a new storage (``module.to(device)``).
    """

    def __init__(self) -> None:
        self._copies: dict[tuple[int, torch.dtype, bool], tuple[tuple, tuple[Tensor, ...]]] = {}

    def _copy(self, linear: nn.Linear, dtype: torch.dtype, packed: bool) -> tuple[Tensor, ...]:
        params = (linear.weight, linear.bias)
        key = (id(linear), dtype, packed)
        state = tuple((p, p._version, p.data_ptr()) for p in params if p is not None)
        entry = self._copies.get(key)
        if entry is None or any(a[0] is not b[0] or a[1:] != b[1:]
                                for a, b in zip(entry[0], state)):
            weight = linear.weight.detach().to(dtype)
            bias = None if linear.bias is None else linear.bias.detach().to(dtype)
            if packed:
                reorder = torch.ops.mkldnn._reorder_linear_weight
                copies = (reorder(weight, None), reorder(weight.t().contiguous(), None), bias)
            else:
                copies = (nn.Parameter(weight, requires_grad=False),
                          None if bias is None else nn.Parameter(bias, requires_grad=False))
            entry = (state, copies)
            self._copies[key] = entry
        return entry[1]

    @contextlib.contextmanager
    def applied(self, module: nn.Module, dtype: torch.dtype) -> Iterator[None]:
        """``module``'s frozen linear layers run on ``dtype`` copies; float32 changes nothing."""
        frozen = [] if dtype == torch.float32 else [
            linear for linear in module.modules() if isinstance(linear, nn.Linear)
            and not any(p.requires_grad for p in linear.parameters())]
        packed = bool(frozen) and packs_linears(frozen[0].weight.device, dtype)
        swapped = []  # (layer, name, its own parameter) while the copy stands in
        for linear in frozen:
            copies = self._copy(linear, dtype, packed)
            if packed:
                linear.forward = functools.partial(_run_packed, copies)
                continue
            for name, copy in zip(("weight", "bias"), copies):
                if copy is not None:
                    swapped.append((linear, name, getattr(linear, name)))
                    setattr(linear, name, copy)
        try:
            yield
        finally:
            for linear in frozen if packed else ():
                del linear.forward
            for linear, name, param in swapped:
                setattr(linear, name, param)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype the full forward's token stream has here: autocast's, else float32."""
    kind = device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32


def _times_block_t(block: Tensor, x: Tensor) -> Tensor:
    """x @ block^T, (B, H, K, rows of the block), in the operand order its kernel reads fastest.

    In bf16, as (block @ x^T)^T: the same numbers, but oneDNN's batched product then reads the
    large block as its left operand as it lies, instead of repacking it as the right one at
    every call: 2x faster for K = 6 queries over 257 cached tokens on an AMX host (0.31 vs
    0.66 ms a layer). In float32, MKL's product reads it faster as written: 2.8 against 5.1 ms
    a layer at 224 px on an AVX2 EPYC, a cached training step 1.09x faster.
    """
    if block.dtype == torch.bfloat16:
        return (block @ x.transpose(-2, -1).contiguous()).transpose(-2, -1)
    return x @ block.transpose(-2, -1)


def _times_keys_t(x: Tensor, block: Tensor, own: Tensor, cached: CachedLayer) -> Tensor:
    """x @ [cached rows; own rows]^T: (B, H, K, length + K). A gathered block already holds
    ``own`` in its room."""
    if cached.rows is None:
        return _times_block_t(block, x)
    return times_rows_t(x.to(block.dtype), block, cached.rows, cached.length,
                        own.to(block.dtype))


def _mix(weights: Tensor, block: Tensor, own: Tensor, cached: CachedLayer) -> Tensor:
    """weights @ [cached rows; own rows]: (B, H, K, Dh)."""
    if cached.rows is None:
        return weights @ block
    return mix_rows(weights.to(block.dtype), block, cached.rows, cached.length,
                    own.to(block.dtype))


class PromptAttention(torch.autograd.Function):
    """softmax(q [Kc; k]^T * scale) [Vc; v] for the prompts' queries, keys and values.

    Written out, not SDPA: with K queries against L + K keys the products are small, and
    SDPA's fused CPU backward costs 10x the rest of the step. The cached keys and values Kc,
    Vc are read in place from the split's blocks (``CachedLayer.rows`` set,
    ``mmcore.row_products``), or from the batch's gathered blocks, into whose free rows after
    the L cached ones (``TokenCache.room``) the prompts' keys and values are written, so that
    each product spans all L + K keys in one call, with no concatenated copy of the cache.
    Written as a Function because autograd would differentiate the whole blocks, L + K rows a
    head, only to drop the L cached ones: here the backward computes the gradients of q, k and
    v alone, from the K prompt columns of the scores.

    Inputs are (B, H, K, Dh) for the prompts' q, k, v and a ``CachedLayer``; ``mask`` is
    (B, 1, K, L + K) bool or None; returns (B, H, K, Dh). A gathered block serves one forward
    until its backward: a second forward writes its rows again, and autograd then refuses the
    first one's backward.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, cached: CachedLayer,
                mask: Tensor | None, scale: float, dropout: float) -> Tensor:
        num_prompts = q.shape[2]
        keys, values = cached.keys, cached.values
        if cached.rows is None:  # the batch's own blocks: the prompts' rows go in their room
            keys, values = keys.to(k.dtype), values.to(v.dtype)
            keys[:, :, -num_prompts:].copy_(k)
            values[:, :, -num_prompts:].copy_(v)
        q = q * scale  # scaled before the products, as timm's attention does
        scores = _times_keys_t(q, keys, k, cached)  # (B, H, K, L + K)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        # in the scores' dtype: the CPU kernels accumulate bf16 in float32 and round once,
        # the same numbers as a float32 softmax rounded to bf16, without two conversions
        weights = scores.softmax(-1)
        keep = None
        if dropout > 0:  # inverted dropout on the weights, its mask kept for the backward
            keep = torch.empty_like(weights).bernoulli_(1 - dropout).div_(1 - dropout)
        ctx.save_for_backward(q, k, v, keys, values, weights, keep)
        ctx.scale, ctx.rows, ctx.length = scale, cached.rows, cached.length
        out = _mix(weights if keep is None else weights * keep, values, v, cached)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx: Any, d_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, keys, values, weights, keep = ctx.saved_tensors
        cached = CachedLayer(keys, values, ctx.rows, ctx.length)
        num_prompts = q.shape[2]
        d_weights = _times_keys_t(d_out, values, v, cached)  # (B, H, K, L + K)
        kept = weights[..., -num_prompts:]  # the weights of the prompts' values
        if keep is not None:
            d_weights, kept = d_weights * keep, kept * keep[..., -num_prompts:]
        # softmax's own backward kernel (float32 inside): one pass for the formula's six
        d_scores = torch._softmax_backward_data(d_weights, weights, -1, weights.dtype)
        d_q = _mix(d_scores, keys, k, cached) * ctx.scale
        d_k = d_scores[..., -num_prompts:].transpose(-2, -1) @ q.to(d_scores.dtype)
        d_v = kept.transpose(-2, -1) @ d_out.to(kept.dtype)
        return d_q.to(q.dtype), d_k.to(k.dtype), d_v.to(v.dtype), None, None, None, None


def _attend(q: Tensor, k: Tensor, v: Tensor, cached: CachedLayer, mask: Tensor | None,
            heads: int, dropout: float = 0.0, scale: float | None = None) -> Tensor:
    """Multi-head attention of the prompts' queries over [cached originals; prompts].

    The prompts' projections are (B, K, D); returns the (B, K, D) attention output before the
    output projection.
    """
    def split(t: Tensor) -> Tensor:  # (B, K, D) -> (B, H, K, D / H)
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    q = split(q)
    out = PromptAttention.apply(q, split(k), split(v), cached, mask,
                                scale or q.shape[-1] ** -0.5, dropout)
    return out.transpose(1, 2).flatten(2)  # (B, K, D)


def vit_block_prompts(block: nn.Module, x: Tensor, cached: CachedLayer,
                       mask: Tensor | None) -> Tensor:
    """One timm ``Block`` on the prompt tokens only (the same arithmetic as ``Block.forward``),
    over the layer's cached keys and values."""
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(x)).chunk(3, dim=-1)  # (B, K, D) each
    heads = attn.num_heads
    q = attn.q_norm(q.unflatten(-1, (heads, -1))).flatten(2)
    k = attn.k_norm(k.unflatten(-1, (heads, -1))).flatten(2)
    if normalizes_keys(block):  # the cached keys too, per head as timm's (a gathered block)
        cached = cached._replace(keys=attn.k_norm(cached.keys.to(k.dtype)))
    out = _attend(q, k, v, cached, mask, heads, attn.attn_drop.p if attn.training else 0.0)
    x = x + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(attn.norm(out)))))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def normalizes_keys(block: nn.Module) -> bool:
    """Whether a timm ``Block`` normalises its keys (``qk_norm``): its cached keys must then be
    normalised at every step, so a batch of them is gathered, never read in place."""
    return not isinstance(block.attn.k_norm, nn.Identity)


def bert_layer_prompts(layer: nn.Module, x: Tensor, cached: CachedLayer,
                        mask: Tensor | None) -> Tensor:
    """One HF ``BertLayer`` on the prompt tokens only (post-norm, as ``BertLayer.forward``),
    over the layer's cached keys and values."""
    sa = layer.attention.self
    out = _attend(sa.query(x), sa.key(x), sa.value(x), cached, mask, sa.num_attention_heads,
                  sa.dropout.p if sa.training else 0.0, sa.scaling)
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
    "CachedLayer",
    "FrozenLinears",
    "PackedLinear",
    "PromptAttention",
    "TokenCache",
    "bert_layer_prompts",
    "compute_dtype",
    "normalizes_keys",
    "packs_linears",
    "prompt_mask",
    "reads_in_place",
    "recording_keys_values",
    "vit_block_prompts",
]
