"""Seeded, stratified choices of samples: carving a split, picking a ``limit_samples`` subset.

One ordering serves both: a permutation whose every prefix keeps each class's share, so
taking a prefix is a stratified sample. The seed is fixed by the callers (0), not the run
seed, so every run and method sees the same split and the same subset.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from mmcore.data.base import MultimodalDataset, Sample, TaskType


def stratified_order(strata: Sequence[Hashable], seed: int = 0) -> np.ndarray:
    """A seeded permutation of ``range(len(strata))`` whose every prefix is stratified.

    Within each stratum the order is random; across strata, the r-th of m members is
    placed at key (r + 1/2) / m, so any prefix of length k holds each stratum in
    proportion to its size (within one sample). Carving a split is then taking a prefix.

    Args:
        strata: one hashable per sample (its class), or all equal for a plain shuffle.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        (n,) int64 indices.
    """
    perm = np.random.default_rng(seed).permutation(len(strata))
    sizes: dict[Hashable, int] = {}
    for s in strata:
        sizes[s] = sizes.get(s, 0) + 1
    seen: dict[Hashable, int] = {}
    keys = np.empty(len(perm))
    for pos, i in enumerate(perm):
        s = strata[i]
        keys[pos] = (seen.get(s, 0) + 0.5) / sizes[s]
        seen[s] = seen.get(s, 0) + 1
    return perm[np.argsort(keys, kind="stable")]


def sample_strata(samples: Sequence[Sample], task_type: TaskType) -> list[Hashable]:
    """Stratum of each sample: its class for single-label tasks, one stratum for multilabel."""
    if task_type == "multilabel":
        return [0] * len(samples)
    return [s.label[0] if s.label else -1 for s in samples]


def subset(dataset: MultimodalDataset, indices: Sequence[int] | np.ndarray) -> MultimodalDataset:
    """The samples at ``indices`` (kept in their original order), same classes and task."""
    chosen = [dataset.samples[i] for i in sorted(int(i) for i in indices)]
    return MultimodalDataset(chosen, dataset.classes, dataset.task_type, dataset.name,
                             dataset.split)


__all__ = ["sample_strata", "stratified_order", "subset"]
