"""Checks across the rows of a manifest: what no single row shows.

A row repeating another, the same image and text in two splits (a leak), the same image
in two splits, labels that differ only in case or spacing, a label no training row has,
and rows that contradict the task. Each check reports through ``flag`` (kinds of
``mmcore.data.problems.KINDS``); those whose action drops rows return the rows kept.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mmcore.data.base import TaskType
from mmcore.data.rows import Flag

MULTILABEL_MIN_FRACTION = 0.05  # task=auto: rows with several labels needed for multilabel


def drop_duplicates(path: Path, rows: list[dict[str, Any]], flag: Flag) -> list[dict[str, Any]]:
    """Ids used twice stop; a row repeating an earlier one follows ``duplicate_row``."""
    ids: dict[str, int] = {}
    seen: dict[tuple, int] = {}
    kept = []
    for r in rows:
        if r["id"] in ids:
            flag("duplicate_id", r["line"], "id", f"{path}: line {r['line']}, column 'id': "
                 f"{r['id']!r} already used on line {ids[r['id']]}")
            continue
        ids[r["id"]] = r["line"]
        key = (r["file"], r["text"], tuple(sorted(r["labels"])), r["split"])
        if key in seen:
            flag("duplicate_row", r["line"], None, f"{path}: line {r['line']} repeats line "
                 f"{seen[key]} (same image, text, label and split); the copy is left out")
            continue
        seen[key] = r["line"]
        kept.append(r)
    return kept


def check_label_spelling(path: Path, rows: list[dict[str, Any]], flag: Flag
                          ) -> list[dict[str, Any]]:
    """Labels equal but for case or spacing stop: each row of a rarer spelling is reported."""
    counts = Counter(n for r in rows for n in r["labels"])
    spellings: dict[str, list[str]] = {}
    for name in counts:
        spellings.setdefault(" ".join(name.casefold().split()), []).append(name)
    usual = {n: max(group, key=lambda g: (counts[g], g)) for group in spellings.values()
             for n in group}
    kept = []
    for r in rows:
        odd = next((n for n in r["labels"] if usual[n] != n), None)
        if odd is None:
            kept.append(r)
            continue
        flag("label_case", r["line"], "label", f"{path}: line {r['line']}, column 'label': "
             f"{odd!r} differs only in case or spacing from {usual[odd]!r} ({counts[usual[odd]]} "
             f"rows); write one spelling (or give data.classes_file)")
    return kept


def check_task(path: Path, task_type: TaskType, task: str, rows: list[dict[str, Any]],
                classes: list[str], flag: Flag) -> None:
    """Rows that contradict the task, and label sets too small for it."""
    several = [r for r in rows if len(r["labels"]) > 1]
    if task == "auto" and several and len(several) < MULTILABEL_MIN_FRACTION * len(rows):
        for r in several:
            flag("ambiguous_task", r["line"], "label", f"{path}: line {r['line']}, column "
                 f"'label': {'|'.join(r['labels'])!r} is one of only {len(several)} of "
                 f"{len(rows)} rows with several labels, which would make the whole task "
                 "multilabel; fix the row or set data.task=multilabel")
    if task_type != "multilabel":
        for r in several:
            flag("bad_row", r["line"], "label", f"{path}: line {r['line']}, column 'label': "
                 f"several labels ({'|'.join(r['labels'])}) but data.task={task_type}")
    if task_type == "binary" and len(classes) != 2:
        flag("load_error", None, "label", f"{path}: data.task=binary needs exactly 2 classes, "
             f"found {len(classes)}: {', '.join(classes[:10])}")
    elif task_type != "multilabel" and len(classes) < 2:
        flag("load_error", None, "label", f"{path}: only one class ({classes[0]}); a "
                                          "classifier needs two or more")


def check_splits(path: Path, rows: list[dict[str, Any]], flag: Flag) -> None:
    """A row in two splits leaks; an image in two splits is reported; every label must train."""
    pairs: dict[tuple, dict[str, Any]] = {}
    images: dict[str, dict[str, Any]] = {}
    for r in rows:
        first = pairs.setdefault((r["file"], r["text"]), r)
        if first["split"] != r["split"]:
            flag("split_leak", r["line"], None, f"{path}: line {r['line']} ({r['split']}) has "
                 f"the image and text of line {first['line']} ({first['split']}): the "
                 f"{r['split']} split would score a sample the model trained on; keep one")
            continue
        shared = images.setdefault(r["file"], r) if r["file"] is not None else r
        if shared["split"] != r["split"]:
            flag("shared_image", r["line"], "image", f"{path}: line {r['line']}, column 'image':"
                 f" {r['image']} ({r['split']}) is also the image of line {shared['line']} "
                 f"({shared['split']}); used as it is")
    trained = {n for r in rows if r["split"] == "train" for n in r["labels"]}
    reported = set()
    for r in rows:
        for name in r["labels"]:
            if name not in trained and name not in reported:
                reported.add(name)
                flag("unseen_label", r["line"], "label", f"{path}: line {r['line']}, column "
                     f"'label': {name!r} has no training row (only in {r['split']}); the model "
                     "could never predict it")


__all__ = ["MULTILABEL_MIN_FRACTION", "check_label_spelling", "check_splits", "check_task",
           "drop_duplicates"]
