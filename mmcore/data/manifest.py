"""Users' own data: a CSV or JSONL manifest of (image, text, label) rows.

Columns (CSV header or JSON keys): ``image`` (a path inside the manifest's folder,
relative to it or absolute), ``text``, ``label`` and, optionally, ``split`` (train / val
/ test) and ``id``. An empty ``image`` or ``text`` is real missingness: the sample keeps
the other modality. Several labels are separated by ``|`` (JSONL may also give a list).
``data.classes_file`` (one name a line) fixes the label set and its order.

Nothing is lost, merged or invented in silence: every problem of the file, of a row or
across rows is a ``Problem`` of ``mmcore.data.problems.KINDS`` naming file, line and
column, and its action is applied here (loading) exactly as ``check-data`` reports it.
An image path that resolves (after symlinks) outside the manifest's folder is
``outside_root`` and never opened, unless ``data.allow_outside_root``.

Task type under ``task="auto"``: rows with several labels make the task multilabel, but
only when at least 1 row in 20 has several (``consistency.MULTILABEL_MIN_FRACTION``; fewer
is ``ambiguous_task``: fix those rows or set ``data.task``); otherwise exactly two classes
make it binary (scored by AUROC, the positive class being the second in sorted order,
e.g. "1", "true", "yes"); otherwise multiclass. Class names are sorted (numerically
when all are integers). ``Manifest.task_reason`` says which rule decided.

Without a ``split`` column the rows are split deterministically (seed 0, stratified by
class for single-label tasks): 10% val, 10% test, the rest train.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcore.data.base import MultimodalDataset, Sample, TaskType
from mmcore.data.consistency import (check_label_spelling, check_splits, check_task,
                                     drop_duplicates)
from mmcore.data.problems import REAL_MISSING, DataError, Problem, actions
from mmcore.data.rows import Flag, read_rows
from mmcore.data.sampling import stratified_order
from mmcore.data.texts import has_invalid_utf8, repair_utf8

MANIFEST_TASKS = ("auto", "multiclass", "multilabel", "binary")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test"}
HOLDOUT_FRACTION = 0.1  # val and test each, when the manifest has no split column


@dataclass
class Manifest:
    """A manifest read and checked: the rows kept, their classes and task, every problem."""

    path: Path
    rows: list[dict[str, Any]]  # line, id, image, file (resolved image), text, labels, split
    classes: list[str] = field(default_factory=list)
    task_type: TaskType | None = None  # None when a problem stops before it is known
    task_reason: str = ""
    problems: list[Problem] = field(default_factory=list)


def read_manifest(
    path: str | Path,
    task: str = "auto",
    classes_file: str | Path | None = None,
    bad_sample_policy: str = "missing",
    strict: bool = True,
    allow_outside_root: bool = False,
) -> Manifest:
    """Parse and check every row of a manifest; the one reader of loading and ``check_data``.

    Args:
        path: the manifest file (``.csv``, or ``.jsonl`` / ``.json`` with one object per line).
        task: "auto", "multiclass", "multilabel" or "binary" (``data.task``).
        classes_file: the label set, one name a line (``data.classes_file``); None: any label.
        bad_sample_policy: decides the actions of ``mmcore.data.problems.KINDS``.
        strict: raise ``DataError`` at the first problem whose action is "stop" (loading);
            False collects every problem and leaves such rows out (``check_data``).
        allow_outside_root: accept image paths outside the manifest's folder.

    Returns:
        The ``Manifest``: rows with their split assigned, classes, task, problems.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path} (a .csv with header "
                        "image,text,label[,split][,id], or a .jsonl with those keys)")
    if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise DataError(f"{path}: unknown manifest format; use .csv or .jsonl")
    if task not in MANIFEST_TASKS:
        raise DataError(f"data.task={task!r} is not valid for a manifest; valid: "
                        f"{', '.join(MANIFEST_TASKS)}")
    policy, manifest = actions(bad_sample_policy), Manifest(path, [])

    def flag(kind: str, line: int | None, column: str | None, message: str) -> str:
        detail = message.removeprefix(f"{path}: ")  # the problem's file says where
        manifest.problems.append(Problem(kind, policy[kind], str(path), line, column, detail))
        if strict and policy[kind] == "stop":
            raise DataError(message)
        return policy[kind]

    classes = _read_classes(classes_file) if classes_file else None
    rows = [row for line, raw in read_rows(path, flag)
            if (row := _check_row(path, line, raw, classes, allow_outside_root, flag))]
    rows = drop_duplicates(path, rows, flag)
    if classes is None:
        rows = check_label_spelling(path, rows, flag)
    manifest.classes = classes or _sorted_classes({n for r in rows for n in r["labels"]})
    if not rows:
        return manifest
    manifest.task_type, manifest.task_reason = _task_type(task, rows, manifest.classes)
    check_task(path, manifest.task_type, task, rows, manifest.classes, flag)
    manifest.rows = _assign_splits(path, rows, manifest.task_type, flag)
    check_splits(path, manifest.rows, flag)
    return manifest


def _check_row(path: Path, line: int, raw: dict[str, Any], classes: list[str] | None,
               allow_outside_root: bool, flag: Flag) -> dict[str, Any] | None:
    """One row's cells checked and normalised; None if its action drops the row."""
    where = f"{path}: line {line}"
    for column, value in raw.items():
        if isinstance(value, str) and has_invalid_utf8(value):
            flag("non_utf8_text", line, column, f"{where}, column '{column}': bytes that are "
                                                "not UTF-8, replaced by U+FFFD")
            raw[column] = repair_utf8(value)
    image, text = _cell(raw.get("image")), _text_cell(raw.get("text"))
    if image is None and _cell(text) is None:
        flag("empty_row", line, None, f"{where}: both 'image' and 'text' are empty; a row "
                                      "needs at least one")
        return None
    labels = _label_names(raw.get("label"))
    if not labels:
        flag("empty_label", line, "label", f"{where}, column 'label': empty label")
        return None
    unknown = [n for n in labels if classes is not None and n not in classes]
    if unknown:
        flag("unknown_label", line, "label", f"{where}, column 'label': {unknown[0]!r} is not "
             f"in the label set ({', '.join(classes[:10])})")
        return None
    split = _cell(raw.get("split"))
    if split is not None and split.strip().lower() not in SPLIT_ALIASES:
        flag("bad_row", line, "split", f"{where}, column 'split': {split!r}; valid: "
                                       f"{', '.join(SPLIT_ALIASES)}")
        return None
    image_path = resolved = None
    if image is not None:
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        resolved = str(image_path.resolve())  # symlinks followed, ".." removed
        if not allow_outside_root and not Path(resolved).is_relative_to(path.parent.resolve()):
            action = flag("outside_root", line, "image", f"{where}, column 'image': {image} "
                          f"resolves outside {path.parent.resolve()}; not opened (set "
                          "data.allow_outside_root=true to use images kept elsewhere)")
            if action != "missing":  # "skip" drops the row; "stop" refuses it
                return None
            image_path = resolved = None
    return {"line": line, "id": _cell(raw.get("id")) or f"line{line}", "image": image_path,
            "file": resolved, "text": text, "labels": labels,
            "split": None if split is None else SPLIT_ALIASES[split.strip().lower()]}


def _task_type(task: str, rows: list[dict[str, Any]], classes: list[str]
               ) -> tuple[TaskType, str]:
    """The task and the rule that chose it."""
    several = sum(len(r["labels"]) > 1 for r in rows)
    if task != "auto":
        return task, f"data.task={task}"  # type: ignore[return-value]
    if several:
        return "multilabel", f"inferred: {several} of {len(rows)} rows have several labels"
    if len(classes) == 2:
        return "binary", "inferred: one label per row, 2 classes"
    return "multiclass", f"inferred: one label per row, {len(classes)} classes"


def _assign_splits(path: Path, rows: list[dict[str, Any]], task_type: TaskType, flag: Flag
                   ) -> list[dict[str, Any]]:
    """Given splits kept (a row without one, beside rows with one, is a bad row); none
    given: a stratified 80/10/10 split."""
    if any(r["split"] is not None for r in rows):
        for r in rows:
            if r["split"] is None:
                flag("bad_row", r["line"], "split", f"{path}: line {r['line']}, column 'split' "
                     "is empty; give every row a split (train, val, test) or drop the column")
        return [r for r in rows if r["split"] is not None]
    strata = [0] * len(rows) if task_type == "multilabel" else [r["labels"][0] for r in rows]
    order = stratified_order(strata, seed=0)
    n_holdout = round(len(rows) * HOLDOUT_FRACTION)
    for pos, i in enumerate(order):
        rows[i]["split"] = "val" if pos < n_holdout else "test" if pos < 2 * n_holdout else "train"
    return rows


def _cell(value: Any) -> str | None:
    """A cell as a string; empty, whitespace or null cells are None."""
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _text_cell(value: Any) -> str | None:
    """A text cell: empty or null is real missingness (None); whitespace is kept for the
    collator, which applies ``bad_sample_policy`` to it."""
    return None if value is None or str(value) == "" else str(value)


def _label_names(value: Any) -> list[str]:
    names = ([str(v) for v in value] if isinstance(value, list)
             else str(value if value is not None else "").split("|"))
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def _read_classes(path: str | Path) -> list[str]:
    """The label set of ``data.classes_file``: one class name a line, in index order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.classes_file not found: {path} (one class name a line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    twice = [n for n, count in Counter(names).items() if count > 1]
    if twice:
        raise DataError(f"{path}: class {twice[0]!r} is listed twice")
    if not names:
        raise DataError(f"{path}: no class names (data.classes_file needs one a line)")
    return names


def _sorted_classes(names: set[str]) -> list[str]:
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def load_manifest(
    path: str | Path,
    split: str,
    task: str = "auto",
    bad_sample_policy: str = "missing",
    classes_file: str | Path | None = None,
    allow_outside_root: bool = False,
) -> MultimodalDataset:
    """Load one split of a CSV / JSONL manifest.

    Args:
        path: the manifest file.
        split: "train", "val" or "test".
        task: "auto", "multiclass", "multilabel" or "binary" (``data.task``).
        bad_sample_policy: for an image path that does not exist or leaves the folder:
            "missing" keeps the row without its image (one warning), "skip" drops the
            row, "stop" raises. A problem whose action is "stop" always raises.
        classes_file: the label set in index order, one name a line (``data.classes_file``);
            None: the labels the manifest uses, sorted.
        allow_outside_root: accept image paths outside the manifest's folder.

    Returns:
        The split as a ``MultimodalDataset`` named after the manifest's file stem.

    Raises:
        DataError: naming file, line and column of the first problem that stops.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r} for a manifest; valid: train, val, test")
    path = Path(path)
    manifest = read_manifest(path, task, classes_file, bad_sample_policy, True,
                             allow_outside_root)
    if not manifest.rows:
        raise DataError(f"{path}: the manifest has no rows")
    handled = Counter((p.kind, p.action) for p in manifest.problems if p.kind not in REAL_MISSING)
    if handled:
        warnings.warn(f"{path}: {sum(handled.values())} problem(s) handled: " + ", ".join(
            f"{kind} x{n} ({action})" for (kind, action), n in handled.items())
            + "; python -m mmcore check-data lists each line", stacklevel=2)
    class_index = {c: i for i, c in enumerate(manifest.classes)}
    samples, absent = [], []
    for r in (r for r in manifest.rows if r["split"] == split):
        image = r["image"]
        if image is not None and not image.is_file():
            if bad_sample_policy == "stop":
                raise DataError(f"{path}: line {r['line']}, column 'image': {image} does not "
                                "exist")
            absent.append(f"line {r['line']}: {image}")
            if bad_sample_policy == "skip":
                continue
            image = None
        label = tuple(sorted(class_index[n] for n in r["labels"]))
        samples.append(Sample(r["id"], image, r["text"], label))
    if absent:
        action = "rows dropped" if bad_sample_policy == "skip" else "kept without their image"
        warnings.warn(f"{path}: {len(absent)} image(s) do not exist ({action}); first: "
                      f"{'; '.join(absent[:3])}", stacklevel=2)
    return MultimodalDataset(samples, manifest.classes, manifest.task_type, path.stem, split)


__all__ = ["MANIFEST_TASKS", "Manifest", "load_manifest", "read_manifest"]
