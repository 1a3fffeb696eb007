"""From a model's logits to metrics: the per-epoch validation, and the one-pass missingness sweep.

``evaluate`` scores any model that returns ``.logits`` on a loader (under torchrun, over
every rank's share, with DistributedSampler's repeats dropped), as ``fit`` does each epoch.

The sweep costs one pass: for every sample the encoders run once, on the modalities it
really has, and the feature predictors turn each into a guess of the other
(``FusionModel.encode``). Hiding a modality afterwards only swaps which of the cached
vectors a head sees, so any (missing type, rate, seed) and any fill is scored by
re-running the two linear heads: a sweep of 11 rates x 3 types x 3 seeds costs about one
evaluation pass, not 99.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcore.choice_lists import Precision, TaskType
from mmcore.metrics import compute_metrics, metric_for, partner_stats, r2_score
from mmcore.missing import MISSING_TYPES, MissingTable
from mmcore.model import Embeddings, FusionModel
from mmcore.runtime import distributed_env, precision_context

DEFAULT_RATES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0 ... 1.0
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)


# --- one pass over a loader (validation during training) -------------------------------------


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's rows (ranks may hold different numbers of rows)."""
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    padded = x.new_zeros((int(max(sizes)), *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task_type: TaskType,
             precision: Precision = "fp32", progress: bool = False
             ) -> tuple[dict[str, float], Tensor, Tensor]:
    """Score a model on a loader; under torchrun, over every rank's share.

    Args:
        model: returns ``.logits`` for a ``Batch`` (a DDP wrapper is unwrapped).
        loader: batches carrying ``index`` (the sample's position in its split).
        task_type: "multiclass", "multilabel" or "binary" (picks the metrics).
        precision: "bf16" (autocast where supported) or "fp32".
        progress: show a progress bar (rank 0 only).

    Returns:
        ``compute_metrics``'s dict, and the (N, C) float32 logits and labels on the CPU,
        one row per sample in split order (DistributedSampler's repeats removed).
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    index, logits, labels = [], [], []
    shown = progress and distributed_env().is_main
    for batch in tqdm(loader, desc="eval", disable=not shown, leave=False):
        if len(batch) == 0:  # every row skipped by bad_sample_policy="skip"
            continue
        batch = batch.to(device)
        with precision_context(device, precision):
            out = net(batch)
        index.append(batch.index)
        logits.append(out.logits.float())
        labels.append(batch.labels)
    net.train(was_training)
    index, logits, labels = torch.cat(index), torch.cat(logits), torch.cat(labels)
    if dist.is_initialized() and dist.get_world_size() > 1:
        index, logits, labels = (_gather_rows(t) for t in (index, logits, labels))
    index, order = torch.sort(index, stable=True)
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]  # DistributedSampler pads with repeated samples
    logits, labels = logits[order][first].cpu(), labels[order][first].cpu()
    return compute_metrics(logits, labels, task_type), logits, labels


# --- the sweep: encode once, score every missingness from the cache --------------------------


@dataclass
class EmbeddingCache:
    """Everything a sweep needs of one split, in split order, on the CPU in fp32."""

    emb: Embeddings
    labels: Tensor  # (N,) or (N, C)
    index: Tensor  # (N,) positions in the split

    def __len__(self) -> int:
        return self.index.shape[0]


@torch.no_grad()
def collect(model: FusionModel, loader: DataLoader, device: torch.device | str = "cpu",
            precision: Precision = "bf16", progress: bool = True) -> EmbeddingCache:
    """Encode a split once with every modality it really has.

    Args:
        model: the trained fusion model (unwrapped from DDP).
        loader: yields ``Batch``es *without* a missing table, so availability is the real one.
        device: where the encoders run.
        precision: "bf16" for autocast, "fp32" for none.
        progress: show a progress bar.

    Returns:
        The cache, sorted by split position so that missing tables index it directly.
    """
    model.eval()
    parts: list[tuple[Embeddings, Tensor, Tensor]] = []
    for batch in tqdm(loader, desc="encode once", disable=not progress, leave=False):
        if len(batch) == 0:  # every row skipped by bad_sample_policy="skip"
            continue
        batch = batch.to(device)
        with precision_context(device, precision):
            emb = model.encode(batch)
        parts.append((_to_cpu(emb), batch.labels.cpu(), batch.index.cpu()))
    index = torch.cat([p[2] for p in parts])
    order = index.argsort()
    merged = {f.name: _cat([getattr(p[0], f.name) for p in parts], order) for f in fields(Embeddings)}
    return EmbeddingCache(Embeddings(**merged), torch.cat([p[1] for p in parts])[order], index[order])


def score(model: FusionModel, cache: EmbeddingCache, table: MissingTable, task_type: TaskType,
          fill: str | None = None) -> dict[str, float]:
    """Metrics of the cached split under one missing table (and optionally another fill)."""
    model.eval()
    return _score(model, cache, table, task_type, fill)


@torch.no_grad()
def _score(model: FusionModel, cache: EmbeddingCache, table: MissingTable, task_type: TaskType,
           fill: str | None) -> dict[str, float]:
    """``score`` on a model already in evaluation mode (``eval()`` walks every submodule of
    both encoders: once per sweep, not once per table)."""
    # tables have one row per cached sample; rows skipped by bad_sample_policy="skip" leave
    # gaps in the split positions (cache.index), so the table is indexed by cache position
    positions = torch.arange(len(cache))
    has_image, has_text = table.apply(positions, cache.emb.has_image, cache.emb.has_text)
    device = next(model.parameters()).device
    emb = Embeddings(**{f.name: _move(getattr(cache.emb, f.name), device) for f in fields(Embeddings)})
    logits = model.fuse(emb, has_image.to(device), has_text.to(device), fill=fill).float().cpu()
    return compute_metrics(logits, cache.labels, task_type)


def sweep(model: FusionModel, cache: EmbeddingCache, task_type: TaskType, dataset: str,
          split: str = "test", rates: Sequence[float] = DEFAULT_RATES,
          types: Iterable[str] = MISSING_TYPES, seeds: Sequence[int] = DEFAULT_SEEDS,
          fills: Sequence[str | None] = (None,), table_dir: str | Path | None = None,
          progress: bool = True) -> list[dict]:
    """Score every (type, rate, seed, fill) from one cache; a tidy list of result rows.

    Args:
        model: the trained fusion model.
        cache: output of ``collect`` on ``split``.
        task_type: decides the metrics.
        dataset: name recorded in the tables and rows.
        split: name recorded in the tables and rows.
        rates: missing rates eta.
        types: missing types ("text", "image", "both").
        seeds: missing-table seeds; report mean and std over them.
        fills: fills to score (None = the model's own).
        table_dir: if given, every table is saved there (JSON), so any row can be re-scored.
        progress: show a progress bar.

    Returns:
        One dict per combination: dataset, split, missing_type, missing_rate, seed, fill,
        table_sha256 and every metric.
    """
    grid = list(itertools.product(types, rates, seeds))
    model.eval()
    rows = []
    for missing_type, rate, seed in tqdm(grid, desc="sweep", disable=not progress, leave=False):
        table = MissingTable.build(len(cache), rate, missing_type, seed, dataset=dataset, split=split)
        if table_dir is not None:
            table.save(Path(table_dir) / table.file_name())
        for fill in fills:
            rows.append({"dataset": dataset, "split": split, "missing_type": missing_type,
                         "missing_rate": rate, "seed": seed, "fill": fill or model.fill,
                         "table_sha256": table.digest(),
                         **_score(model, cache, table, task_type, fill)})
    return rows


@torch.no_grad()
def predictor_report(model: FusionModel, cache: EmbeddingCache, task_type: TaskType
                     ) -> list[dict[str, float | str]]:
    """How well each direction's prediction stands in for the true embedding.

    On the rows that have both modalities: R^2 and cosine of the prediction against the
    truth, the rank of the true partner among all true embeddings, and the target head's
    headline metric fed the truth, the prediction, or the training mean (fill "mean").
    """
    model.eval()
    both = cache.emb.has_image & cache.emb.has_text
    labels = cache.labels[both]
    metric = metric_for(task_type).name
    device = next(model.parameters()).device

    def head_score(x: Tensor, target: str) -> float:
        logits = model.forward_head(x.to(device), target).float().cpu()
        return compute_metrics(logits, labels, task_type)[metric]

    rows = []
    for source, target in (("image", "text"), ("text", "image")):
        pred = getattr(cache.emb, f"pred_{target}")
        true = getattr(cache.emb, f"{target}_emb")
        if pred is None or true is None:
            continue
        pred, true = pred[both], true[both]
        mean = getattr(model, f"mean_{target}").cpu().expand_as(true)
        rows.append({"direction": f"{source} -> {target}", "pairs": int(both.sum()),
                     "r2": r2_score(pred, true),
                     **partner_stats(pred.numpy(), true.numpy(), ks=(1, 5)),
                     f"head_{metric}_true": head_score(true, target),
                     f"head_{metric}_predicted": head_score(pred, target),
                     f"head_{metric}_mean": head_score(mean, target)})
    return rows


def _to_cpu(emb: Embeddings) -> Embeddings:
    return Embeddings(**{f.name: _move(getattr(emb, f.name), "cpu") for f in fields(Embeddings)})


def _move(x: Tensor | None, device: torch.device | str) -> Tensor | None:
    if x is None:
        return None
    return x.to(device, torch.float32) if x.is_floating_point() else x.to(device)


def _cat(chunks: list[Tensor | None], order: Tensor) -> Tensor | None:
    return None if chunks[0] is None else torch.cat(chunks)[order]


__all__ = ["DEFAULT_RATES", "DEFAULT_SEEDS", "EmbeddingCache", "collect", "evaluate",
           "predictor_report", "score", "sweep"]
