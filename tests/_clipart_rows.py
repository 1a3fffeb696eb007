"""A small real manifest for CLI and fault tests: rows of the committed OpenClipArt data."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

CLIPART = Path(__file__).resolve().parents[1] / "data" / "openclipart"


def clipart_rows(per_class: int = 20, classes: int = 3) -> list[dict]:
    """The first ``per_class`` rows with a text of each of the first ``classes`` categories."""
    chosen: dict[str, list[dict]] = {}
    with open(CLIPART / "metadata.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            group = chosen.setdefault(row["category"], [])
            if row["text"] and len(group) < per_class and len(chosen) <= classes:
                group.append(row)
    return [r for group in list(chosen.values())[:classes] for r in group]


def write_manifest(folder: Path, per_class: int = 20, classes: int = 3,
                   name: str = "manifest.csv") -> Path:
    """``folder/name`` (image,text,label) with the images copied to ``folder/images``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "text", "label"])
        for row in clipart_rows(per_class, classes):
            shutil.copy(CLIPART / row["image"], folder / row["image"])
            writer.writerow([row["image"], row["text"], row["category"]])
    return path
