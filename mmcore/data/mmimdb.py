"""MM-IMDb (Arevalo et al., 2017): movie posters and plots, 23 genres, multilabel.

Two layouts are read, the original archive's and MAP's rearranged copy::

    <root>/dataset/<id>.jpeg, <root>/dataset/<id>.json, <root>/split.json   (original;
                                                       <root> may also be its parent)
    <root>/images/<id>.jpeg, <root>/labels/<id>.json, <root>/split.json      (MAP)

``split.json`` has keys ``train``, ``dev``, ``test`` (our train / val / test) listing
ids without "tt". Each movie's JSON is an IMDbPY dump, parsed tolerantly:

- ``genres``: a list (or a single string); matched case-insensitively to the 23 genres
  below, in their standard order; other genres (e.g. "News") are ignored. A movie
  with none of the 23 keeps an all-zero target.
- ``plot``: a list of strings (or one string). MAP makes one sample per plot; here a
  movie is one sample and keeps its *longest* plot, so that every split counts movies
  (15,552 / 2,608 / 7,799) and the missing table is per movie. IMDbPY's trailing
  ``::author`` credit is stripped. Without ``plot``, ``plot outline`` is used; without
  either, the movie has no text (real missingness).

An id of ``split.json`` without its JSON file is dropped (one warning); an id without
its poster keeps the path, and the collator applies ``bad_sample_policy``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from mmcore.data.base import MultimodalDataset, Sample

GENRES = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror",
    "Documentary", "Mystery", "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History",
    "Music", "Animation", "Musical", "Western", "Sport", "Short", "Film-Noir",
)
SPLIT_KEYS = {"train": "train", "val": "dev", "test": "test"}
LAYOUT = """expected an MM-IMDb layout, either the original archive's:
  <root>/split.json                      (keys train, dev, test: ids without "tt")
  <root>/dataset/<id>.jpeg, <root>/dataset/<id>.json   (or <root>/mmimdb/...)
or MAP's rearranged copy:
  <root>/split.json, <root>/images/<id>.jpeg, <root>/labels/<id>.json
Get it from https://archive.org/download/mmimdb (mmimdb.tar.gz, the authors' archive);
nothing is downloaded for you."""

_GENRE_INDEX = {g.lower(): i for i, g in enumerate(GENRES)}


def _layout(root: Path) -> tuple[Path, Path, Path]:
    """(split.json, image folder, JSON folder) of whichever layout ``root`` holds."""
    for base in (root, root / "mmimdb"):
        if (base / "split.json").is_file() and (base / "dataset").is_dir():
            return base / "split.json", base / "dataset", base / "dataset"
    if (root / "split.json").is_file() and (root / "labels").is_dir():
        return root / "split.json", root / "images", root / "labels"
    raise FileNotFoundError(f"mmimdb: no MM-IMDb layout under {root}; {LAYOUT}")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value if v is not None]


def longest_plot(record: dict[str, Any]) -> str | None:
    """The longest plot of an IMDbPY record, without its ``::author`` credit."""
    plots = [p.split("::")[0].strip() for p in _as_list(record.get("plot"))]
    plots = [p for p in plots if p] or [p.strip() for p in _as_list(record.get("plot outline"))
                                        if p.strip()]
    return max(plots, key=len) if plots else None


def genre_labels(record: dict[str, Any]) -> tuple[int, ...]:
    """Sorted indices into ``GENRES`` of the record's genres; others are ignored."""
    found = {_GENRE_INDEX.get(g.strip().lower()) for g in _as_list(record.get("genres"))}
    return tuple(sorted(i for i in found if i is not None))


def load_mmimdb(root: str | Path, split: str) -> MultimodalDataset:
    """Load a split of MM-IMDb.

    Args:
        root: the folder holding ``split.json`` (either layout).
        split: "train", "val" (``dev`` in split.json) or "test".

    Returns:
        A multilabel ``MultimodalDataset`` over the 23 genres.
    """
    if split not in SPLIT_KEYS:
        raise ValueError(f"split={split!r} for mmimdb; valid: {', '.join(SPLIT_KEYS)}")
    split_file, image_dir, json_dir = _layout(Path(root))
    try:
        ids = json.loads(split_file.read_text())[SPLIT_KEYS[split]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{split_file}: needs keys train, dev, test listing ids "
                         f"({err!r})") from None
    samples, dropped = [], []
    for movie_id in map(str, ids):
        json_path = json_dir / f"{movie_id}.json"
        try:
            record = json.loads(json_path.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            dropped.append(movie_id)
            continue
        except json.JSONDecodeError as err:
            raise ValueError(f"{json_path}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{json_path}: expected a JSON object (an IMDbPY record)")
        samples.append(Sample(movie_id, image_dir / f"{movie_id}.jpeg", longest_plot(record),
                              genre_labels(record)))
    if dropped:
        warnings.warn(f"mmimdb/{split}: {len(dropped)} ids of {split_file} have no JSON in "
                      f"{json_dir} and are dropped (first: {', '.join(dropped[:5])})", stacklevel=2)
    return MultimodalDataset(samples, GENRES, "multilabel", "mmimdb", split)


__all__ = ["GENRES", "genre_labels", "load_mmimdb", "longest_plot"]
