"""Reliability of inputs: find every bad file and row before training, and decide what to do.

Data scraped from the web is full of surprises. Each kind of bad input has one action,
used both by the validation pass (``check_data``, ``python -m mmcore check-data``) and
by the loaders and ``Collator`` during training, so a report made before a run says
exactly what the run will do with each row:

- ``fix``: use the input after a documented repair;
- ``missing``: drop that modality of the row (the method predicts it from the other);
- ``skip``: drop the row;
- ``stop``: refuse the dataset (the report's exit code is 1; a loader raises).

===================  =======  ==================================================
kind                 default  meaning (and the fix)
===================  =======  ==================================================
no_image             missing  the row names no image: real missingness
empty_text           missing  the row has no text or an empty one: real missingness
missing_file         policy   the image path does not exist or is not a file
empty_file           policy   the image file has zero bytes
truncated_image      policy   the image file ends early
corrupt_image        policy   not a decodable image (wrong bytes, unknown format)
decompression_bomb   policy   more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``; never decoded
grayscale_image      fix      1-bit or 8-bit gray: converted to RGB
cmyk_image           fix      CMYK: converted to RGB
other_mode_image     fix      YCbCr, LAB, HSV: converted to RGB
deep_image           fix      16/32-bit integer or float: scaled to 8 bits by its depth
alpha_image          fix      RGBA, LA, PA: composited on white
palette_image        fix      a palette (P) image: converted (transparency over white)
animated_image       fix      several frames: the first is used
whitespace_text      policy   the text is only whitespace
long_text            fix      over 16 characters per token of ``max_text_length``: cut
non_utf8_text        fix      bytes that are not UTF-8: each replaced by U+FFFD
unknown_label        stop     a label outside the label set
empty_label          stop     the row has no label
duplicate_id         stop     an id used twice (the split may leak; a human decides)
missing_column       stop     a required manifest column is absent
bad_row              stop     a manifest row that cannot be parsed (or a bad split)
empty_row            stop     a manifest row with neither image nor text
empty_split          stop     a split without samples
batch_too_large      stop     ``optim.batch_size`` exceeds the training split
load_error           stop     the dataset's loader refused it (its message says why)
===================  =======  ==================================================

"policy" follows ``data.bad_sample_policy``: "missing" (the default), "skip" or "stop".
Real missingness is the method's own case and is never an error under any policy.
"""
from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from mmcore.config import Config
    from mmcore.data.base import MultimodalDataset

ACTIONS = ("fix", "missing", "skip", "stop")
BAD_SAMPLE_POLICIES = ("missing", "skip", "stop")
POLICY = "policy"  # a default that follows data.bad_sample_policy
REAL_MISSING = ("no_image", "empty_text")
KINDS: dict[str, str] = {  # kind -> default action (see the table above)
    "no_image": "missing", "empty_text": "missing",
    "missing_file": POLICY, "empty_file": POLICY, "truncated_image": POLICY,
    "corrupt_image": POLICY, "decompression_bomb": POLICY,
    "grayscale_image": "fix", "cmyk_image": "fix", "other_mode_image": "fix",
    "deep_image": "fix", "alpha_image": "fix", "palette_image": "fix", "animated_image": "fix",
    "whitespace_text": POLICY, "long_text": "fix", "non_utf8_text": "fix",
    "unknown_label": "stop", "empty_label": "stop", "duplicate_id": "stop",
    "missing_column": "stop", "bad_row": "stop", "empty_row": "stop",
    "empty_split": "stop", "batch_too_large": "stop", "load_error": "stop",
}
CHARS_PER_TOKEN = 16  # a token covers at least one character, so the cut keeps every token used
_MODE_KINDS = {
    "1": "grayscale_image", "L": "grayscale_image", "CMYK": "cmyk_image",
    "YCbCr": "other_mode_image", "LAB": "other_mode_image", "HSV": "other_mode_image",
    "I": "deep_image", "F": "deep_image", "I;16": "deep_image", "I;16L": "deep_image",
    "I;16B": "deep_image", "I;16N": "deep_image",
    "RGBA": "alpha_image", "RGBa": "alpha_image", "LA": "alpha_image", "La": "alpha_image",
    "PA": "alpha_image", "P": "palette_image",
}


def actions(bad_sample_policy: str = "missing") -> dict[str, str]:
    """The action for every kind of bad input under ``data.bad_sample_policy``.

    Args:
        bad_sample_policy: "missing", "skip" or "stop"; it decides the kinds whose default
            is "policy" (an unreadable image, a whitespace text).

    Returns:
        kind -> "fix" | "missing" | "skip" | "stop".
    """
    if bad_sample_policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"bad_sample_policy={bad_sample_policy!r}; valid: "
                         f"{', '.join(BAD_SAMPLE_POLICIES)}")
    return {k: bad_sample_policy if a == POLICY else a for k, a in KINDS.items()}


class BadInput(ValueError):
    """An input that cannot be used as it is; ``kind`` keys the policy table."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- images ----------------------------------------------------------------------------------


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency is composited on white.

    Handles 1 / L / P / CMYK / YCbCr (plain conversion), LA / RGBA / P with transparency
    (alpha over white) and 16- or 32-bit integer grayscale (scaled by its bit depth, where
    PIL's own conversion would clip to white).
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / (65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0)
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncated files fail here), upright per EXIF, as RGB.

    Raises:
        BadInput: for a missing, empty, truncated or corrupt file or a decompression bomb.
    """
    with open_image(path) as image:
        try:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            raise _decode_error(path, err) from err


def open_image(path: str | Path) -> Image.Image:
    """Open an image's header without decoding its pixels; refuse empty files and bombs.

    Raises:
        BadInput: kind ``missing_file``, ``empty_file``, ``decompression_bomb`` or
            ``corrupt_image``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput("missing_file", f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise BadInput("empty_file", f"{path}: empty image file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise BadInput("decompression_bomb", f"{path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - PIL raises many types for foreign bytes
        raise BadInput("corrupt_image", f"{path}: not a readable image "
                                        f"({type(err).__name__}: {err})") from err
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise BadInput("decompression_bomb", f"{path}: {image.width}x{image.height} pixels is "
                                             f"over PIL.Image.MAX_IMAGE_PIXELS={limit}")
    return image


def inspect_image(path: str | Path) -> list[BadInput]:
    """What is wrong with one image file, found cheaply.

    Reads the header; then a PNG is verified chunk by chunk (CRCs, no decompression)
    and a JPEG that ends with its end-of-image marker is taken as whole. Only the rest
    is decoded (a JPEG at 1/8 scale): other formats, JPEGs without the marker (truncated,
    or trailing bytes) and images needing a mode conversion, which is then done as
    training will do it.

    Returns:
        One ``BadInput`` per problem; an empty list for a clean RGB image.
    """
    try:
        image = open_image(path)
    except BadInput as bad:
        return [bad]
    with image:
        found = [BadInput(kind, f"{path}: mode {image.mode} converted to RGB")
                 for kind in [_MODE_KINDS.get(image.mode)] if kind]
        if getattr(image, "n_frames", 1) > 1:
            found.append(BadInput("animated_image", f"{path}: {image.n_frames} frames; the "
                                                    "first is used"))
        try:
            if image.format == "PNG" and not found:
                image.verify()
            elif found or image.format != "JPEG" or not _ends_with_jpeg_eoi(path):
                if image.format == "JPEG":
                    image.draft(image.mode, (max(image.width // 8, 1), max(image.height // 8, 1)))
                image.load()
                if found:
                    to_rgb(image)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            return [_decode_error(path, err)]
    return found


def _ends_with_jpeg_eoi(path: str | Path, tail: int = 1024) -> bool:
    """True if the end-of-image marker FF D9 is in the file's last bytes (entropy-coded
    data escapes every FF, so the marker cannot occur by chance there)."""
    with open(path, "rb") as f:
        f.seek(max(Path(path).stat().st_size - tail, 0))
        return b"\xff\xd9" in f.read()


def _decode_error(path: str | Path, err: Exception) -> BadInput:
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return BadInput("truncated_image" if truncated else "corrupt_image",
                    f"{path}: {'truncated' if truncated else 'corrupt'} image "
                    f"({type(err).__name__}: {err})")


# --- texts -----------------------------------------------------------------------------------


def max_text_chars(max_text_length: int) -> int:
    """Characters kept of a text: more than ``max_text_length`` tokens can ever use."""
    return CHARS_PER_TOKEN * max_text_length


def has_invalid_utf8(text: str) -> bool:
    """True if ``text`` holds undecodable bytes (lone surrogates, as ``surrogateescape`` reads)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def repair_utf8(text: str) -> str:
    """Each undecodable byte (or lone surrogate) as U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte, e.g. JSON "\\ud800"
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def inspect_text(text: str | None, max_chars: int) -> list[BadInput]:
    """What is wrong with one text: absent, whitespace, undecodable bytes, too long."""
    if not text:
        return [BadInput("empty_text", "no text")]
    if not text.strip():
        return [BadInput("whitespace_text", f"text is only whitespace ({len(text)} characters)")]
    found = []
    if has_invalid_utf8(text):
        found.append(BadInput("non_utf8_text", "bytes that are not UTF-8; replaced by U+FFFD"))
    if len(text) > max_chars:
        found.append(BadInput("long_text", f"{len(text)} characters; cut to {max_chars}"))
    return found


def clean_text(text: str, max_chars: int) -> str:
    """The ``fix`` of a usable text: undecodable bytes replaced, cut to ``max_chars``."""
    if has_invalid_utf8(text):
        text = repair_utf8(text)
    return text[:max_chars]


# --- the report ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem: its kind, the action taken, and where (file, line or row, column)."""

    kind: str
    action: str
    file: str | None  # the image for image problems, else the manifest / metadata file
    row: int | None  # line number in that file (1-based, as an editor shows it) where known
    column: str | None
    detail: str
    split: str | None = None
    sample_id: str | None = None


@dataclass
class Report:
    """The outcome of ``check_data``: every problem, split sizes and what was checked."""

    dataset: str
    data_root: str
    bad_sample_policy: str
    problems: list[Problem] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    images_checked: int = 0
    texts_checked: int = 0
    seconds: float = 0.0

    @property
    def stops(self) -> list[Problem]:
        return [p for p in self.problems if p.action == "stop"]

    @property
    def exit_code(self) -> int:
        """1 if any problem stops the run, else 0."""
        return 1 if self.stops else 0

    def counts(self) -> dict[tuple[str, str], int]:
        """(kind, action) -> number of problems, in table order."""
        order = list(KINDS)
        found = Counter((p.kind, p.action) for p in self.problems)
        return dict(sorted(found.items(), key=lambda item: order.index(item[0][0])))

    def format(self, per_kind: int = 5) -> str:
        """The report as text: a summary per kind, then the first rows of each kind."""
        sizes = ", ".join(f"{s} {n}" for s, n in self.split_sizes.items())
        lines = [f"check-data {self.dataset} at {self.data_root} ({sizes or 'not loaded'}; "
                 f"{self.images_checked} images and {self.texts_checked} texts checked in "
                 f"{self.seconds:.1f} s; bad_sample_policy={self.bad_sample_policy})"]
        if not self.problems:
            return "\n".join([*lines, "no problems found"])
        lines += ["", f"{'kind':<20} {'action':<8} {'count':>6}"]
        for (kind, action), n in self.counts().items():
            note = "  (real missingness, not an error)" if kind in REAL_MISSING else ""
            lines.append(f"{kind:<20} {action:<8} {n:>6}{note}")
        lines += ["", f"{'kind':<20} {'action':<8} {'row':>6} {'column':<8} file: detail"]
        shown = Counter()
        for p in self.problems:
            shown[p.kind] += 1
            if shown[p.kind] <= per_kind:
                row = "" if p.row is None else p.row
                lines.append(f"{p.kind:<20} {p.action:<8} {row!s:>6} {p.column or '':<8} "
                             f"{p.file or '-'}: {p.detail}")
        hidden = sum(max(n - per_kind, 0) for n in shown.values())
        if hidden:
            lines.append(f"... and {hidden} more (all in the JSON report)")
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


# --- the validation pass ---------------------------------------------------------------------


def check_data(cfg: Config, progress: bool | None = None) -> Report:
    """Check every split of the dataset ``cfg.data`` names, reporting each problem once.

    Checks the files (manifest columns and rows, labels, ids), every image the splits
    use (see ``inspect_image``), every text, split sizes and ``optim.batch_size``. It never
    raises for bad data: a loader's refusal becomes a ``load_error`` problem.

    Args:
        cfg: the run's configuration (``data`` section, ``optim.batch_size``).
        progress: show a progress bar; defaults to ``cfg.run.progress``.

    Returns:
        A ``Report``; its ``exit_code`` is 1 if any problem's action is "stop".
    """
    from mmcore.data import SPLITS, load_dataset  # mmcore.data imports this module

    tic, data = time.perf_counter(), cfg.data
    policy = actions(data.bad_sample_policy)
    report = Report(data.dataset, data.data_root, data.bad_sample_policy)
    entries: list[_Entry] = []
    structural_stop = False
    if data.dataset == "manifest":
        structural_stop, entries = _scan_manifest(cfg, report.problems)
    datasets: dict[str, MultimodalDataset] = {}
    if not structural_stop:
        for split in SPLITS[data.dataset]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # what loaders warn about is reported below
                    datasets[split] = load_dataset(data, split)
            except Exception as err:  # noqa: BLE001 - a refusal is reported, never raised
                report.problems.append(Problem("load_error", "stop", data.data_root, None, None,
                                               f"{type(err).__name__}: {err}", split))
                break
    report.split_sizes = {s: len(d) for s, d in datasets.items()}
    if data.dataset != "manifest":
        entries = _dataset_entries(datasets, data.data_root, data.dataset)
    report.problems += _check_entries(entries, policy, max_text_chars(data.max_text_length),
                                      cfg.run.progress if progress is None else progress)
    report.problems += _check_splits(datasets, cfg, policy)
    report.images_checked = len({e.image for e in entries if e.image is not None})
    report.texts_checked = sum(e.text is not None for e in entries)
    report.seconds = time.perf_counter() - tic
    return report


def main_check_data(cfg: Config, out: str | Path | None = None) -> int:
    """Run ``check_data``, print the report, save it as JSON; the exit code for the CLI.

    Args:
        cfg: the run's configuration.
        out: where to save the JSON report (default ``<run.out_dir>/check_data.json``).

    Returns:
        0 if the data can be trained on, 1 if any problem stops the run.
    """
    report = check_data(cfg)
    path = report.save(out or Path(cfg.run.out_dir) / "check_data.json")
    print(report.format())
    print(f"report saved to {path}")
    return report.exit_code


@dataclass(frozen=True)
class _Entry:
    """One sample to check: its image path and text, and where to point a reader."""

    file: str | None
    row: int | None
    split: str | None
    sample_id: str
    image: Path | None
    text: str | None


def _scan_manifest(cfg: Config, problems: list[Problem]) -> tuple[bool, list[_Entry]]:
    """Every row of a manifest file checked; (any structural stop, entries of the rows kept)."""
    from mmcore.data.manifest import read_manifest  # mmcore.data imports this module

    path = Path(cfg.data.data_root)
    try:
        rows, found = read_manifest(path, cfg.data.classes_file or None,
                                    cfg.data.bad_sample_policy, strict=False)
    except (OSError, ValueError) as err:
        problems.append(Problem("load_error", "stop", str(path), None, None, str(err)))
        return True, []
    problems += found
    entries = [_Entry(str(path), r["line"], r["split"], r["id"], r["image"], r["text"])
               for r in rows]
    return any(p.action == "stop" for p in found), entries


def _dataset_entries(datasets: dict[str, MultimodalDataset], root: str, name: str
                     ) -> list[_Entry]:
    """Entries of loaded splits; rows are metadata lines for clipart, else unknown."""
    lines: dict[str, int] = {}
    source = root
    if name == "clipart" and datasets:
        source = str(Path(root) / "metadata.jsonl")
        with open(source, encoding="utf-8") as f:
            lines = {json.loads(line)["id"]: n for n, line in enumerate(f, 1) if line.strip()}
    return [_Entry(source, lines.get(s.id), split, s.id, s.image, s.text)
            for split, ds in datasets.items() for s in ds.samples]


def _check_entries(entries: Sequence[_Entry], policy: dict[str, str], max_chars: int,
                   progress: bool) -> list[Problem]:
    """Image and text problems of every entry; each distinct image file is opened once."""
    paths = sorted({e.image for e in entries if e.image is not None})
    with ThreadPoolExecutor() as pool:  # PIL releases the GIL while decoding
        found = dict(zip(paths, tqdm(pool.map(inspect_image, paths), total=len(paths),
                                     desc="check images", disable=not progress)))
    problems = []
    for e in entries:
        image_bad = [BadInput("no_image", "the row names no image")] if e.image is None \
            else found[e.image]
        for bad in image_bad:
            where = e.file if e.image is None else str(e.image)
            problems.append(Problem(bad.kind, policy[bad.kind], where, e.row, "image",
                                    _short(bad, e.image), e.split, e.sample_id))
        for bad in inspect_text(e.text, max_chars):
            problems.append(Problem(bad.kind, policy[bad.kind], e.file, e.row, "text", str(bad),
                                    e.split, e.sample_id))
    return problems


def _short(bad: BadInput, image: Path | None) -> str:
    """The message without its leading path (the report's file column holds it)."""
    text = str(bad)
    prefix = f"{image}: "
    return text[len(prefix):] if image is not None and text.startswith(prefix) else text


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
    if train is not None and 0 < len(train) < cfg.optim.batch_size:
        problems.append(Problem(
            "batch_too_large", policy["batch_too_large"], None, None, "optim.batch_size",
            f"optim.batch_size={cfg.optim.batch_size} is larger than the training split "
            f"({len(train)} samples); valid: 1..{len(train)}", "train"))
    return problems


__all__ = [
    "ACTIONS",
    "BAD_SAMPLE_POLICIES",
    "BadInput",
    "KINDS",
    "Problem",
    "Report",
    "actions",
    "check_data",
    "clean_text",
    "inspect_image",
    "inspect_text",
    "load_rgb",
    "main_check_data",
    "max_text_chars",
    "open_image",
    "repair_utf8",
    "to_rgb",
]
