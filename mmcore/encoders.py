"""Unimodal encoders with read-only prompts: a timm ViT for images, a HF BERT for text.

Each wrapper runs its backbone's own modules (no copied transformer code) on the original
tokens plus K appended prompts, under the mask of ``mmcore.prompts.read_only_mask``, and
returns an ``EncoderOutput``: the embedding the modality's head uses and the prompts'
outputs the feature predictor reads. With frozen weights, ``forward_recording`` also
returns the original tokens' keys and values, and ``forward_cached`` runs the prompts alone
against them (``mmcore.cached_forward``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import timm
import torch
import torch.nn as nn
from timm.data import create_transform, resolve_data_config
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mmcore.cached_forward import (FrozenLinears, TokenCache, bert_layer_prompts,
                                   compute_dtype, normalizes_keys, prompt_mask,
                                   recording_keys_values, vit_block_prompts)
from mmcore.choice_lists import TextPooling, check_choice
from mmcore.config import ModelConfig
from mmcore.prompts import ReadOnlyPrompts, read_only_mask
from mmcore.weights import (PRESETS, EncoderSpec, load_image_backbone, load_text_backbone,
                            require_hub, text_source)


@dataclass
class EncoderOutput:
    """What an encoder hands to the heads and the feature predictor."""

    embedding: Tensor  # (B, D): ViT final-norm CLS; text: preset pooling over real tokens
    prompts: Tensor  # (B, K, D): the read-only prompts' final outputs


class ImageEncoder(nn.Module):
    """A timm ``VisionTransformer`` with K read-only prompts appended after its position embedding.

    The embedding is the backbone's own pooling (``global_pool='token'``: the final-norm CLS).
    Setting ``originals_see_prompts = True`` drops the read-only rule in ``forward`` (a
    counterfactual for demonstrations; the token cache assumes the rule).
    """

    originals_see_prompts: bool = False

    def __init__(self, backbone: VisionTransformer, prompt_length: int = 6,
                 prompts_see_each_other: bool = True, prompt_init: str = "cls") -> None:
        super().__init__()
        if not isinstance(backbone, VisionTransformer) or backbone.cls_token is None:
            raise TypeError(f"ImageEncoder needs a timm VisionTransformer with a CLS token, "
                            f"got {type(backbone).__name__}")
        if backbone.attn_pool is not None or backbone.global_pool != "token":
            raise ValueError(f"ImageEncoder needs global_pool='token', "
                             f"got {backbone.global_pool!r}")
        self.backbone = backbone
        self.frozen_linears = FrozenLinears()  # for forward_cached
        self.prompts_see_each_other = prompts_see_each_other
        self.embed_dim: int = backbone.embed_dim
        cls_input = backbone.cls_token.reshape(-1)  # (D,)
        if backbone.pos_embed is not None and not backbone.no_embed_class:
            cls_input = cls_input + backbone.pos_embed[0, 0]  # CLS as the first block sees it
        self.prompts = ReadOnlyPrompts(prompt_length, self.embed_dim, init=cls_input,
                                       independent=prompt_init == "independent")

    @property
    def prompt_length(self) -> int:
        return self.prompts.num_prompts

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        """Encode (B, 3, H, W) images at the backbone's input size."""
        vit = self.backbone
        x = vit.patch_embed(pixel_values)
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))  # (B, L, D), L = prefix + patches
        num_tokens = x.shape[1]
        prompts = self.prompts(x.shape[0]).to(x.dtype)
        x = torch.cat([x, prompts], dim=1)  # (B, L + K, D)
        mask = read_only_mask(num_tokens, self.prompt_length, self.prompts_see_each_other,
                              device=x.device,
                              originals_see_prompts=self.originals_see_prompts)  # (L + K, L + K)
        for block in vit.blocks:
            x = block(x, attn_mask=mask)
        x = vit.norm(x)
        embedding = vit.forward_head(x[:, :num_tokens], pre_logits=True)  # (B, D)
        return EncoderOutput(embedding, x[:, num_tokens:])

    def forward_recording(self, pixel_values: Tensor) -> tuple[EncoderOutput, TokenCache]:
        """``forward``, plus the ``TokenCache`` of the images (for frozen weights)."""
        dim = self.backbone.blocks[0].attn.attn_dim
        projections = [(block.attn.qkv, lambda out: (out[..., dim:2 * dim], out[..., 2 * dim:]))
                       for block in self.backbone.blocks]
        length = self.backbone.patch_embed.num_patches + self.backbone.num_prefix_tokens
        with recording_keys_values(projections, length) as recorded:
            out = self.forward(pixel_values)
        padding = torch.ones(len(pixel_values), length, dtype=torch.bool, device=out.embedding.device)
        return out, TokenCache.from_layers([k for k, _ in recorded], [v for _, v in recorded],
                                           self.backbone.blocks[0].attn.num_heads, padding,
                                           out.embedding)

    def forward_cached(self, cache: TokenCache) -> EncoderOutput:
        """The prompts alone through every layer, attending to the cached original tokens
        (read in place, or in a batch's blocks with room for the prompts, as ``CachedCollator``
        takes them: ``TokenCache.batch``; a gathered cache without that room is copied once
        into one that has it)."""
        cache = cache.with_room(self.prompt_length)
        if any(map(normalizes_keys, self.backbone.blocks)):
            cache = cache.gathered()
        dtype = compute_dtype(cache.embedding.device)
        x = self.prompts(len(cache)).to(dtype)  # (B, K, D)
        mask = prompt_mask(cache.padding, self.prompt_length, self.prompts_see_each_other)
        with self.frozen_linears.applied(self.backbone, dtype):
            for i, block in enumerate(self.backbone.blocks):
                x = vit_block_prompts(block, x, cache.layer(i), mask)
        return EncoderOutput(cache.embedding, self.backbone.norm(x))


def pool_text(tokens: Tensor, attention_mask: Tensor, pooling: TextPooling) -> Tensor:
    """A text embedding from token outputs: the first token ("cls") or the mean over real tokens.

    Args:
        tokens: (B, L, D) outputs of the original tokens (no prompts).
        attention_mask: (B, L), 1 / True for real tokens.
        pooling: "cls" or "mean" (sentence-transformers).

    Returns:
        (B, D).
    """
    if pooling == "cls":
        return tokens[:, 0]
    weights = attention_mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """A HF BERT-like model with K read-only prompts appended after its embedding layer.

    The backbone's ``embeddings`` module adds word, position and type embeddings (and its
    LayerNorm) for the real tokens only; the prompts join after that, so they carry no
    position embedding; the ``encoder`` layers then run with the (B, 1, L+K, L+K) mask as
    an additive bias, which every attention implementation applies. Setting
    ``originals_see_prompts = True`` drops the read-only rule in ``forward`` (a
    counterfactual for demonstrations; the token cache assumes the rule).
    """

    originals_see_prompts: bool = False

    def __init__(self, backbone: PreTrainedModel, pooling: TextPooling = "cls",
                 prompt_length: int = 6, prompts_see_each_other: bool = True,
                 prompt_init_token_id: int = 101, prompt_init: str = "cls") -> None:
        """
        Args:
            backbone: a BERT-like model with ``embeddings`` and ``encoder`` modules, loaded
                with ``attn_implementation="sdpa"``.
            pooling: "mean" over real tokens (sentence-transformers) or "cls".
            prompt_length: K >= 1.
            prompts_see_each_other: whether prompts attend to each other.
            prompt_init_token_id: the token whose input embedding initialises the prompts
                (the vocabulary's [CLS]).
        """
        super().__init__()
        for part in ("embeddings", "encoder"):
            if not isinstance(getattr(backbone, part, None), nn.Module):
                raise TypeError(f"TextEncoder needs a BERT-like model with .{part}, "
                                f"got {type(backbone).__name__}")
        attn = backbone.config._attn_implementation
        if attn != "sdpa":
            raise ValueError(f"TextEncoder needs the backbone loaded with "
                             f"attn_implementation='sdpa' (got {attn!r})")
        check_choice("text pooling", pooling, TextPooling)
        self.backbone = backbone
        self.frozen_linears = FrozenLinears()  # for forward_cached
        self.pooling = pooling
        self.prompts_see_each_other = prompts_see_each_other
        self.embed_dim: int = backbone.config.hidden_size
        with torch.no_grad():
            was_training = backbone.training
            cls_input = backbone.embeddings.eval()(
                input_ids=torch.tensor([[prompt_init_token_id]])).reshape(-1)  # (D,)
            backbone.embeddings.train(was_training)
        self.prompts = ReadOnlyPrompts(prompt_length, self.embed_dim, init=cls_input,
                                       independent=prompt_init == "independent")

    @property
    def prompt_length(self) -> int:
        return self.prompts.num_prompts

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> EncoderOutput:
        """Encode (B, L) token ids; ``attention_mask`` (B, L) is 1 for real tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        real = attention_mask.bool()  # (B, L)
        x = self.backbone.embeddings(input_ids=input_ids)  # (B, L, D)
        num_tokens = x.shape[1]
        x = torch.cat([x, self.prompts(x.shape[0]).to(x.dtype)], dim=1)  # (B, L + K, D)
        mask = read_only_mask(num_tokens, self.prompt_length, self.prompts_see_each_other,
                              key_padding_mask=real,
                              originals_see_prompts=self.originals_see_prompts)  # (B, 1, L+K, L+K)
        # additive, so that every attention implementation applies it (eager attention adds
        # a boolean mask as 0 / 1 instead of masking, which would undo read-only)
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(
            ~mask, torch.finfo(x.dtype).min)
        x = self.backbone.encoder(x, attention_mask=bias).last_hidden_state  # (B, L + K, D)
        embedding = pool_text(x[:, :num_tokens], real, self.pooling)  # (B, D)
        return EncoderOutput(embedding, x[:, num_tokens:])

    def forward_recording(self, input_ids: Tensor, attention_mask: Tensor
                          ) -> tuple[EncoderOutput, TokenCache]:
        """``forward``, plus the ``TokenCache`` of the texts (for frozen weights)."""
        layers = self.backbone.encoder.layer
        projections = [(module, lambda out: (out,)) for layer in layers
                       for module in (layer.attention.self.key, layer.attention.self.value)]
        with recording_keys_values(projections, input_ids.shape[1]) as recorded:
            out = self.forward(input_ids, attention_mask)
        return out, TokenCache.from_layers([k for k, in recorded[0::2]],
                                           [v for v, in recorded[1::2]],
                                           layers[0].attention.self.num_attention_heads,
                                           attention_mask.bool(), out.embedding)

    def forward_cached(self, cache: TokenCache) -> EncoderOutput:
        """The prompts alone through every layer, attending to the cached original tokens
        (as ``ImageEncoder.forward_cached``)."""
        cache = cache.with_room(self.prompt_length)
        dtype = compute_dtype(cache.embedding.device)
        x = self.prompts(len(cache)).to(dtype)  # (B, K, D)
        mask = prompt_mask(cache.padding, self.prompt_length, self.prompts_see_each_other)
        with self.frozen_linears.applied(self.backbone, dtype):
            for i, layer in enumerate(self.backbone.encoder.layer):
                x = bert_layer_prompts(layer, x, cache.layer(i), mask)
        return EncoderOutput(cache.embedding, x)


# --- builders the model and the data pipeline call ----------------------------------------


def encoder_spec(model_cfg: ModelConfig) -> EncoderSpec:
    """The preset's ``EncoderSpec`` (see ``mmcore.weights.PRESETS``)."""
    return PRESETS[model_cfg.preset]


def build_image_encoder(model_cfg: ModelConfig) -> ImageEncoder:
    """The preset's (or ``model.image_encoder``'s) ViT wrapped with read-only prompts."""
    return ImageEncoder(load_image_backbone(model_cfg), model_cfg.prompt_length,
                        model_cfg.prompts_see_each_other, model_cfg.prompt_init)


def build_text_encoder(model_cfg: ModelConfig) -> TextEncoder:
    """The preset's (or ``model.text_encoder``'s) BERT wrapped with read-only prompts."""
    spec = encoder_spec(model_cfg)
    cls_id = load_tokenizer(model_cfg).cls_token_id if model_cfg.pretrained else None
    return TextEncoder(load_text_backbone(model_cfg), spec.text_pooling, model_cfg.prompt_length,
                       model_cfg.prompts_see_each_other,
                       prompt_init_token_id=cls_id if cls_id is not None else spec.cls_token_id,
                       prompt_init=model_cfg.prompt_init)


def load_tokenizer(model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The text encoder's tokenizer (local folder for the offline preset or a user path)."""
    source, local = text_source(model_cfg)
    if not local:
        require_hub(f"Hugging Face tokenizer '{source}'", "model.text_encoder")
    return AutoTokenizer.from_pretrained(source, local_files_only=local)


def image_transform(model_cfg: ModelConfig, train: bool) -> Callable:
    """PIL image -> (3, S, S) tensor with the backbone's normalisation at ``model.image_size``.

    Training adds timm's light augmentation (random resized crop, horizontal flip); no
    RandAugment or random erasing, which would fight the alignment with the text.
    """
    spec = encoder_spec(model_cfg)
    arch = model_cfg.image_encoder if _is_timm_name(model_cfg.image_encoder) else spec.image_model
    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    if pretrained_cfg is None:
        raise ValueError(f"model.image_encoder={arch!r} has no timm preprocessing config")
    size = model_cfg.image_size
    data_cfg = resolve_data_config({"input_size": (3, size, size)},
                                   pretrained_cfg=pretrained_cfg.to_dict())
    if train:
        return create_transform(**data_cfg, is_training=True, scale=(0.5, 1.0), hflip=0.5,
                                auto_augment=None, re_prob=0.0, color_jitter=None)
    return create_transform(**data_cfg, is_training=False)


def _is_timm_name(name: str) -> bool:
    return bool(name) and timm.is_model(name.split(".")[0])


__all__ = [
    "EncoderOutput",
    "ImageEncoder",
    "PRESETS",
    "TextEncoder",
    "build_image_encoder",
    "build_text_encoder",
    "encoder_spec",
    "image_transform",
    "load_tokenizer",
]
