"""What every dataset hands to the model: raw samples in, one padded ``Batch`` out.

A dataset is a list of ``Sample`` records (paths and strings, nothing decoded) plus its
label names and task type. Decoding, tokenising and the missing-modality table are
applied by the collator, so real missingness (a row without image or text) and
simulated missingness (the protocol's table) travel the same path: ``has_image`` and
``has_text`` in the ``Batch``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmcore.choice_lists import TaskType


@dataclass(frozen=True)
class Sample:
    """One example as stored on disk; ``image``/``text`` are None where the modality is absent."""

    id: str
    image: Path | None
    text: str | None
    label: tuple[int, ...]  # class index (multiclass/binary: one entry) or label indices


class MultimodalDataset(Dataset):
    """A split of a dataset: samples, label names and task type. Items are raw ``Sample``s."""

    def __init__(
        self,
        samples: Sequence[Sample],
        classes: Sequence[str],
        task_type: TaskType,
        name: str,
        split: str,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.task_type: TaskType = task_type
        self.name = name
        self.split = split

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[int, Sample]:
        return index, self.samples[index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name}/{self.split}: {len(self)} samples, "
                f"{self.num_classes} classes, {self.task_type})")


@dataclass
class Batch:
    """A collated batch. Rows whose modality is missing hold zeros there and are never encoded."""

    index: Tensor  # (B,) long: position of each sample in its split (keys the missing table)
    pixel_values: Tensor  # (B, 3, H, W) float
    input_ids: Tensor  # (B, L) long, padded to the batch's longest text
    attention_mask: Tensor  # (B, L) long, 1 = real token
    has_image: Tensor  # (B,) bool
    has_text: Tensor  # (B,) bool
    labels: Tensor  # (B,) long for multiclass/binary; (B, C) float for multilabel
    # frozen encoders: each modality's cached original tokens (mmcore.prompt_cache) stand in
    # for pixel_values / input_ids, which are then empty
    image_tokens: Any = None  # mmcore.cached_forward.TokenCache | None
    text_tokens: Any = None  # mmcore.cached_forward.TokenCache | None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None
                        else getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})

    def __len__(self) -> int:
        return self.index.shape[0]


def read_metadata(path: Path, required: Sequence[str]) -> list[dict]:
    """The records of a committed dataset's JSONL metadata; a bad line names file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{number}: missing field {missing[0]!r}")
            rows.append(row)
    return rows


def require_files(root: Path, dataset: str, names: Sequence[str], rebuild: str) -> None:
    """A committed dataset's folder must hold ``names``; the error says how to rebuild it."""
    for name in names:
        if not (root / name).exists():
            listed = ", ".join(names[:-1]) + f" and {names[-1]}/"
            raise FileNotFoundError(f"{dataset} dataset folder {root} lacks {name}: it should "
                                    f"hold {listed}; {rebuild}")
