"""Turn a list of raw ``Sample``s into one ``Batch``: decode, tokenise, mark availability.

A modality is available for a row when the sample has it (real missingness) and the
missing table does not remove it (simulated missingness). Unavailable modalities are
never decoded: such rows get a zero image and a pad-only text row, and
``has_image`` / ``has_text`` tell the model not to encode them.

A bad sample follows the per-kind table of ``mmcore.data.problems``, the same one
``check-data`` reports with: mode conversions and over-long or undecodable texts, or
texts with control characters, are fixed; an image that cannot be read (missing, empty,
truncated, corrupt, a decompression bomb) or a whitespace-only text follows
``bad_sample_policy``: "missing" treats that modality as missing (with a warning naming
the file or sample), "stop" raises, "skip" drops the row. An empty text is real missingness. A batch whose rows are all skipped
comes back with zero rows; loops should skip it.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import Tensor

from mmcore.data.base import Batch, Sample, TaskType
from mmcore.data.images import load_rgb, to_rgb
from mmcore.data.problems import BAD_SAMPLE_POLICIES, BadInput, actions
from mmcore.data.texts import clean_text, inspect_text, max_text_chars
from mmcore.missing import MissingTable

UNLABELLED = -100  # label of a sample without ground truth (cross_entropy's ignore_index)


class BadSampleError(ValueError):
    """An image or text cannot be used and ``bad_sample_policy`` is "stop"."""


class Collator:
    """Collate ``(index, Sample)`` pairs into a ``Batch`` (use as a DataLoader ``collate_fn``).

    Args:
        tokenizer: a Hugging Face tokenizer (``mmcore.encoders.load_tokenizer``).
        image_transform: PIL RGB image -> (3, H, W) float tensor
            (``mmcore.encoders.image_transform``).
        max_text_length: texts are truncated to this many tokens.
        num_classes: number of classes (multi-hot width for multilabel).
        task_type: "multiclass", "binary" or "multilabel".
        missing_table: the split's simulated missingness, or None for none.
        bad_sample_policy: "missing", "skip" or "stop" for unreadable images and
            whitespace texts (``mmcore.data.problems.actions``).
    """

    def __init__(
        self,
        tokenizer: Any,
        image_transform: Callable[[Image.Image], Tensor],
        max_text_length: int,
        num_classes: int,
        task_type: TaskType,
        missing_table: MissingTable | None = None,
        bad_sample_policy: str = "missing",
    ) -> None:
        self.actions = actions(bad_sample_policy)  # raises naming the valid policies
        if task_type not in ("multiclass", "binary", "multilabel"):
            raise ValueError(f"task_type={task_type!r}; valid: multiclass, binary, multilabel")
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.max_text_length = max_text_length
        self.num_classes = num_classes
        self.task_type = task_type
        self.missing_table = missing_table
        self.bad_sample_policy = bad_sample_policy
        self.max_text_chars = max_text_chars(max_text_length)
        self._image_shape: tuple[int, ...] | None = None

    def __call__(self, items: Sequence[tuple[int, Sample]]) -> Batch:
        index = torch.tensor([i for i, _ in items], dtype=torch.long)
        has_image = torch.tensor([s.image is not None for _, s in items], dtype=torch.bool)
        has_text = torch.tensor([s.text is not None for _, s in items], dtype=torch.bool)
        if self.missing_table is not None:
            has_image, has_text = self.missing_table.apply(index, has_image, has_text)
        keep = torch.ones(len(items), dtype=torch.bool)

        images: dict[int, Tensor] = {}
        for row in has_image.nonzero().flatten().tolist():
            try:
                image = load_rgb(items[row][1].image)
            except BadInput as bad:
                self._bad(bad.kind, str(bad), row, has_image, keep)
                continue
            images[row] = self.image_transform(image)
        texts: dict[int, str] = {}
        for row in has_text.nonzero().flatten().tolist():
            sample = items[row][1]
            unusable = [b for b in inspect_text(sample.text, self.max_text_chars)
                        if self.actions[b.kind] != "fix"]
            if not unusable:
                texts[row] = clean_text(sample.text, self.max_text_chars)
            elif unusable[0].kind == "empty_text":  # real missingness, not a bad sample
                has_text[row] = False
            else:
                self._bad(unusable[0].kind, f"sample {sample.id!r}: {unusable[0]}", row,
                          has_text, keep)

        rows = keep.nonzero().flatten()
        pixel_values = self._stack_images(images, rows.tolist())
        input_ids, attention_mask = self._tokenize(texts, rows.tolist())
        return Batch(
            index=index[rows],
            pixel_values=pixel_values,  # (B, 3, H, W)
            input_ids=input_ids,  # (B, L)
            attention_mask=attention_mask,  # (B, L)
            has_image=has_image[rows],
            has_text=has_text[rows],
            labels=self._labels([items[r][1] for r in rows.tolist()]),
        )

    def _bad(self, kind: str, message: str, row: int, available: Tensor, keep: Tensor) -> None:
        """Apply the action of ``kind`` to one row's modality."""
        action = self.actions[kind]
        if action == "stop":
            raise BadSampleError(f"{message} [{kind}] (bad_sample_policy="
                                 f"{self.bad_sample_policy!r})")
        available[row] = False
        if action == "skip":
            keep[row] = False
            warnings.warn(f"{message}; sample skipped", stacklevel=3)
        else:
            warnings.warn(f"{message}; treated as missing", stacklevel=3)

    def _stack_images(self, images: dict[int, Tensor], rows: list[int]) -> Tensor:
        """(B, 3, H, W): decoded images where present, zeros elsewhere."""
        if images:
            self._image_shape = tuple(next(iter(images.values())).shape)
        elif self._image_shape is None:  # no image seen yet: ask the transform for its size
            self._image_shape = tuple(self.image_transform(Image.new("RGB", (256, 256))).shape)
        out = torch.zeros(len(rows), *self._image_shape)
        for b, row in enumerate(rows):
            if row in images:
                out[b] = images[row]
        return out

    def _tokenize(self, texts: dict[int, str], rows: list[int]) -> tuple[Tensor, Tensor]:
        """(B, L) ids and mask, L = the longest kept text; absent texts are pad-only rows."""
        present = [r for r in rows if r in texts]
        if present:
            enc = self.tokenizer([texts[r] for r in present], padding="longest", truncation=True,
                                 max_length=self.max_text_length, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        else:
            ids = mask = torch.zeros(0, 1, dtype=torch.long)
        input_ids = torch.full((len(rows), ids.shape[1]), self.tokenizer.pad_token_id,
                               dtype=torch.long)
        attention_mask = torch.zeros(len(rows), ids.shape[1], dtype=torch.long)
        position = {r: b for b, r in enumerate(rows)}
        for k, r in enumerate(present):
            input_ids[position[r]] = ids[k]
            attention_mask[position[r]] = mask[k]
        return input_ids, attention_mask

    def _labels(self, samples: list[Sample]) -> Tensor:
        """(B,) long for multiclass / binary, (B, C) multi-hot float for multilabel."""
        for s in samples:
            bad = [c for c in s.label if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f"sample {s.id!r}: label {bad[0]} is out of range for "
                                 f"{self.num_classes} classes")
        if self.task_type == "multilabel":
            out = torch.zeros(len(samples), self.num_classes)
            for b, s in enumerate(samples):
                out[b, list(s.label)] = 1.0
            return out
        for s in samples:
            if len(s.label) > 1:
                raise ValueError(f"sample {s.id!r} has {len(s.label)} labels but the task is "
                                 f"{self.task_type}")
        return torch.tensor([s.label[0] if s.label else UNLABELLED for s in samples],
                            dtype=torch.long)


__all__ = ["BAD_SAMPLE_POLICIES", "BadSampleError", "Collator", "UNLABELLED", "load_rgb", "to_rgb"]
