"""Closed-form starts on frozen embeddings: logistic-regression heads and ridge predictors.

A linear probe on an encoder's frozen embedding is the yardstick any fine-tuned head
must beat, and the best place for a head to start: gradient descent from a random head
spends most of a short budget relearning it. ``initialise_from_probes`` fits, on the
training split's embeddings:

- the two heads together. Late fusion sums two linear heads' logits, which is one linear
  model on the concatenated embeddings, and the task loss is on that sum; so the heads'
  closed-form start is one logistic regression on ``[image, text]`` (features standardised
  for the L2 penalty, folded back into the weights), split into the image and the text
  head. Two heads fitted apart would each learn the class prior, and their sum would count
  it twice. A missing modality is filled with its training mean (``fill="mean"``);
- a ridge regression for each linear predictor (``predictor_layers=1``) from what it reads
  (the pooled prompt outputs, or the embedding for the CLS baseline) to its target; a
  deeper predictor starts at the training mean of its target (last layer zero, bias the
  mean), the fill it must beat;
- the mean embeddings that ``fill="mean"`` stands in.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mmcore.choice_lists import TaskType
from mmcore.losses import task_loss
from mmcore.metrics import compute_metrics, metric_for, r2_score
from mmcore.model import Embeddings, FusionModel

WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # L2 grid of the heads
RIDGE_LAMBDAS: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # per sample


@dataclass
class LinearFit:
    """A fitted affine map ``x @ weight.T + bias`` and the validation score that chose it."""

    weight: Tensor  # (out, in)
    bias: Tensor  # (out,)
    penalty: float  # the chosen L2 weight
    val_score: float  # headline metric (heads) or R^2 (ridge) on validation


def fit_logistic(x: Tensor, y: Tensor, task_type: TaskType, x_val: Tensor, y_val: Tensor,
                 num_classes: int, weight_decays: tuple[float, ...] = WEIGHT_DECAYS
                 ) -> LinearFit:
    """A linear head fitted by L-BFGS to convergence, one per L2 weight, best on validation.

    Args:
        x, y: (N, D) embeddings and their labels (``Batch.labels``'s form).
        task_type: picks the loss (softmax / sigmoid) and the validation metric.
        x_val, y_val: the validation rows.
        num_classes: width of the head.
        weight_decays: L2 weights tried (the loss is the mean task loss + wd/2 ||W||^2).
    """
    metric = metric_for(task_type).name
    best: LinearFit | None = None
    for wd in weight_decays:
        weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
        bias = torch.zeros(num_classes, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=300, history_size=20,
                                      tolerance_grad=1e-6, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = task_loss(x @ weight.T + bias, y, task_type) + 0.5 * wd * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            score = compute_metrics(x_val @ weight.T + bias, y_val, task_type)[metric]
        if best is None or score > best.val_score:
            best = LinearFit(weight.detach(), bias.detach(), wd, score)
    return best


def fit_ridge(x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor,
              lambdas: tuple[float, ...] = RIDGE_LAMBDAS) -> LinearFit:
    """Ridge regression from one embedding to another, lambda chosen by validation R^2."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = (x - x_mean).double(), (y - y_mean).double()
    gram, cross = xc.T @ xc, xc.T @ yc
    best: LinearFit | None = None
    for lam in lambdas:
        eye = torch.eye(gram.shape[0], dtype=gram.dtype)
        weight = torch.linalg.solve(gram + lam * len(x) * eye, cross).T.float()  # (out, in)
        bias = y_mean - x_mean @ weight.T
        score = r2_score(x_val @ weight.T + bias, y_val)
        if best is None or score > best.val_score:
            best = LinearFit(weight, bias, lam, score)
    return best


def _modality(emb: Embeddings, modality: str) -> tuple[Tensor, Tensor]:
    """One modality's embeddings (float) and the mask of the rows that have it."""
    if modality == "image":
        return emb.image_emb.float(), emb.has_image
    return emb.text_emb.float(), emb.has_text


@torch.no_grad()
def _copy(linear: torch.nn.Linear, fit: LinearFit) -> None:
    linear.weight.copy_(fit.weight)
    linear.bias.copy_(fit.bias)


def _standardised_fit(x: Tensor, y: Tensor, task_type: TaskType, x_val: Tensor, y_val: Tensor,
                      num_classes: int) -> LinearFit:
    """``fit_logistic`` on per-feature standardised inputs, returned in the raw inputs' units."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    fit = fit_logistic((x - mean) / std, y, task_type, (x_val - mean) / std, y_val, num_classes)
    weight = fit.weight / std
    return LinearFit(weight, fit.bias - weight @ mean, fit.penalty, fit.val_score)


def _filled(emb: Embeddings, modality: str, mean: Tensor) -> Tensor:
    """One modality's embeddings with the missing rows set to ``mean``."""
    values, present = _modality(emb, modality)
    return torch.where(present[:, None], values, mean)


def initialise_from_probes(model: FusionModel, train: Embeddings, train_labels: Tensor,
                           val: Embeddings, val_labels: Tensor, fit: bool = True
                           ) -> dict[str, float]:
    """Fit the heads, the predictors' starts and the mean fills on frozen embeddings.

    Args:
        model: the fusion model, its heads and predictors as built.
        train, train_labels: the training split encoded with its real availability
            (``mmcore.evaluation.collect``).
        val, val_labels: the validation split, the same way.
        fit: False sets only the mean fills.

    Returns:
        The validation score of each fit (``heads``, ``ridge_text_to_image``, ...).
    """
    report: dict[str, float] = {}
    means: dict[str, Tensor] = {}
    for modality in model.heads:
        values, present = _modality(train, modality)
        if present.any():
            means[modality] = values[present].mean(0)
    model.set_fill_means(means.get("image"), means.get("text"))
    if not fit:
        return report
    modalities = [m for m in model.heads if m in means]  # a modality no row has stays as built
    if not modalities:
        return report
    if len(val_labels) == 0:  # choose the penalty on the training rows instead
        val, val_labels = train, train_labels
    x, x_val = (torch.cat([_filled(e, m, means[m]) for m in modalities], dim=1)
                for e in (train, val))
    heads = _standardised_fit(x, train_labels, model.task_type, x_val, val_labels,
                              model.num_classes)
    start = 0
    for modality in modalities:
        fc = model.heads[modality].fc
        width = fc.in_features
        _copy(fc, LinearFit(heads.weight[:, start:start + width],
                            heads.bias / len(modalities), heads.penalty, heads.val_score))
        start += width
    report["heads"] = heads.val_score
    for source, target in (("image", "text"), ("text", "image")):
        predictor = model.predictors[f"{source}_to_{target}"] if model.is_bimodal else None
        if predictor is None or target not in means:
            continue
        pairs, val_pairs = (e.has_image & e.has_text for e in (train, val))
        read, val_read = (getattr(e, f"read_{source}") for e in (train, val))
        if len(predictor.mlp) == 1 and read is not None and val_read is not None \
                and int(pairs.sum()) >= 2 and int(val_pairs.sum()) >= 2:
            ridge = fit_ridge(read[pairs].float(), getattr(train, f"{target}_emb")[pairs].float(),
                              val_read[val_pairs].float(),
                              getattr(val, f"{target}_emb")[val_pairs].float())
            _copy(predictor.mlp[0], ridge)
            report[f"ridge_{source}_to_{target}"] = ridge.val_score
        else:  # start at the mean fill: the prediction it must improve on
            last = predictor.mlp[-1]
            _copy(last, LinearFit(torch.zeros_like(last.weight), means[target], 0.0, 0.0))
    return report


__all__ = ["LinearFit", "fit_logistic", "fit_ridge", "initialise_from_probes"]
