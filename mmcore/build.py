"""From a ``Config`` to a ``FusionModel`` and its ``Collator``; the model's parameter counts.

``build_model`` is the one place where the configuration meets the pretrained weights
(``mmcore.encoders``, ``mmcore.weights``); ``FusionModel`` itself takes built encoders, so
tests and notebooks can hand it small or instrumented ones.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from mmcore.choice_lists import TaskType
from mmcore.config import Config, ModelConfig
from mmcore.data.base import MultimodalDataset
from mmcore.data.collate import Collator
from mmcore.encoders import (build_image_encoder, build_text_encoder, image_transform,
                             load_tokenizer)
from mmcore.missing import MissingTable
from mmcore.model import FusionModel
from mmcore.peft import apply_peft
from mmcore.prompts import prompt_parameters


def build_model(cfg: Config, num_classes: int, task_type: TaskType) -> FusionModel:
    """Build encoders from ``cfg.model``, apply its PEFT mode, and wrap them in a FusionModel.

    PEFT decides which encoder weights train; the read-only prompts, predictors and heads
    always train.

    Args:
        cfg: the full configuration (``model`` and ``loss`` sections are used).
        num_classes: number of labels (2 for binary tasks).
        task_type: "multiclass", "multilabel" or "binary".

    Returns:
        The model on the CPU, in training mode; its encoders compiled if ``run.compile``.
    """
    model_cfg = cfg.model
    image = text = None
    if model_cfg.modalities in ("both", "image"):
        image = build_image_encoder(model_cfg)
    if model_cfg.modalities in ("both", "text"):
        text = build_text_encoder(model_cfg)
    for encoder in (image, text):
        if encoder is not None:  # leaves the read-only prompts trainable
            apply_peft(encoder, model_cfg.peft, model_cfg.lora_rank)
    dummy_text = None
    if text is not None and (model_cfg.pretrained or model_cfg.fill == "dummy"):
        dummy_text = _empty_text(model_cfg)  # random-weight builds may have no tokenizer at hand
    model = FusionModel(image, text, num_classes, task_type, model_cfg, cfg.loss, dummy_text)
    return compile_encoders(model) if cfg.run.compile else model


def build_collator(cfg: Config, dataset: MultimodalDataset, train: bool,
                   missing_table: MissingTable | None = None) -> Collator:
    """The ``Collator`` for ``dataset`` under ``cfg``: its encoders' tokenizer and image
    transform (augmented when ``train``), ``data.max_text_length`` and
    ``data.bad_sample_policy``, and optionally a missing table."""
    return Collator(load_tokenizer(cfg.model), image_transform(cfg.model, train=train),
                    cfg.data.max_text_length, dataset.num_classes, dataset.task_type,
                    missing_table=missing_table, bad_sample_policy=cfg.data.bad_sample_policy)


def compile_encoders(model: FusionModel) -> FusionModel:
    """``torch.compile`` each encoder in place (``run.compile``); returns ``model``.

    Only the encoders: they hold nearly all the compute, and their graphs are static apart
    from the batch size and the text length (marked dynamic after the first change, so one
    recompilation). ``FusionModel.encode`` selects rows by availability, which would break
    a whole-model graph. State-dict keys are unchanged (``Module.compile`` wraps the call,
    not the module), so checkpoints load into compiled and eager models alike.
    """
    for encoder in (model.image_encoder, model.text_encoder):
        if encoder is not None:
            encoder.compile()
    return model


def parameter_report(model: FusionModel) -> dict[str, tuple[int, int]]:
    """Trainable and total parameter counts per part of the model.

    Returns:
        ``{part: (trainable, total)}`` for image_encoder, text_encoder (both without their
        prompts), prompts, predictors, heads, and all.
    """
    groups: dict[str, list[nn.Parameter]] = {
        "image_encoder": [], "text_encoder": [], "prompts": [], "predictors": [], "heads": []}
    for name, encoder in (("image_encoder", model.image_encoder),
                          ("text_encoder", model.text_encoder)):
        if encoder is None:
            continue
        prompts = {id(p) for p in prompt_parameters(encoder)}
        for p in encoder.parameters():
            groups["prompts" if id(p) in prompts else name].append(p)
    groups["predictors"] = list(model.predictors.parameters())
    groups["heads"] = list(model.heads.parameters())
    groups["all"] = list(model.parameters())
    return {part: (sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps))
            for part, ps in groups.items()}


def _empty_text(model_cfg: ModelConfig) -> tuple[Tensor, Tensor]:
    """Token ids and mask of the empty string (MAP's dummy text), shape (1, L)."""
    tokens = load_tokenizer(model_cfg)("", return_tensors="pt")
    return tokens["input_ids"], tokens["attention_mask"]


__all__ = ["build_collator", "build_model", "compile_encoders", "parameter_report"]
