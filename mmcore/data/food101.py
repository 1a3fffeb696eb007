"""UPMC Food-101 (Wang et al., 2015): recipe web pages' images and titles, 101 classes.

Reads the layout of the public distribution::

    <root>/images/{train,test}/<class>/<class>_<n>.jpg
    <root>/texts/{train,test}_titles.csv     # no header: image file name, text, class

A sample's class is taken from its file name (everything before the last underscore),
not from the CSV's third column. Classes are indexed in sorted order.

Validation is carved from train. If ``<root>/split.json`` (MAP's file, keys ``train``,
``val``, ``test`` listing file names) is present, its train / val lists are used as is.
Otherwise a deterministic stratified carve (``stratified_order`` with seed 0) takes
``VAL_FRACTION`` of every class, which reproduces MAP's 61,142 / 6,846 split of the
67,988 training rows in size.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

from mmcore.data.base import MultimodalDataset, Sample
from mmcore.data.sampling import stratified_order

VAL_FRACTION = 6_846 / 67_988  # MAP's validation share of the training CSV (~10.07%)
SPLITS = ("train", "val", "test")
LAYOUT = """expected the UPMC Food-101 layout:
  <root>/images/train/<class>/<class>_<n>.jpg
  <root>/images/test/<class>/<class>_<n>.jpg
  <root>/texts/train_titles.csv   (no header: image file name, text, class)
  <root>/texts/test_titles.csv
  <root>/split.json               (optional: MAP's train/val/test file lists)
Get it from https://visiir.isir.upmc.fr (UPMC Food-101) or its Kaggle mirror
'gianmarco96/upmcfood101'; nothing is downloaded for you."""


def class_of(file_name: str) -> str:
    """``apple_pie_12.jpg`` -> ``apple_pie``: everything before the last underscore."""
    stem, sep, _ = file_name.rpartition("_")
    if not sep or not stem:
        raise ValueError(f"image file name {file_name!r} has no '<class>_<n>' form")
    return stem


def read_titles(csv_path: Path) -> dict[str, str]:
    """Image file name -> text from a header-less titles CSV (first occurrence kept)."""
    titles: dict[str, str] = {}
    duplicates = 0
    with csv_path.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        for row in reader:
            if not row or not row[0].strip():
                continue
            if len(row) < 2:
                raise ValueError(f"{csv_path}: line {reader.line_num} has {len(row)} column; "
                                 "expected image file name, text, class")
            name = row[0].strip()
            if name in titles:
                duplicates += 1
                continue
            titles[name] = row[1]
    if duplicates:
        warnings.warn(f"{csv_path}: {duplicates} duplicated image names; first rows kept",
                      stacklevel=3)
    return titles


def load_food101(root: str | Path, split: str) -> MultimodalDataset:
    """Load a split of UPMC Food-101.

    Args:
        root: the folder holding ``images/`` and ``texts/``.
        split: "train", "val" (carved from train) or "test".

    Returns:
        A multiclass ``MultimodalDataset`` with 101 classes on the full data.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} for food101; valid: {', '.join(SPLITS)}")
    csvs = {part: root / "texts" / f"{part}_titles.csv" for part in ("train", "test")}
    absent = [p for p in csvs.values() if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"food101: {absent[0]} not found; {LAYOUT}")
    train_titles = read_titles(csvs["train"])
    classes = sorted({class_of(name) for name in train_titles})
    part = "test" if split == "test" else "train"
    titles = train_titles if part == "train" else read_titles(csvs["test"])
    names = list(titles)
    if split != "test":
        names = _train_val(root, names)[split]
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for name in names:
        cls = class_of(name)
        if cls not in index:
            raise ValueError(f"food101: {csvs[part]} lists {name!r} of class {cls!r}, which the "
                             "training CSV does not have")
        samples.append(Sample(Path(name).stem, root / "images" / part / cls / name, titles[name],
                              (index[cls],)))
    return MultimodalDataset(samples, classes, "multiclass", "food101", split)


def _train_val(root: Path, names: list[str]) -> dict[str, list[str]]:
    """Split the training CSV's names into train and val (MAP's split.json if present)."""
    split_file = root / "split.json"
    if split_file.is_file():
        lists = json.loads(split_file.read_text())
        if not {"train", "val"} <= set(lists):
            raise ValueError(f"{split_file}: needs keys 'train' and 'val' (MAP's format)")
        known = set(names)
        return {k: [n for n in lists[k] if n in known] for k in ("train", "val")}
    order = stratified_order([class_of(n) for n in names], seed=0)
    n_val = round(len(names) * VAL_FRACTION)
    val = set(order[:n_val].tolist())
    return {"train": [n for i, n in enumerate(names) if i not in val],
            "val": [n for i, n in enumerate(names) if i in val]}


__all__ = ["VAL_FRACTION", "class_of", "load_food101", "read_titles"]
