"""Datasets: one loader per benchmark, the user manifest, and ``load_dataset`` to pick one.

Every loader returns a ``MultimodalDataset`` of raw ``Sample``s for one split; the
``Collator`` decodes and batches them. ``SPLITS`` maps each dataset's split names to
where they come from in its files.

``limit_samples`` (quick runs) keeps the first N of a seeded stratified ordering
(``stratified_order``, seed 0, by class for single-label tasks, a plain shuffle for
multilabel), in their original order. The seed is fixed, not the run seed, so every
run and method of a quick study sees the same subset, and each class keeps its share.
"""
from __future__ import annotations

from mmcore.config import DataConfig
from mmcore.data.base import Batch, MultimodalDataset, Sample, TaskType
from mmcore.data.clipart import load_clipart
from mmcore.data.collate import UNLABELLED, Collator
from mmcore.data.emoji import load_emoji
from mmcore.data.food101 import load_food101
from mmcore.data.hateful_memes import SPLIT_FILES as _MEME_FILES
from mmcore.data.hateful_memes import load_hateful_memes
from mmcore.data.manifest import load_manifest
from mmcore.data.mmimdb import load_mmimdb
from mmcore.data.sampling import sample_strata, stratified_order, subset

SPLITS: dict[str, dict[str, str]] = {
    "clipart": {s: f"metadata.jsonl rows with split={s}" for s in ("train", "val", "test")},
    "emoji": {s: f"metadata.jsonl rows with split={s}" for s in ("train", "val", "test")},
    "mmimdb": {"train": "split.json 'train'", "val": "split.json 'dev'",
               "test": "split.json 'test'"},
    "food101": {"train": "texts/train_titles.csv minus val",
                "val": "carved from texts/train_titles.csv (or split.json 'val')",
                "test": "texts/test_titles.csv"},
    "hateful_memes": dict(_MEME_FILES),
    "manifest": {s: f"rows with split={s} (or a stratified 80/10/10 split)"
                 for s in ("train", "val", "test")},
}


def load_dataset(data_cfg: DataConfig, split: str) -> MultimodalDataset:
    """Load one split of the dataset a ``DataConfig`` names.

    Args:
        data_cfg: ``dataset``, ``data_root``, ``task`` (clipart and manifest),
            ``classes_file`` (manifest), ``bad_sample_policy`` (manifest images that do
            not exist) and
            ``limit_samples`` (> 0: at most that many samples, stratified).
        split: one of ``SPLITS[data_cfg.dataset]``.

    Returns:
        The split's samples with their class names and task type.
    """
    name, root = data_cfg.dataset, data_cfg.data_root
    if name not in SPLITS:
        raise ValueError(f"data.dataset={name!r}; valid: {', '.join(SPLITS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"split={split!r} for {name}; valid: {', '.join(SPLITS[name])}")
    if data_cfg.classes_file and name != "manifest":
        raise ValueError(f"data.classes_file is only for data.dataset='manifest', not {name!r}")
    if name == "clipart":
        dataset = load_clipart(root, "category" if data_cfg.task == "auto" else data_cfg.task, split)
    elif name == "emoji":
        dataset = load_emoji(root, split)
    elif name == "mmimdb":
        dataset = load_mmimdb(root, split)
    elif name == "food101":
        dataset = load_food101(root, split)
    elif name == "hateful_memes":
        dataset = load_hateful_memes(root, split)
    else:
        dataset = load_manifest(root, split, data_cfg.task, data_cfg.bad_sample_policy,
                                data_cfg.classes_file or None, data_cfg.allow_outside_root)
    if 0 < data_cfg.limit_samples < len(dataset):
        order = stratified_order(sample_strata(dataset.samples, dataset.task_type), seed=0)
        dataset = subset(dataset, order[: data_cfg.limit_samples])
    return dataset


__all__ = [
    "Batch",
    "Collator",
    "MultimodalDataset",
    "SPLITS",
    "Sample",
    "TaskType",
    "UNLABELLED",
    "load_dataset",
]
