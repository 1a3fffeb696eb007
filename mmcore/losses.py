"""Losses: VICReg between a predicted and a true embedding, its simpler alternatives, the task loss.

``vicreg_loss`` follows facebookresearch/vicreg ``main_vicreg.py`` line by line, minus the
global ``args`` and the cross-process gather (a caller that wants a global batch gathers
before calling). Every alignment loss returns the same four terms so a notebook can plot
them whichever loss an ablation picked. All losses are computed in float32, also when the
model ran under bf16 autocast: the variance and covariance terms are sums of squares that
bf16's 8-bit mantissa would round away.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcore.choice_lists import Alignment, TaskType, choices
from mmcore.config import LossConfig


class VICRegTerms(NamedTuple):
    """A weighted total and its three unweighted parts (``inv``, ``var``, ``cov``)."""

    total: Tensor
    inv: Tensor
    var: Tensor
    cov: Tensor


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (as in the VICReg reference)."""
    n, m = x.shape
    assert n == m, f"off_diagonal needs a square matrix, got {tuple(x.shape)}"
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_loss(
    x: Tensor,
    y: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    y_trains: bool = True,
) -> VICRegTerms:
    """VICReg (Bardes et al., 2022) between two batches of embeddings.

    Args:
        x: (N, D) first branch (here: the predicted embedding).
        y: (N, D) second branch (here: the true embedding of the other modality).
        sim_coeff: weight of the invariance (mean squared error) term.
        std_coeff: weight of the variance (hinge on the per-dimension std) term.
        cov_coeff: weight of the covariance (off-diagonal decorrelation) term.
        y_trains: False leaves out y's halves of the variance and covariance terms, which
            are constants when y is a detached target: the gradient is the reference's, and
            the logged terms show only what trains.

    Returns:
        ``VICRegTerms(total, inv, var, cov)``; ``total`` is the weighted sum.
        Needs N >= 2 (the variance is unbiased).
    """
    _check_pair(x, y)
    if x.shape[0] < 2:
        raise ValueError(f"vicreg_loss needs at least 2 rows, got {x.shape[0]}")
    with _fp32(x):
        x, y = x.float(), y.float()
        n, d = x.shape

        inv = F.mse_loss(x, y)

        x = x - x.mean(dim=0)
        y = y - y.mean(dim=0)

        std_x = torch.sqrt(x.var(dim=0) + 0.0001)
        std_y = torch.sqrt(y.var(dim=0) + 0.0001)
        var = torch.mean(F.relu(1 - std_x)) / 2 + y_trains * torch.mean(F.relu(1 - std_y)) / 2

        cov_x = (x.T @ x) / (n - 1)  # (D, D)
        cov_y = (y.T @ y) / (n - 1)  # (D, D)
        cov = (off_diagonal(cov_x).pow(2).sum() / d
               + y_trains * off_diagonal(cov_y).pow(2).sum() / d)

    total = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return VICRegTerms(total, inv, var, cov)


def mse_alignment(x: Tensor, y: Tensor) -> VICRegTerms:
    """Plain mean squared error (the invariance term alone); ``var`` and ``cov`` are zero."""
    _check_pair(x, y)
    with _fp32(x):
        inv = F.mse_loss(x.float(), y.float())
    zero = inv.new_zeros(())
    return VICRegTerms(inv, inv, zero, zero)


def cosine_alignment(x: Tensor, y: Tensor) -> VICRegTerms:
    """Mean of ``1 - cos(x_i, y_i)``: aligns directions, ignores norms; ``var``/``cov`` are zero."""
    _check_pair(x, y)
    with _fp32(x):
        inv = (1 - F.cosine_similarity(x.float(), y.float(), dim=-1)).mean()
    zero = inv.new_zeros(())
    return VICRegTerms(inv, inv, zero, zero)


def scale_to_target(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Divide both branches by the target batch's mean per-dimension std (no gradient through it).

    VICReg's variance hinge asks every dimension for a std of at least 1, a scale its
    expander learns to produce. Here the target is a pretrained embedding with a scale of its
    own (MiniLM's mean-pooled dimensions spread about 0.3, DINOv2's about 1.4): unscaled, the
    hinge pulls the predicted text embedding to three times the spread of the real one, and
    the invariance term fights it. One scalar per batch restores the meaning of "1" without
    changing the direction of any embedding, and makes every alignment loss scale-free.
    """
    with _fp32(pred):
        scale = target.detach().float().std(dim=0).mean().clamp_min(1e-6)
        return pred.float() / scale, target.float() / scale


def alignment_loss(pred: Tensor, target: Tensor, loss_cfg: LossConfig) -> VICRegTerms:
    """The alignment loss ``loss_cfg.alignment`` names, between predicted and true embeddings.

    Args:
        pred: (N, D) predicted embeddings.
        target: (N, D) true embeddings (detach it beforehand for a stop-gradient: VICReg
            then leaves out the target's constant variance and covariance halves).
        loss_cfg: ``alignment`` picks the loss; the VICReg coefficients come from here too.

    Returns:
        ``VICRegTerms(total, inv, var, cov)``, unweighted by ``alpha``.
    """
    if loss_cfg.scale_to_target:
        pred, target = scale_to_target(pred, target)
    if loss_cfg.alignment == "vicreg":
        return vicreg_loss(pred, target, loss_cfg.sim_coeff, loss_cfg.std_coeff,
                           loss_cfg.cov_coeff, y_trains=target.requires_grad)
    if loss_cfg.alignment == "mse":
        return mse_alignment(pred, target)
    if loss_cfg.alignment == "cosine":
        return cosine_alignment(pred, target)
    raise ValueError(f"loss.alignment={loss_cfg.alignment!r}; "
                     f"valid: {', '.join(choices(Alignment))}")


def task_loss(logits: Tensor, labels: Tensor, task_type: TaskType) -> Tensor:
    """The supervised loss on fused logits, in float32.

    Binary tasks use two logits and cross-entropy (labels (B,) long 0/1), so all
    single-label tasks share one head shape; a binary score for AUROC is
    ``softmax(logits)[:, 1]``.

    Args:
        logits: (B, C) fused logits (C = 2 for binary).
        labels: (B,) long class indices (multiclass, binary) or (B, C) float 0/1 (multilabel).
        task_type: "multiclass", "binary" or "multilabel".

    Returns:
        The mean loss over the batch, a float32 scalar.
    """
    with _fp32(logits):
        return _task_loss(logits.float(), labels, task_type)


def _task_loss(logits: Tensor, labels: Tensor, task_type: TaskType) -> Tensor:
    if task_type in ("multiclass", "binary"):
        if labels.dim() != 1 or labels.dtype != torch.long:
            raise ValueError(f"{task_type} labels must be (B,) long, got {tuple(labels.shape)} "
                             f"{labels.dtype}")
        if task_type == "binary" and logits.shape[-1] != 2:
            raise ValueError(f"binary task expects 2 logits per row, got {logits.shape[-1]}")
        return F.cross_entropy(logits, labels)
    if task_type == "multilabel":
        if labels.shape != logits.shape:
            raise ValueError(f"multilabel labels must match logits {tuple(logits.shape)}, "
                             f"got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    raise ValueError(f"task_type={task_type!r}; valid: {', '.join(choices(TaskType))}")


def _fp32(t: Tensor) -> torch.autocast:
    """Switch autocast off so that matmuls on float32 inputs stay float32."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"alignment needs two (N, D) tensors of one shape, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")


__all__ = [
    "VICRegTerms",
    "alignment_loss",
    "cosine_alignment",
    "mse_alignment",
    "off_diagonal",
    "task_loss",
    "vicreg_loss",
]
