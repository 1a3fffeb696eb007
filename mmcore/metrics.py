"""The benchmarks' metrics, computed from logits in vectorised NumPy.

Every metric takes raw logits (what ``FusionModel`` returns) and the collated labels,
so there is one place that turns scores into decisions:

- multiclass: ``(N, C)`` logits, ``(N,)`` class indices; decisions by argmax.
- binary: ``(N, 2)`` logits (softmax, positive class 1) or ``(N,)`` / ``(N, 1)`` logits
  (sigmoid); ``(N,)`` labels in {0, 1}; decisions at probability 0.5.
- multilabel: ``(N, C)`` logits, ``(N, C)`` multi-hot labels; decisions at sigmoid 0.5
  (logit 0), as MM-IMDb's F1 is reported.

Headline metrics follow the protocol: accuracy (Food-101), F1-macro (MM-IMDb), AUROC
(Hateful Memes). They give scikit-learn's values (tests/test_metrics.py compares them) but
score every class in one pass: a sweep scores hundreds of missing tables, and scikit-learn's
per-call input validation would dominate it. Labels below zero mark unlabelled rows
(``mmcore.data.collate.UNLABELLED``); scoring them is refused. A class never predicted and
never true has F1 zero (scikit-learn's ``zero_division=0``); AUROC skips classes where it is
undefined (no positives or no negatives) and is NaN when no class is left.
"""
from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Sequence

import numpy as np
from scipy.stats import rankdata
from torch import Tensor

from mmcore.choice_lists import TaskType

ArrayLike = Tensor | np.ndarray
MetricFn = Callable[[ArrayLike, ArrayLike], float]


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _prepare(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, bool]:
    """Arrays, checked shapes, and whether the task is multilabel (2-D labels)."""
    scores = _numpy(logits).astype(np.float64)
    targets = _numpy(labels)
    if scores.shape[0] != targets.shape[0]:
        raise ValueError(f"logits have {scores.shape[0]} rows but labels have {targets.shape[0]}")
    if scores.shape[0] == 0:
        raise ValueError("cannot score an empty set of predictions")
    multilabel = targets.ndim == 2
    if multilabel:
        if scores.shape != targets.shape:
            raise ValueError(f"multilabel logits {scores.shape} and labels {targets.shape} differ")
        return scores, targets.astype(np.int64), True
    if (targets < 0).any():
        raise ValueError(
            f"{int((targets < 0).sum())} of {len(targets)} rows are unlabelled (label < 0): "
            "this split has no ground truth (e.g. an unlabelled Hateful Memes test file) "
            "and cannot be scored"
        )
    return scores, targets.astype(np.int64), False


def _decisions(scores: np.ndarray) -> np.ndarray:
    """Class indices from single-label logits: argmax, or logit > 0 for a single column."""
    if scores.ndim == 1 or scores.shape[1] == 1:
        return (scores.reshape(-1) > 0).astype(np.int64)
    return scores.argmax(axis=1)


def accuracy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of correct decisions; for multilabel, of correct (row, label) entries."""
    scores, targets, multilabel = _prepare(logits, labels)
    if multilabel:
        return float(((scores > 0) == targets.astype(bool)).mean())
    return float((_decisions(scores) == targets).mean())


def _one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    return classes[:, None] == np.arange(num_classes)[None, :]


def _f1(logits: ArrayLike, labels: ArrayLike, average: str) -> float:
    """F1 from (N, C) boolean decisions and truths: per class then averaged, or pooled."""
    scores, targets, multilabel = _prepare(logits, labels)
    if multilabel:
        decided, truth = scores > 0, targets.astype(bool)
    else:
        num_classes = 2 if scores.ndim == 1 or scores.shape[1] == 1 else scores.shape[1]
        decided = _one_hot(_decisions(scores), num_classes)
        truth = _one_hot(targets, num_classes)
    hits = (decided & truth).sum(axis=0)
    claimed = decided.sum(axis=0) + truth.sum(axis=0)  # predicted + true, per class
    if average == "micro":
        total = claimed.sum()
        return float(2 * hits.sum() / total) if total else 0.0
    per_class = np.divide(2 * hits, claimed, out=np.zeros(len(hits)), where=claimed > 0)
    return float(per_class.mean())


def f1_macro(logits: ArrayLike, labels: ArrayLike) -> float:
    """Unweighted mean of per-class F1 (sigmoid > 0.5 for multilabel, argmax otherwise)."""
    return _f1(logits, labels, "macro")


def f1_micro(logits: ArrayLike, labels: ArrayLike) -> float:
    """F1 over all (row, class) decisions pooled (equals accuracy for single-label tasks)."""
    return _f1(logits, labels, "micro")


def auroc(logits: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve: binary, or macro one-vs-rest over the classes where defined.

    Multiclass scores are softmax probabilities (scikit-learn's ``multi_class="ovr"``);
    multilabel scores are per-label logits. Classes without positives or without negatives
    are left out of the mean (with a warning); NaN if none is defined.
    """
    scores, targets, multilabel = _prepare(logits, labels)
    if not multilabel and (scores.ndim == 1 or scores.shape[1] == 1):
        scores, targets = scores.reshape(-1, 1), targets.reshape(-1, 1)
    elif not multilabel and scores.shape[1] == 2:
        scores, targets = _softmax(scores)[:, 1:], targets.reshape(-1, 1)
    elif not multilabel:
        scores = _softmax(scores)
        targets = _one_hot(targets, scores.shape[1])
    positives = targets.sum(axis=0)
    defined = np.flatnonzero((positives > 0) & (positives < len(targets)))
    if len(defined) < scores.shape[1]:
        warnings.warn(f"AUROC undefined for {scores.shape[1] - len(defined)} of {scores.shape[1]} "
                      "classes (no positives or no negatives); left out of the mean",
                      stacklevel=2)
    if len(defined) == 0:
        return float("nan")
    return float(np.mean(_rank_aurocs(scores[:, defined], targets[:, defined].astype(bool))))


def _rank_aurocs(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Each column's AUROC by the rank-sum identity (Mann-Whitney U / (P N)), ties counted
    one half: the probability that a random positive outscores a random negative."""
    ranks = rankdata(scores, axis=0)  # average ranks for ties
    n_pos = positive.sum(axis=0)
    n_neg = len(positive) - n_pos
    return ((ranks * positive).sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class Metric(NamedTuple):
    """A metric's report name and its function ``(logits, labels) -> float``."""

    name: str
    fn: MetricFn


_HEADLINE: dict[str, Metric] = {
    "multiclass": Metric("accuracy", accuracy),
    "multilabel": Metric("f1_macro", f1_macro),
    "binary": Metric("auroc", auroc),
}

_REPORTED: dict[str, tuple[Metric, ...]] = {
    "multiclass": (Metric("accuracy", accuracy), Metric("f1_macro", f1_macro),
                   Metric("auroc", auroc)),
    "multilabel": (Metric("f1_macro", f1_macro), Metric("f1_micro", f1_micro),
                   Metric("auroc", auroc)),
    "binary": (Metric("auroc", auroc), Metric("accuracy", accuracy),
               Metric("f1_macro", f1_macro)),
}


def metric_for(task_type: TaskType) -> Metric:
    """The protocol's headline metric for a task type (accuracy, f1_macro or auroc)."""
    if task_type not in _HEADLINE:
        raise ValueError(f"unknown task type {task_type!r}; valid: {', '.join(_HEADLINE)}")
    return _HEADLINE[task_type]


def compute_metrics(logits: ArrayLike, labels: ArrayLike, task_type: TaskType) -> dict[str, float]:
    """Every metric reported for a task type, headline first.

    Args:
        logits: (N, C) scores, or (N,) for a single-logit binary head.
        labels: (N,) class indices or (N, C) multi-hot, as ``Batch.labels``.
        task_type: "multiclass", "multilabel" or "binary".

    Returns:
        Metric name -> value, e.g. ``{"f1_macro": ..., "f1_micro": ..., "auroc": ...}``.
    """
    metric_for(task_type)  # validates task_type
    if task_type == "multilabel" and _numpy(labels).ndim != 2:
        raise ValueError("multilabel metrics need (N, C) multi-hot labels")
    if task_type != "multilabel" and _numpy(labels).ndim != 1:
        raise ValueError(f"{task_type} metrics need (N,) class-index labels")
    with warnings.catch_warnings():
        # classes without positives are expected on small sets; auroc() alone still warns
        warnings.simplefilter("ignore", UserWarning)
        return {m.name: m.fn(logits, labels) for m in _REPORTED[task_type]}


# --- how well a predicted embedding finds its partner ---------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (cosine similarity is then a dot product)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine_to_partner(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of each predicted embedding to its own true partner."""
    return np.sum(unit_rows(pred) * unit_rows(true), axis=1)


def partner_ranks(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N,) rank of each row's true partner among all N true embeddings (0 = nearest).

    Ranked by cosine similarity to the predicted embedding; ties count against the partner.
    """
    sim = unit_rows(pred) @ unit_rows(true).T  # (N, N)
    return np.sum(sim > np.diag(sim)[:, None], axis=1)


def partner_stats(pred: np.ndarray, true: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """How well predictions find their own partner: mean cosine, median rank, recall@k.

    Args:
        pred: (N, D) predicted embeddings.
        true: (N, D) true embeddings of the same N items, row for row.
        ks: Cut-offs for recall@k (share of rows whose partner ranks in the top k).

    Returns:
        "cosine", "median_rank" (1 = nearest), "chance_rank" ((N + 1) / 2) and "recall@k".
    """
    ranks = partner_ranks(pred, true)
    stats = {"cosine": float(cosine_to_partner(pred, true).mean()),
             "median_rank": float(np.median(ranks) + 1), "chance_rank": (len(true) + 1) / 2}
    stats.update({f"recall@{k}": float(np.mean(ranks < k)) for k in ks})
    return stats


def r2_score(pred: ArrayLike, true: ArrayLike) -> float:
    """Coefficient of determination over all dimensions: 1 - SSE / total sum of squares."""
    pred, true = _numpy(pred).astype(np.float64), _numpy(true).astype(np.float64)
    return float(1.0 - ((true - pred) ** 2).sum() / ((true - true.mean(0)) ** 2).sum())


__all__ = ["Metric", "accuracy", "auroc", "compute_metrics", "cosine_to_partner", "f1_macro",
           "f1_micro", "metric_for", "partner_ranks", "partner_stats", "r2_score", "unit_rows"]
