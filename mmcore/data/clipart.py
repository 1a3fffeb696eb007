"""The default dataset: OpenClipArt 0.18 clip art with its cleaned metadata text.

Real, offline and committed (``data/openclipart/``, built by ``scripts/build_clipart.py``;
see ``data/README.md``). Two tasks share one set of images, texts and splits:

- ``category``: which of 11 object-like folders an item came from (multi-class, accuracy);
- ``keywords``: which of 20 frequent keywords it carries (multi-label, F1-macro). Items
  with none of the 20 are not part of this task.

The text never names the label: class names, their sub-folder names and the 20 keyword
labels were cut from it. Items whose text was empty after cleaning keep ``text=None``.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmcore.data.base import (MultimodalDataset, Sample, TaskType, read_metadata,
                              require_files)

TASKS: dict[str, TaskType] = {"category": "multiclass", "keywords": "multilabel"}
SPLITS = ("train", "val", "test")
METADATA = "metadata.jsonl"
REQUIRED = ("id", "image", "text", "category", "keywords", "split")  # fields of a metadata line
CLASSES = "classes.json"
_REBUILD = "rebuild it with `python scripts/build_clipart.py --out {root}`"


def load_clipart(root: str | Path, task: str, split: str) -> MultimodalDataset:
    """Load one split of the OpenClipArt dataset for one task.

    Args:
        root: the dataset folder holding ``metadata.jsonl``, ``classes.json`` and ``images/``.
        task: ``"category"`` (multi-class) or ``"keywords"`` (multi-label).
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A ``MultimodalDataset`` named ``"clipart"`` whose samples' labels are class indices.

    Raises:
        ValueError: for an unknown task or split.
        FileNotFoundError: when the folder or one of its files is missing.
    """
    if task not in TASKS:
        raise ValueError(f"clipart task {task!r} is not valid; valid: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"clipart split {split!r} is not valid; valid: {', '.join(SPLITS)}")
    root = Path(root)
    require_files(root, "clipart", (METADATA, CLASSES, "images"), _REBUILD.format(root=root))
    classes = json.loads((root / CLASSES).read_text())[task]
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for row in read_metadata(root / METADATA, REQUIRED):
        if row["split"] != split:
            continue
        names = [row["category"]] if task == "category" else row["keywords"]
        if not names:
            continue  # no keyword label: not part of the keywords task
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{root / METADATA}: item {row['id']} has label {unknown[0]!r} "
                             f"not in {CLASSES}[{task!r}]; {_REBUILD.format(root=root)}")
        samples.append(Sample(
            id=row["id"],
            image=root / row["image"],
            text=row["text"] or None,
            label=tuple(sorted(index[n] for n in names)),
        ))
    return MultimodalDataset(samples, classes, TASKS[task], name="clipart", split=split)


__all__ = ["load_clipart", "TASKS", "SPLITS"]
