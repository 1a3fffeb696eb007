"""Which encoder parameters train: BitFit (the paper), frozen, LayerNorm, full, or LoRA.

``apply_peft`` sets ``requires_grad`` on an encoder (wrapper or bare backbone) in place.
Read-only prompts are never frozen: they are the method's new parameters, not the
pretrained encoder's.
"""
from __future__ import annotations

import torch.nn as nn

from mmcore.choice_lists import PeftMode, check_choice, choices
from mmcore.prompts import prompt_parameters

PEFT_MODES: tuple[str, ...] = choices(PeftMode)


def apply_peft(module: nn.Module, mode: PeftMode, lora_rank: int = 8) -> nn.Module:
    """Choose the trainable parameters of a pretrained encoder.

    Args:
        module: an encoder (``ImageEncoder`` / ``TextEncoder``) or its backbone.
        mode: "bitfit" (bias terms only), "frozen" (nothing), "layernorm" (LayerNorm
            weights and biases), "full" (everything), or "lora" (rank-``lora_rank``
            adapters on the attention projections via the ``peft`` library; the
            pretrained weights stay frozen).
        lora_rank: LoRA rank r (alpha = r, so the adapter's scale is 1).

    Returns:
        ``module`` itself (LoRA layers are injected in place).
    """
    check_choice("model.peft", mode, PeftMode)
    if mode == "lora":
        _inject_lora(module, lora_rank)
    layernorm_params = {id(p) for m in module.modules() if isinstance(m, nn.LayerNorm)
                        for p in m.parameters(recurse=False)}
    prompt_params = {id(p) for p in prompt_parameters(module)}
    for name, param in module.named_parameters():
        if id(param) in prompt_params:
            param.requires_grad_(True)
        elif mode == "bitfit":
            param.requires_grad_(name.endswith("bias"))
        elif mode == "layernorm":
            param.requires_grad_(id(param) in layernorm_params)
        elif mode == "lora":
            param.requires_grad_("lora_" in name)
        else:
            param.requires_grad_(mode == "full")
    return module


def attention_projections(module: nn.Module) -> list[str]:
    """Qualified names of the linear layers inside attention blocks (LoRA's targets).

    timm ViT: ``blocks.i.attn.qkv`` and ``.proj``; BERT: ``attention.self.{query,key,value}``
    and ``attention.output.dense``.
    """
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear)
            and any(part in ("attn", "attention") for part in name.split("."))]


def _inject_lora(module: nn.Module, rank: int) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = attention_projections(module)
    if not targets:
        raise ValueError(f"model.peft='lora': no attention projections found in "
                         f"{type(module).__name__}")
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none",
                        target_modules=targets)
    inject_adapter_in_model(config, module)


__all__ = ["PEFT_MODES", "PeftMode", "apply_peft", "attention_projections"]
