"""The validation pass: every bad file and row of a dataset, found before training.

``check_data`` reads the dataset the way training will (the same readers, the same
per-kind actions of ``mmcore.data.problems``), opens every image once, reads every text,
and returns a ``Report``: each problem with file, line, column and the action training
takes, the split sizes, the task and the class list. ``python -m mmcore check-data``
prints it, and ``train`` runs it first and stops on the same report.
"""
from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from mmcore.checkpoint import write_json
from mmcore.config import Config
from mmcore.data import SPLITS, load_dataset
from mmcore.data.base import MultimodalDataset
from mmcore.data.images import file_digest, inspect_image
from mmcore.data.manifest import read_manifest
from mmcore.data.problems import KINDS, REAL_MISSING, BadInput, Problem, actions
from mmcore.data.texts import inspect_text, max_text_chars

STOP_EXIT_CODE = 2  # the CLI's exit status when the data cannot be trained on


@dataclass
class Report:
    """The outcome of ``check_data``: every problem, the task, classes and split sizes."""

    dataset: str
    data_root: str
    bad_sample_policy: str
    problems: list[Problem] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    task_type: str | None = None
    task_reason: str = ""
    classes: list[str] = field(default_factory=list)
    images_checked: int = 0
    texts_checked: int = 0
    seconds: float = 0.0

    @property
    def stops(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "stop"]

    @property
    def exit_code(self) -> int:
        """``STOP_EXIT_CODE`` if any problem stops the run, else 0."""
        return STOP_EXIT_CODE if self.stops else 0

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, action) -> number of problems, in table order."""
        order = list(KINDS)
        found = Counter((p.kind, p.action) for p in self.problems)
        return dict(sorted(found.items(), key=lambda item: order.index(item[0][0])))

    def task_line(self) -> str:
        """The task and the class list, as training will use them."""
        if self.task_type is None:
            return "task: unknown (the data did not load)"
        shown = ", ".join(self.classes[:30]) + (" ..." if len(self.classes) > 30 else "")
        reason = f" ({self.task_reason})" if self.task_reason else ""
        return f"task: {self.task_type}{reason}; {len(self.classes)} classes: {shown}"

    def format(self, per_kind: int = 5) -> str:
        """The report as text: a summary per kind, then the first rows of each kind."""
        sizes = ", ".join(f"{s} {n}" for s, n in self.split_sizes.items())
        lines = [f"check-data {self.dataset} at {self.data_root} ({sizes or 'not loaded'}; "
                 f"{self.images_checked} images and {self.texts_checked} texts checked in "
                 f"{self.seconds:.1f} s; bad_sample_policy={self.bad_sample_policy})",
                 self.task_line()]
        if not self.problems:
            return "\n".join([*lines, "no problems found"])
        lines += ["", f"{'kind':<20} {'action':<8} {'count':>6}"]
        for (kind, action), n in self.counts().items():
            note = "  (real missingness, not an error)" if kind in REAL_MISSING else ""
            lines.append(f"{kind:<20} {action:<8} {n:>6}{note}")
        lines += ["", f"{'kind':<20} {'action':<8} file:line: column: detail"]
        shown: Counter[str] = Counter()
        for p in self.problems:
            shown[p.kind] += 1
            if shown[p.kind] <= per_kind:
                lines.append(f"{p.kind:<20} {p.action:<8} {p.where()}: {p.detail}")
        hidden = sum(max(n - per_kind, 0) for n in shown.values())
        if hidden:
            lines.append(f"... and {hidden} more (check-data --report FILE saves them all)")
        bad = sum(p.kind not in REAL_MISSING for p in self.problems)
        verdict = (f"STOP: {len(self.stops)} problem(s) must be fixed before training"
                   if self.stops else f"OK: {bad} problem(s), each with a fix or a fallback"
                   if bad else "OK: no problems; only real missingness")
        return "\n".join([*lines, "", verdict])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code,
                "counts": [{"kind": k, "action": a, "count": n}
                           for (k, a), n in self.counts().items()]}

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON (every problem, not only those printed)."""
        return write_json(path, self.to_dict())


@dataclass(frozen=True)
class _Entry:
    """One sample to check: its image path and text, and where to point a reader."""

    file: str | None
    row: int | None
    split: str | None
    sample_id: str
    image: Path | None
    text: str | None


def check_data(cfg: Config, progress: bool | None = None) -> Report:
    """Check every split of the dataset ``cfg.data`` names, reporting each problem once.

    Checks the files (manifest columns and rows, labels, ids, duplicates and leaks),
    every image the splits use (``inspect_image``, and its content against the other
    splits'), every text, split sizes and ``optim.batch_size``. It never raises for bad
    data: a loader's refusal becomes a ``load_error`` problem.

    Args:
        cfg: the run's configuration (``data`` section, ``optim.batch_size``).
        progress: show a progress bar; defaults to ``cfg.run.progress``.

    Returns:
        A ``Report``; its ``exit_code`` is ``STOP_EXIT_CODE`` if any problem stops.
    """
    tic, data = time.perf_counter(), cfg.data
    report = Report(data.dataset, data.data_root, data.bad_sample_policy)
    entries: list[_Entry] = []
    stopped = False
    if data.dataset == "manifest":
        stopped, entries = _scan_manifest(cfg, report)
    datasets: dict[str, MultimodalDataset] = {}
    if not stopped:
        for split in SPLITS[data.dataset]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # what loaders warn about is reported below
                    datasets[split] = load_dataset(data, split)
            except Exception as err:  # noqa: BLE001 - a refusal is reported, never raised
                report.problems.append(Problem("load_error", "stop", data.data_root, None, None,
                                               f"{type(err).__name__}: {err}", split))
                break
    if datasets:
        first = next(iter(datasets.values()))
        report.task_type, report.classes = first.task_type, list(first.classes)
    report.split_sizes = {s: len(d) for s, d in datasets.items()}
    if data.dataset != "manifest":
        entries = _dataset_entries(datasets, data.data_root, data.dataset)
    policy = actions(data.bad_sample_policy)
    report.problems += _check_entries(entries, policy, max_text_chars(data.max_text_length),
                                      cfg.run.progress if progress is None else progress,
                                      same_path_reported=data.dataset == "manifest")
    report.problems += _check_splits(datasets, cfg, policy)
    report.images_checked = len({e.image for e in entries if e.image is not None})
    report.texts_checked = sum(e.text is not None for e in entries)
    report.seconds = time.perf_counter() - tic
    return report


def _scan_manifest(cfg: Config, report: Report) -> tuple[bool, list[_Entry]]:
    """Every row of a manifest file checked; (any stop, entries of the rows kept)."""
    data = cfg.data
    try:
        manifest = read_manifest(data.data_root, data.task, data.classes_file or None,
                                 data.bad_sample_policy, strict=False,
                                 allow_outside_root=data.allow_outside_root)
    except (OSError, ValueError) as err:
        report.problems.append(Problem("load_error", "stop", data.data_root, None, None,
                                       str(err)))
        return True, []
    report.problems += manifest.problems
    report.task_type, report.task_reason = manifest.task_type, manifest.task_reason
    report.classes = manifest.classes
    entries = [_Entry(str(manifest.path), r["line"], r["split"], r["id"], r["image"], r["text"])
               for r in manifest.rows]
    return any(p.action == "stop" for p in manifest.problems), entries


def _dataset_entries(datasets: dict[str, MultimodalDataset], root: str, name: str
                     ) -> list[_Entry]:
    """Entries of loaded splits; rows are metadata lines where the dataset has one file."""
    lines: dict[str, int] = {}
    source = root
    metadata = Path(root) / "metadata.jsonl"
    if datasets and metadata.is_file():
        source = str(metadata)
        with open(metadata, encoding="utf-8") as f:
            lines = {json.loads(line).get("id"): n for n, line in enumerate(f, 1) if line.strip()}
    return [_Entry(source, lines.get(s.id), split, s.id, s.image, s.text)
            for split, ds in datasets.items() for s in ds.samples]


def _inspect(path: Path) -> tuple[list[BadInput], str | None]:
    """An image's problems and, if it can be read, the digest of its bytes."""
    found = inspect_image(path)
    readable = not any(KINDS[b.kind] == "policy" for b in found)
    return found, file_digest(path) if readable else None


def _check_entries(entries: Sequence[_Entry], policy: dict[str, str], max_chars: int,
                   progress: bool, same_path_reported: bool) -> list[Problem]:
    """Image and text problems of every entry; each distinct image file is opened once."""
    paths = sorted({e.image for e in entries if e.image is not None})
    with ThreadPoolExecutor() as pool:  # PIL and hashlib release the GIL
        found = dict(zip(paths, tqdm(pool.map(_inspect, paths), total=len(paths),
                                     desc="check images", disable=not progress)))
    problems = []
    for e in entries:
        image_bad = [BadInput("no_image", "the row names no image")] if e.image is None \
            else found[e.image][0]
        for bad in image_bad:
            problems.append(Problem(bad.kind, policy[bad.kind], e.file, e.row, "image",
                                    str(bad), e.split, e.sample_id))
        for bad in inspect_text(e.text, max_chars):
            problems.append(Problem(bad.kind, policy[bad.kind], e.file, e.row, "text", str(bad),
                                    e.split, e.sample_id))
    digests = {path: digest for path, (_, digest) in found.items() if digest is not None}
    return problems + _same_content(entries, digests, policy, same_path_reported)


def _same_content(entries: Sequence[_Entry], digests: dict[Path, str], policy: dict[str, str],
                  same_path_reported: bool) -> list[Problem]:
    """An image whose bytes appear in another split: a leak with the same text, else shared."""
    first: dict[str, _Entry] = {}
    problems = []
    for e in entries:
        digest = digests.get(e.image) if e.image is not None else None
        if digest is None:
            continue
        seen = first.setdefault(digest, e)
        if seen.split == e.split or (same_path_reported and seen.image == e.image):
            continue  # the manifest reader compares paths itself
        kind = "split_leak" if seen.text == e.text else "shared_image"
        problems.append(Problem(kind, policy[kind], e.file, e.row, "image",
                                f"{e.image} ({e.split}) has the same bytes as {seen.image}, "
                                f"the image of {seen.file}:{seen.row} ({seen.split})"
                                + (" with the same text" if kind == "split_leak" else ""),
                                e.split, e.sample_id))
    return problems


def _check_splits(datasets: dict[str, MultimodalDataset], cfg: Config,
                  policy: dict[str, str]) -> list[Problem]:
    """Empty splits, labels out of range, ids used twice, and a batch larger than the data."""
    problems, seen = [], {}
    root = cfg.data.data_root
    for split, ds in datasets.items():
        if len(ds) == 0:
            problems.append(Problem("empty_split", policy["empty_split"], root, None, None,
                                    f"split {split!r} has no samples", split))
        for s in ds.samples:
            bad = [c for c in s.label if not 0 <= c < ds.num_classes]
            if bad:
                problems.append(Problem("unknown_label", policy["unknown_label"], root, None,
                                        "label", f"label index {bad[0]} is not one of the "
                                        f"{ds.num_classes} classes", split, s.id))
            if s.id in seen and cfg.data.dataset != "manifest":  # the manifest scan reports it
                problems.append(Problem("duplicate_id", policy["duplicate_id"], root, None,
                                        "id", f"id {s.id!r} also in split {seen[s.id]!r}",
                                        split, s.id))
            seen.setdefault(s.id, split)
    train = datasets.get("train")
    if train is not None and len(train) and (problem := batch_size_problem(cfg, len(train))):
        problems.append(Problem("batch_too_large", policy["batch_too_large"], None, None,
                                "optim.batch_size", problem, "train"))
    return problems


def batch_size_problem(cfg: Config, train_size: int) -> str | None:
    """Why ``optim.batch_size`` does not fit a training split of ``train_size``, or None."""
    if cfg.optim.batch_size <= train_size:
        return None
    return (f"optim.batch_size={cfg.optim.batch_size} is larger than the training split "
            f"({train_size} samples); valid: 1..{train_size}")


__all__ = ["Report", "STOP_EXIT_CODE", "batch_size_problem", "check_data"]
