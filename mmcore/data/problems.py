"""What can be wrong with a dataset's inputs, and the one action taken for each kind.

Data scraped from the web is full of surprises. Each kind of bad input has one action,
used both by the validation pass (``mmcore.data.check``, ``python -m mmcore check-data``)
and by the loaders and ``Collator`` during training, so a report made before a run says
exactly what the run will do with each row:

- ``fix``: use the input after a documented repair;
- ``warn``: use the input as it is; the report points at it for a human to judge;
- ``missing``: drop that modality of the row (the method predicts it from the other);
- ``skip``: drop the row;
- ``stop``: refuse the dataset (the CLI prints the whole report and exits with 2).

===================  =======  ==================================================
kind                 default  meaning (and the fix)
===================  =======  ==================================================
no_image             missing  the row names no image: real missingness
empty_text           missing  the row has no text or an empty one: real missingness
missing_file         policy   the image path does not exist or is not a file
outside_root         policy   the image path (after symlinks) leaves the manifest's
                              folder; never opened (``data.allow_outside_root``)
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
whitespace_text      policy   the text is only whitespace (or control characters)
long_text            fix      over 16 characters per token of ``max_text_length``: cut
non_utf8_text        fix      bytes that are not UTF-8: each replaced by U+FFFD
control_text         fix      NUL or other control characters: removed
shared_image         warn     the same image file or content in two splits, other text
duplicate_row        skip     a row repeating an earlier one (image, text, label, split)
split_leak           stop     the same image and text in two splits (train/test leak)
unknown_label        stop     a label outside the label set
empty_label          stop     the row has no label
label_case           stop     a label differing from another only in case or spacing
unseen_label         stop     a label with no training row (only in val or test)
ambiguous_task       stop     task=auto, and too few rows have several labels to call
                              the task multilabel: fix them or set data.task
duplicate_id         stop     an id used twice (the split may leak; a human decides)
missing_column       stop     a required manifest column is absent
field_count          stop     a CSV row with more or fewer fields than its header
                              (often an unquoted comma in a text)
merged_rows          stop     an unclosed quote runs the following lines into one text
bad_row              stop     a row that cannot be parsed, a bad split or a bad value
empty_row            stop     a manifest row with neither image nor text
empty_split          stop     a split without samples
batch_too_large      stop     ``optim.batch_size`` exceeds the training split
load_error           stop     the dataset's loader refused it (its message says why)
===================  =======  ==================================================

"policy" follows ``data.bad_sample_policy``: "missing" (the default), "skip" or "stop".
Real missingness is the method's own case and is never an error under any policy.
"""
from __future__ import annotations

from dataclasses import dataclass

from mmcore.choice_lists import BadSamplePolicy, choices

ACTIONS = ("fix", "warn", "missing", "skip", "stop")
BAD_SAMPLE_POLICIES = choices(BadSamplePolicy)
POLICY = "policy"  # a default that follows data.bad_sample_policy
REAL_MISSING = ("no_image", "empty_text")
KINDS: dict[str, str] = {  # kind -> default action (see the table above)
    "no_image": "missing", "empty_text": "missing",
    "missing_file": POLICY, "outside_root": POLICY, "empty_file": POLICY,
    "truncated_image": POLICY, "corrupt_image": POLICY, "decompression_bomb": POLICY,
    "grayscale_image": "fix", "cmyk_image": "fix", "other_mode_image": "fix",
    "deep_image": "fix", "alpha_image": "fix", "palette_image": "fix", "animated_image": "fix",
    "whitespace_text": POLICY, "long_text": "fix", "non_utf8_text": "fix", "control_text": "fix",
    "shared_image": "warn", "duplicate_row": "skip", "split_leak": "stop",
    "unknown_label": "stop", "empty_label": "stop", "label_case": "stop",
    "unseen_label": "stop", "ambiguous_task": "stop", "duplicate_id": "stop",
    "missing_column": "stop", "field_count": "stop", "merged_rows": "stop", "bad_row": "stop",
    "empty_row": "stop", "empty_split": "stop", "batch_too_large": "stop", "load_error": "stop",
}


def actions(bad_sample_policy: str = "missing") -> dict[str, str]:
    """The action for every kind of bad input under ``data.bad_sample_policy``.

    Args:
        bad_sample_policy: "missing", "skip" or "stop"; it decides the kinds whose default
            is "policy" (an unreadable or outside image, a whitespace text).

    Returns:
        kind -> "fix" | "warn" | "missing" | "skip" | "stop".
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


class DataError(ValueError):
    """The data cannot be trained on as it is; the message names file, line and column."""


@dataclass(frozen=True)
class Problem:
    """One problem: its kind, the action taken, and where (file, line, column)."""

    kind: str
    action: str
    file: str | None  # the image for image problems, else the manifest / metadata file
    row: int | None  # line number in that file (1-based, as an editor shows it) where known
    column: str | None
    detail: str
    split: str | None = None
    sample_id: str | None = None

    def where(self) -> str:
        """``file:line: column 'c'``, the way compilers point at a place."""
        place = ":".join(str(p) for p in (self.file or "-", self.row) if p is not None)
        return f"{place}: column '{self.column}'" if self.column else place


__all__ = ["ACTIONS", "BAD_SAMPLE_POLICIES", "BadInput", "DataError", "KINDS", "POLICY",
           "Problem", "REAL_MISSING", "actions"]
