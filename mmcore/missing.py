"""The missing-modality protocol of MAP (Lee et al., CVPR 2023), seeded and saved.

For one split of ``n`` samples, a missing rate ``eta`` and a type, ``int(n * eta)``
samples lose a modality: their text (``text``), their image (``image``), or half of
them each (``both``; no sample loses both). MAP drew its tables unseeded and never
published them; here a table is a pure function of ``(n, rate, type, seed)``, is saved
as JSON next to the results, and is checked when loaded, so every method is scored on
identical missingness.

Two decisions beyond MAP:

- Tables are *nested*: the missing samples are a prefix of one seeded permutation of
  the split, so for a fixed seed the samples missing at rate 0.3 are also missing at
  rate 0.7. A rate curve then changes only by the samples added, which makes it smoother.
- ``both`` alternates along that prefix: positions 0, 2, 4, ... lose their text and
  1, 3, 5, ... their image. The text-missing set is therefore ``ceil(k / 2)`` and the
  image-missing set ``floor(k / 2)`` of the ``k = int(n * eta)`` samples, and both sets
  stay nested across rates (a first-half/second-half split would not).

Real missingness: the table is drawn over the whole split, but it never takes a row's
only modality, so no row ends with neither. A row that really lacks its text keeps its
image when the table picks it for ``image`` (and the other way round); it counts as
its real missingness, so on data with real gaps the simulated rate is a lower bound.

``int(n * eta)`` is computed as ``floor(n * eta + 1e-9)`` so that float error does not
drop a sample (``100 * 0.29`` is ``28.999...`` in floating point).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmcore.checkpoint import atomic_write
from mmcore.choice_lists import MissingType, check_choice, choices
from mmcore.config import MissingConfig

# the sweep's order: text, image, both
MISSING_TYPES: tuple[str, ...] = tuple(reversed(choices(MissingType)))


def num_missing(n: int, rate: float) -> int:
    """``int(n * rate)`` as MAP computes it, robust to float error."""
    return math.floor(n * rate + 1e-9)


@dataclass(frozen=True)
class MissingTable:
    """Which samples of one split lose their text or image. Indices are sorted and disjoint."""

    dataset: str
    split: str
    missing_type: MissingType
    missing_rate: float
    seed: int
    n: int
    text_missing: tuple[int, ...]
    image_missing: tuple[int, ...]

    @classmethod
    def build(
        cls,
        n: int,
        missing_rate: float,
        missing_type: MissingType,
        seed: int,
        dataset: str = "",
        split: str = "",
    ) -> "MissingTable":
        """Draw the table for a split of ``n`` samples.

        Args:
            n: number of samples in the split.
            missing_rate: eta in [0, 1]; ``int(n * eta)`` samples lose a modality.
            missing_type: "text", "image" or "both" (half lose each).
            seed: seed of ``numpy.random.default_rng``; independent of the run seed.
            dataset: dataset name, recorded in the saved file.
            split: split name, recorded in the saved file.

        Returns:
            The table; nested in ``missing_rate`` for a fixed seed and ``n``.
        """
        if n < 0:
            raise ValueError(f"a split cannot have n={n} samples")
        if not 0.0 <= missing_rate <= 1.0:
            raise ValueError(f"missing_rate={missing_rate} is out of range; valid: [0, 1]")
        check_choice("missing_type", missing_type, MissingType)
        if seed < 0:
            raise ValueError(f"missing_seed={seed} must be >= 0")
        chosen = np.random.default_rng(seed).permutation(n)[: num_missing(n, missing_rate)]
        if missing_type == "text":
            text, image = chosen, chosen[:0]
        elif missing_type == "image":
            text, image = chosen[:0], chosen
        else:
            text, image = chosen[0::2], chosen[1::2]
        return cls(dataset, split, missing_type, float(missing_rate), int(seed), int(n),
                   tuple(sorted(int(i) for i in text)), tuple(sorted(int(i) for i in image)))

    # --- masks ----------------------------------------------------------------------------

    @cached_property
    def text_mask(self) -> np.ndarray:
        """(n,) bool: True where the table removes the text."""
        mask = np.zeros(self.n, dtype=bool)
        mask[list(self.text_missing)] = True
        mask.flags.writeable = False
        return mask

    @cached_property
    def image_mask(self) -> np.ndarray:
        """(n,) bool: True where the table removes the image."""
        mask = np.zeros(self.n, dtype=bool)
        mask[list(self.image_missing)] = True
        mask.flags.writeable = False
        return mask

    def apply(self, index: Tensor, has_image: Tensor, has_text: Tensor) -> tuple[Tensor, Tensor]:
        """Combine real availability with the table for the samples at ``index``.

        Args:
            index: (B,) long positions in the split.
            has_image: (B,) bool, real image availability.
            has_text: (B,) bool, real text availability.

        Returns:
            ``(has_image, has_text)``: real availability AND NOT removed by the table,
            except that no row loses its only modality (see the module's note).
        """
        idx = index.cpu().numpy()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"sample index {int(idx.max())} outside the missing table of "
                             f"{self.dataset}/{self.split} (n={self.n})")
        drop_image = torch.from_numpy(self.image_mask[idx]).to(has_image.device) & has_text
        drop_text = torch.from_numpy(self.text_mask[idx]).to(has_text.device) & has_image
        return has_image & ~drop_image, has_text & ~drop_text

    # --- persistence ----------------------------------------------------------------------

    def digest(self) -> str:
        """SHA-256 of the table's content; a saved file carries it to detect edits."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (with its digest); returns the path."""
        record = {**asdict(self), "sha256": self.digest()}
        return atomic_write(path, json.dumps(record).encode())

    @classmethod
    def load(cls, path: str | Path, n: int | None = None) -> "MissingTable":
        """Read a saved table, verify its digest and, if given, its split size ``n``."""
        path = Path(path)
        try:
            record = json.loads(path.read_text())
            expected = record.pop("sha256")
            table = cls(**{**record, "text_missing": tuple(record["text_missing"]),
                           "image_missing": tuple(record["image_missing"])})
        except FileNotFoundError:
            raise FileNotFoundError(f"missing table not found: {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a missing table ({err})") from None
        if table.digest() != expected:
            raise ValueError(f"{path}: content does not match its sha256; the table was edited "
                             "or corrupted. Delete it to draw it again from its seed.")
        if n is not None and table.n != n:
            raise ValueError(f"{path}: table is for n={table.n} samples but "
                             f"{table.dataset}/{table.split} has {n}; the dataset changed "
                             "(or limit_samples did). Delete the table to draw a new one.")
        return table

    def file_name(self) -> str:
        """``missing_<dataset>_<split>_<type>_<rate>_seed<seed>.json``."""
        return table_file_name(self.dataset, self.split, self.missing_type, self.missing_rate,
                               self.seed)


def table_file_name(dataset: str, split: str, missing_type: str, rate: float, seed: int) -> str:
    """The file name a table is saved under, one per (dataset, split, type, rate, seed)."""
    return f"missing_{dataset}_{split}_{missing_type}_{rate:g}_seed{seed}.json"


def table_for_split(missing_cfg: MissingConfig, dataset: str, split: str, n: int) -> MissingTable:
    """The table a split gets under a ``MissingConfig``.

    The ``train`` split follows ``missing_train``: "complete" gives an empty table,
    "missing" the same rate and type as evaluation. Every other split gets the configured
    rate and type.
    """
    rate = missing_cfg.missing_rate
    if split == "train" and missing_cfg.missing_train == "complete":
        rate = 0.0
    return MissingTable.build(n, rate, missing_cfg.missing_type, missing_cfg.missing_seed,
                              dataset=dataset, split=split)


def load_or_build(
    directory: str | Path, missing_cfg: MissingConfig, dataset: str, split: str, n: int
) -> MissingTable:
    """Reuse the table saved in ``directory`` for this setting, or draw and save it.

    A saved table must match the split size and the drawn table exactly (same seed, rate
    and type give the same indices); a mismatch means the file or the sampler changed and
    is an error rather than a silent redraw.
    """
    table = table_for_split(missing_cfg, dataset, split, n)
    path = Path(directory) / table.file_name()
    if not path.exists():
        table.save(path)
        return table
    saved = MissingTable.load(path, n=n)
    if saved != table:
        raise ValueError(f"{path}: saved table differs from the one its seed gives; "
                         "delete it or use another results folder")
    return saved


__all__ = ["MISSING_TYPES", "MissingTable", "load_or_build", "num_missing", "table_file_name",
           "table_for_split"]
