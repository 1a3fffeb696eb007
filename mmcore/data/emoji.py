"""A second offline dataset where the two modalities share information: emoji.

Real, offline and committed (``data/emoji/``, built by ``scripts/build_emoji.py``; see
``data/emoji/README.md``): 1,906 Noto emoji from the npm package
``emoji-datasource-google`` 16.0.0. The image is the 64 px PNG on white, the text the
emoji's lower-cased name, the label its category (9 classes, multi-class, accuracy).

Unlike the clip art, a name describes its picture, so each modality predicts much of the
other. The text never names the label: words containing a category name (``flag``,
``symbol``, ``food``...) were cut from it.
"""
from __future__ import annotations

import json
from pathlib import Path

from mmcore.data.base import MultimodalDataset, Sample, read_metadata, require_files

SPLITS = ("train", "val", "test")
METADATA = "metadata.jsonl"
REQUIRED = ("id", "image", "text", "category", "split")  # fields of a metadata line
CLASSES = "classes.json"
_REBUILD = "rebuild it with `python scripts/build_emoji.py --out {root}`"


def load_emoji(root: str | Path, split: str) -> MultimodalDataset:
    """Load one split of the emoji dataset (task: category, multi-class).

    Args:
        root: the dataset folder holding ``metadata.jsonl``, ``classes.json`` and ``images/``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        A ``MultimodalDataset`` named ``"emoji"`` whose samples' labels are class indices.

    Raises:
        ValueError: for an unknown split, a bad metadata line or an unknown category.
        FileNotFoundError: when the folder or one of its files is missing.
    """
    if split not in SPLITS:
        raise ValueError(f"emoji split {split!r} is not valid; valid: {', '.join(SPLITS)}")
    root = Path(root)
    require_files(root, "emoji", (METADATA, CLASSES, "images"), _REBUILD.format(root=root))
    classes = json.loads((root / CLASSES).read_text())["category"]
    index = {name: i for i, name in enumerate(classes)}
    samples = []
    for row in read_metadata(root / METADATA, REQUIRED):
        if row["split"] != split:
            continue
        if row["category"] not in index:
            raise ValueError(f"{root / METADATA}: item {row['id']} has category "
                             f"{row['category']!r} not in {CLASSES}; {_REBUILD.format(root=root)}")
        samples.append(Sample(id=row["id"], image=root / row["image"],
                              text=row["text"] or None, label=(index[row["category"]],)))
    return MultimodalDataset(samples, classes, "multiclass", name="emoji", split=split)


__all__ = ["load_emoji", "SPLITS"]
