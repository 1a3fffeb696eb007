"""The two small trained parts on top of each encoder: the feature predictor and the head.

``FeaturePredictor`` maps one modality's K prompt outputs (or its embedding) to the other
modality's embedding; ``ClassifierHead`` turns one modality's embedding into logits.
``FusionModel`` (``mmcore.model``) holds two of each.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from mmcore.choice_lists import PromptPool, check_choice


class FeaturePredictor(nn.Module):
    """Map the available modality's prompt outputs (or its embedding) to the other's embedding.

    ``pool`` says how K prompt outputs become one input: their mean, a softmax attention
    with one learned score per token (``attention``: the predictor chooses which read-outs
    to trust, per sample), or their concatenation (``concat``: every read-out keeps its own
    weights, so ``num_prompts`` is fixed). An (N, D) embedding input is used as it is.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int, pool: PromptPool,
                 num_prompts: int = 1) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"model.predictor_layers={layers}; must be >= 1")
        check_choice("model.prompt_pool", pool, PromptPool)
        self.pool = pool
        self.score = nn.Linear(in_dim, 1) if pool == "attention" else None
        blocks: list[nn.Module] = []
        width = in_dim * num_prompts if pool == "concat" else in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
            width = hidden
        blocks.append(nn.Linear(width, out_dim))
        self.mlp = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """Predict a target embedding.

        Args:
            x: (N, K, D_in) prompt outputs, pooled as ``pool`` says, or (N, D_in) an embedding.

        Returns:
            (N, D_out) predicted embedding.
        """
        return self.mlp(self.pool_inputs(x))

    def pool_inputs(self, x: Tensor) -> Tensor:
        """What the first layer reads: (N, K, D_in) -> (N, D_in), or (N, K * D_in) for concat."""
        if x.dim() == 2:
            return x
        if self.pool == "concat":
            return x.flatten(1)
        if self.score is not None:
            return (self.score(x).softmax(dim=1) * x).sum(dim=1)
        return x.mean(dim=1)


class ClassifierHead(nn.Module):
    """Dropout + Linear on one modality's embedding; ``pre_logits`` returns the head's input."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)  # (N, D) or (N, C)


__all__ = ["ClassifierHead", "FeaturePredictor"]
