"""Users' own data: a CSV or JSONL manifest of (image, text, label) rows.

Columns (CSV header or JSON keys): ``image`` (path relative to the manifest, or
absolute), ``text``, ``label`` and, optionally, ``split`` (train / val / test) and ``id``.
An empty ``image`` or ``text`` is real missingness: the sample keeps the other modality.
A whitespace-only text is kept as it is: the collator applies ``bad_sample_policy`` to it.
Several labels are separated by ``|`` (JSONL may also give a list). ``data.classes_file``
(one name a line) fixes the label set and its order; a label outside it stops the load.

Every problem of a row follows the table of ``mmcore.data.validate``: bytes that are not
UTF-8 are replaced (one warning), and an unparsable row, a missing column, an empty row
or label, an id used twice or an unknown label raise naming the file, line and column.
``check_data`` reads the file with the same ``read_manifest`` and lists them all.

Task type under ``task="auto"``: any row with several labels makes the task
multilabel; otherwise exactly two classes make it binary (scored by AUROC, the positive
class being the second in sorted order, e.g. "1", "true", "yes"); otherwise multiclass.
Class names are sorted (numerically when all are integers).

Without a ``split`` column the rows are split deterministically (seed 0, stratified by
class for single-label tasks): 10% val, 10% test, the rest train. The same stratified
ordering (``stratified_order``) carves Food-101's validation set and picks the
``limit_samples`` subsets.
"""
from __future__ import annotations

import csv
import difflib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Sequence

import numpy as np

from mmcore.data.base import MultimodalDataset, Sample, TaskType
from mmcore.data.validate import Problem, actions, has_invalid_utf8, repair_utf8

MANIFEST_TASKS = ("auto", "multiclass", "multilabel", "binary")
REQUIRED_COLUMNS = ("image", "text", "label")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test"}
HOLDOUT_FRACTION = 0.1  # val and test each, when the manifest has no split column


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


# --- reading ---------------------------------------------------------------------------------

Flag = Callable[[str, "int | None", "str | None", str], None]


def _rows(path: Path, flag: Flag) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs; the line number is what an editor shows.

    Bytes that are not UTF-8 are read as lone surrogates (``surrogateescape``), so one bad
    byte costs one cell, not the file; ``read_manifest`` reports and repairs them.
    """
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            for column in missing:
                flag("missing_column", 1, column,
                     f"{path}: missing column '{column}' in the header {header}; required: "
                     f"{', '.join(REQUIRED_COLUMNS)}{_did_you_mean(column, header)}")
            if missing:
                return
            for row in reader:
                yield reader.line_num, row  # the row's last line (a quoted newline spans two)
        return
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                flag("bad_row", line_no, None, f"{path}: line {line_no} is not valid JSON "
                                               f"({err.msg})")
                continue
            if not isinstance(row, dict):
                flag("bad_row", line_no, None, f"{path}: line {line_no} must be a JSON object")
                continue
            missing = [c for c in REQUIRED_COLUMNS if c not in row]
            for column in missing:
                flag("missing_column", line_no, column,
                     f"{path}: line {line_no} has no column '{column}'; required: "
                     f"{', '.join(REQUIRED_COLUMNS)}{_did_you_mean(column, list(row))}")
            if not missing:
                yield line_no, row


def _did_you_mean(column: str, names: Sequence[Any]) -> str:
    close = difflib.get_close_matches(column, [str(n) for n in names if n not in
                                               REQUIRED_COLUMNS], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
    names = ([str(v).strip() for v in value] if isinstance(value, list)
             else str(value if value is not None else "").split("|"))
    return [n.strip() for n in names if n.strip()]


def _read_classes(path: str | Path) -> list[str]:
    """The label set of ``data.classes_file``: one class name a line, in index order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.classes_file not found: {path} (one class name a line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    twice = [n for n, count in Counter(names).items() if count > 1]
    if twice:
        raise ValueError(f"{path}: class {twice[0]!r} is listed twice")
    if not names:
        raise ValueError(f"{path}: no class names (data.classes_file needs one a line)")
    return names


def _sorted_classes(names: set[str]) -> list[str]:
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _task_type(task: str, rows: list[dict[str, Any]], classes: list[str], path: Path) -> TaskType:
    if task not in MANIFEST_TASKS:
        raise ValueError(f"data.task={task!r} is not valid for a manifest; valid: "
                         f"{', '.join(MANIFEST_TASKS)}")
    multi = next((r for r in rows if len(r["labels"]) > 1), None)
    if task == "auto":
        task = "multilabel" if multi else "binary" if len(classes) == 2 else "multiclass"
    if task != "multilabel" and multi is not None:
        raise ValueError(f"{path}: line {multi['line']} has several labels "
                         f"({'|'.join(multi['labels'])}) but data.task={task}")
    if task == "binary" and len(classes) != 2:
        raise ValueError(f"{path}: data.task=binary needs exactly 2 classes, found "
                         f"{len(classes)}: {', '.join(classes[:10])}")
    if task != "multilabel" and len(classes) < 2:
        raise ValueError(f"{path}: only one class ({classes[0]}); a classifier needs two or more")
    return task  # type: ignore[return-value]


def _assign_splits(rows: list[dict[str, Any]], task_type: TaskType, path: Path) -> None:
    given = [r["split"] for r in rows]
    if any(s is not None for s in given):
        for r in rows:
            if r["split"] is None:
                raise ValueError(f"{path}: line {r['line']}, column 'split' is empty; give every "
                                 "row a split (train, val, test) or drop the column")
            r["split"] = SPLIT_ALIASES[r["split"].strip().lower()]
        return
    strata = [0] * len(rows) if task_type == "multilabel" else [r["labels"][0] for r in rows]
    order = stratified_order(strata, seed=0)
    n_holdout = round(len(rows) * HOLDOUT_FRACTION)
    for pos, i in enumerate(order):
        rows[i]["split"] = "val" if pos < n_holdout else "test" if pos < 2 * n_holdout else "train"


def read_manifest(
    path: str | Path,
    classes_file: str | Path | None = None,
    bad_sample_policy: str = "missing",
    strict: bool = True,
) -> tuple[list[dict[str, Any]], list[Problem]]:
    """Parse and check every row of a manifest; the one reader of loading and ``check_data``.

    Args:
        path: the manifest file.
        classes_file: the label set, one name a line (``data.classes_file``); None: any label.
        bad_sample_policy: decides the actions of ``mmcore.data.validate.KINDS``.
        strict: raise ``ValueError`` at the first problem whose action is "stop" (loading);
            False collects every problem and leaves such rows out (``check_data``).

    Returns:
        The rows kept (dicts with line, id, image: a resolved Path or None, text, labels:
        names, split: as written or None) and the problems found (``fix``es included).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path} (a .csv with header "
                                "image,text,label[,split][,id], or a .jsonl with those keys)")
    if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"{path}: unknown manifest format; use .csv or .jsonl")
    policy, problems = actions(bad_sample_policy), []

    def flag(kind: str, line: int | None, column: str | None, message: str) -> None:
        detail = message.removeprefix(f"{path}: ")  # the problem's file says where
        problems.append(Problem(kind, policy[kind], str(path), line, column, detail))
        if strict and policy[kind] == "stop":
            raise ValueError(message)

    classes = _read_classes(classes_file) if classes_file else None
    rows: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    for line, raw in _rows(path, flag):
        where = f"{path}: line {line}"
        for column, value in raw.items():
            if isinstance(value, str) and has_invalid_utf8(value):
                flag("non_utf8_text", line, column, f"{where}, column '{column}': bytes that "
                                                    "are not UTF-8, replaced by U+FFFD")
                raw[column] = repair_utf8(value)
        image, text = _cell(raw.get("image")), _text_cell(raw.get("text"))
        if image is None and _cell(text) is None:
            flag("empty_row", line, None, f"{where}: both 'image' and 'text' are empty; a row "
                                          "needs at least one")
            continue
        sample_id = _cell(raw.get("id")) or f"line{line}"
        if sample_id in ids:
            flag("duplicate_id", line, "id", f"{where}, column 'id': {sample_id!r} already used "
                                             f"on line {ids[sample_id]}")
            continue
        ids[sample_id] = line
        labels = _label_names(raw.get("label"))
        if not labels:
            flag("empty_label", line, "label", f"{where}, column 'label': empty label")
            continue
        unknown = [n for n in labels if classes is not None and n not in classes]
        if unknown:
            flag("unknown_label", line, "label", f"{where}, column 'label': {unknown[0]!r} is "
                 f"not in the label set {classes_file} ({', '.join(classes[:10])})")
            continue
        split = _cell(raw.get("split"))
        if split is not None and split.strip().lower() not in SPLIT_ALIASES:
            flag("bad_row", line, "split", f"{where}, column 'split': {split!r}; valid: "
                                           f"{', '.join(SPLIT_ALIASES)}")
            continue
        image_path = Path(image) if image is not None else None
        if image_path is not None and not image_path.is_absolute():
            image_path = path.parent / image_path
        rows.append({"line": line, "id": sample_id, "image": image_path, "text": text,
                     "labels": labels, "split": split})
    return rows, problems


def load_manifest(
    path: str | Path,
    split: str,
    task: str = "auto",
    bad_sample_policy: str = "missing",
    classes_file: str | Path | None = None,
) -> MultimodalDataset:
    """Load one split of a CSV / JSONL manifest.

    Args:
        path: the manifest file (``.csv``, or ``.jsonl`` / ``.json`` with one object per line).
        split: "train", "val" or "test".
        task: "auto", "multiclass", "multilabel" or "binary" (``DataConfig.task``).
        bad_sample_policy: for an image path that does not exist: "missing" keeps the row
            without its image (one warning), "skip" drops the row, "stop" raises. Rows
            with a problem whose action is "stop" (``mmcore.data.validate``) always raise.
        classes_file: the label set in index order, one name a line (``data.classes_file``);
            None: the labels the manifest uses, sorted.

    Returns:
        The split as a ``MultimodalDataset`` named after the manifest's file stem.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r} for a manifest; valid: train, val, test")
    path = Path(path)
    rows, problems = read_manifest(path, classes_file, bad_sample_policy)
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    fixed = [p for p in problems if p.kind == "non_utf8_text"]
    if fixed:
        warnings.warn(f"{path}: {len(fixed)} cell(s) with bytes that are not UTF-8, replaced "
                      f"by U+FFFD; first: line {fixed[0].row}, column '{fixed[0].column}'",
                      stacklevel=2)
    classes = (_read_classes(classes_file) if classes_file
               else _sorted_classes({n for r in rows for n in r["labels"]}))
    task_type = _task_type(task, rows, classes, path)
    _assign_splits(rows, task_type, path)
    class_index = {c: i for i, c in enumerate(classes)}
    samples, absent = [], []
    for r in (r for r in rows if r["split"] == split):
        image = r["image"]
        if image is not None and not image.is_file():
            if bad_sample_policy == "stop":
                raise FileNotFoundError(f"{path}: line {r['line']}, column 'image': {image} "
                                        "does not exist")
            absent.append(f"line {r['line']}: {image}")
            if bad_sample_policy == "skip":
                continue
            image = None
        label = tuple(sorted(class_index[n] for n in set(r["labels"])))
        samples.append(Sample(r["id"], image, r["text"], label))
    if absent:
        action = "rows dropped" if bad_sample_policy == "skip" else "kept without their image"
        warnings.warn(f"{path}: {len(absent)} image(s) do not exist ({action}); first: "
                      f"{'; '.join(absent[:3])}", stacklevel=2)
    return MultimodalDataset(samples, classes, task_type, path.stem, split)


__all__ = ["MANIFEST_TASKS", "load_manifest", "read_manifest", "sample_strata",
           "stratified_order", "subset"]
