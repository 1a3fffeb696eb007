"""Hateful Memes (Kiela et al., 2020): meme images with their overlaid text, binary labels.

Reads the layout of the public release (the archive unpacks to ``data/``; either
``<root>`` or ``<root>/data`` may hold it)::

    <root>/img/<5-digit id>.png
    <root>/train.jsonl, dev_seen.jsonl, test_seen.jsonl     # train / val / test
    <root>/dev_unseen.jsonl, test_unseen.jsonl              # splits "dev_unseen", "test_unseen"
    <root>/dev.jsonl, test.jsonl                            # phase 1: "dev_phase1", "test_phase1"

Each line holds ``id`` (int), ``img`` (e.g. "img/02973.png"; the image path is taken
from here, since ids lose their zero padding), ``text`` and ``label`` (0/1). Lines of
unlabelled files (phase 1's ``test.jsonl``) have no ``label``: their samples get an empty
label, which the collator turns into ``UNLABELLED`` and the metrics refuse to score.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from mmcore.data.base import MultimodalDataset, Sample

CLASSES = ("not_hateful", "hateful")
SPLIT_FILES = {
    "train": "train.jsonl",
    "val": "dev_seen.jsonl",
    "test": "test_seen.jsonl",
    "dev_unseen": "dev_unseen.jsonl",
    "test_unseen": "test_unseen.jsonl",
    "dev_phase1": "dev.jsonl",
    "test_phase1": "test.jsonl",
}
LAYOUT = """expected the Hateful Memes layout (in <root> or <root>/data):
  <root>/img/<5-digit id>.png
  <root>/train.jsonl, dev_seen.jsonl, test_seen.jsonl   (train / val / test)
  <root>/dev_unseen.jsonl, test_unseen.jsonl, dev.jsonl, test.jsonl   (optional)
Get it from https://hatefulmemeschallenge.com (Meta's licence; also on DrivenData);
nothing is downloaded for you."""


def _data_dir(root: Path) -> Path:
    for candidate in (root, root / "data"):
        if (candidate / "train.jsonl").is_file() or (candidate / "img").is_dir():
            return candidate
    raise FileNotFoundError(f"hateful_memes: no train.jsonl or img/ under {root}; {LAYOUT}")


def load_hateful_memes(root: str | Path, split: str) -> MultimodalDataset:
    """Load a split of Hateful Memes.

    Args:
        root: the folder holding ``img/`` and the JSONL files (or its parent with ``data/``).
        split: "train", "val" (dev_seen), "test" (test_seen), "dev_unseen", "test_unseen",
            "dev_phase1" (dev.jsonl) or "test_phase1" (test.jsonl).

    Returns:
        A binary ``MultimodalDataset`` (classes ``not_hateful``, ``hateful``).
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split={split!r} for hateful_memes; valid: {', '.join(SPLIT_FILES)}")
    folder = _data_dir(Path(root))
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        present = sorted(p.name for p in folder.glob("*.jsonl"))
        raise FileNotFoundError(f"hateful_memes: split {split!r} needs {path}; found "
                                f"{', '.join(present) or 'no .jsonl files'}; {LAYOUT}")
    samples, unlabelled = [], 0
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                sample_id, img = str(row["id"]), row["img"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}: line {line_no} is not a meme record with 'id' and "
                                 f"'img' ({err!r})") from None
            label = row.get("label")
            if label is None:
                unlabelled += 1
            elif label not in (0, 1):
                raise ValueError(f"{path}: line {line_no}: label {label!r} is not 0 or 1")
            samples.append(Sample(sample_id, folder / img, row.get("text"),
                                  () if label is None else (int(label),)))
    if unlabelled:
        warnings.warn(f"{path}: {unlabelled} of {len(samples)} memes have no label; usable for "
                      "prediction, not for training or scoring", stacklevel=2)
    return MultimodalDataset(samples, CLASSES, "binary", "hateful_memes", split)


__all__ = ["CLASSES", "SPLIT_FILES", "load_hateful_memes"]
