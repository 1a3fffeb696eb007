"""Build the committed emoji dataset (data/emoji/) from the npm package emoji-datasource-google.

The package (MIT) ships ``emoji.json`` (name, category, code points) and Google's Noto
Emoji as 64 px PNGs (Apache-2.0; flags public domain). One item per base emoji (no
skin-tone variants, no "Component" category):

- image: the 64 px PNG composited onto white (RGB, so nothing needs a fix at load time);
- text: the emoji's name, lower-cased, with every word that contains a word of a category
  name cut (``flag`` in "japan flag", ``symbol``, ``food``, ``place``...), so the text
  never names the label (as the clipart text never does);
- label: the category (9 classes).

Splits are 60/20/20 per category from a seeded shuffle; gender variants of one emoji
("man cook", "woman cook", "cook") and emoji drawn with the same image (Norway, Svalbard
and Bouvet Island share one flag) form one group and share a split.

Run again with ``python scripts/build_emoji.py`` (needs ``npm`` and the npm registry, or
``--source`` pointing at an extracted package). Same package, same files, byte for byte.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

PACKAGE, VERSION = "emoji-datasource-google", "16.0.0"
IMAGE_DIR = "img/google/64"

# Category (label-index order: the package's) -> the word stems of its name that are cut
# from the text wherever they occur inside a word ("places", "activity", "flags").
CATEGORIES: dict[str, tuple[str, ...]] = {
    "Smileys & Emotion": ("smiley", "emotion"),
    "People & Body": ("people", "body"),
    "Animals & Nature": ("animal", "nature"),
    "Food & Drink": ("food", "drink"),
    "Travel & Places": ("travel", "place"),
    "Activities": ("activit",),
    "Objects": ("object",),
    "Symbols": ("symbol",),
    "Flags": ("flag",),
}
SEED = 0
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))

# Code points that only mark gender or presentation; dropped from the group key.
_MARKERS = frozenset({"200D", "FE0F", "2640", "2642"})
# man / woman / person (and boy / girl / child, old man / old woman / older adult) bases.
_PERSONS = {"1F468": "P", "1F469": "P", "1F9D1": "P",
            "1F466": "C", "1F467": "C", "1F9D2": "C",
            "1F474": "O", "1F475": "O", "1F9D3": "O"}
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Emoji:
    """The fields of one ``emoji.json`` entry that the dataset uses."""

    unified: str  # code points, e.g. "1F468-200D-1F373"
    name: str  # as the package spells it ("MAN COOK", "Japan Flag")
    category: str
    subcategory: str
    image: str  # file name under IMAGE_DIR

    @property
    def id(self) -> str:
        return Path(self.image).stem


# --- reading ---------------------------------------------------------------------------------


def fetch_package(workdir: Path) -> Path:
    """``npm pack`` the pinned version into ``workdir`` and extract it; return ``package/``."""
    done = subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--silent"], cwd=workdir,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"npm pack {PACKAGE}@{VERSION} failed: {done.stderr.strip()}")
    tarball = workdir / done.stdout.strip().splitlines()[-1]
    with tarfile.open(tarball) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def read_emoji(package: Path) -> list[Emoji]:
    """Every base emoji outside "Component", in the package's sort order.

    Skin-tone variants live inside their base entry (``skin_variations``) and are not read.
    """
    entries = json.loads((package / "emoji.json").read_text(encoding="utf-8"))
    entries = sorted((e for e in entries if e["category"] != "Component"),
                     key=lambda e: e["sort_order"])
    unknown = {e["category"] for e in entries} - set(CATEGORIES)
    if unknown:
        raise ValueError(f"{package}/emoji.json has categories {sorted(unknown)} not in CATEGORIES")
    return [Emoji(e["unified"], e["name"], e["category"], e["subcategory"], e["image"])
            for e in entries]


# --- text and splits ---------------------------------------------------------------------------


def names_class(word: str) -> bool:
    """True for a word that contains a category-name stem (``flags``, ``marketplace``)."""
    return any(stem in word for stems in CATEGORIES.values() for stem in stems)


def clean_name(name: str) -> str | None:
    """The lower-cased name without the words that name a category; None if nothing is left."""
    kept = [w for w in name.lower().split() if not any(names_class(t) for t in _WORD.findall(w))]
    text = " ".join(kept).strip(" ,:;-")
    return text if _WORD.search(text) else None


def group_key(unified: str) -> str:
    """One key for the gender variants of an emoji: gender signs and joiners are dropped and
    man / woman / person (child, older adult) bases become one symbol."""
    points = [_PERSONS.get(p, p) for p in unified.upper().split("-") if p not in _MARKERS]
    return "-".join(points)


def group_of(items: Sequence[Emoji], digests: dict[str, str]) -> dict[str, str]:
    """Id -> group: emoji linked by a shared ``group_key`` or by identical image bytes
    (``digests``: id -> SHA-256) form one group, named by its first id in ``items``."""
    parent = list(range(len(items)))

    def root(n: int) -> int:
        while parent[n] != n:
            n = parent[n]
        return n

    first: dict[str, int] = {}
    for n, it in enumerate(items):
        for key in (f"code:{group_key(it.unified)}", f"image:{digests[it.id]}"):
            a, b = root(first.setdefault(key, n)), root(n)
            parent[max(a, b)] = min(a, b)
    return {it.id: items[root(n)].id for n, it in enumerate(items)}


def assign_splits(items: Sequence[Emoji], digests: dict[str, str],
                  seed: int = SEED) -> dict[str, str]:
    """Id -> split: per category, groups (``group_of``) in a seeded shuffle go to the split
    furthest below its share (60/20/20). Stratified, and a group never spans two splits."""
    group = group_of(items, digests)
    groups: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for it in items:
        groups[it.category][group[it.id]].append(it.id)
    splits = {}
    for category in CATEGORIES:
        keys = sorted(groups[category])
        random.Random(f"{seed}/{category}").shuffle(keys)
        filled = {name: 0 for name, _ in SPLIT_FRACTIONS}
        for key in keys:
            total = sum(filled.values()) + len(groups[category][key])
            name = max(SPLIT_FRACTIONS, key=lambda s: s[1] * total - filled[s[0]])[0]
            filled[name] += len(groups[category][key])
            splits.update((i, name) for i in groups[category][key])
    return splits


def metadata_rows(items: Sequence[Emoji], digests: dict[str, str],
                  seed: int = SEED) -> list[dict]:
    """One metadata row per emoji: what the loader reads, the package fields it came from
    and the SHA-256 of its image file (``digests``)."""
    splits = assign_splits(items, digests, seed)
    return [{
        "id": it.id,
        "image": f"images/{it.id}.png",
        "text": clean_name(it.name),
        "category": it.category,
        "split": splits[it.id],
        "name": it.name,
        "subcategory": it.subcategory,
        "unified": it.unified,
        "sha256": digests[it.id],
    } for it in items]


# --- images ------------------------------------------------------------------------------------


def flatten_png(src: Path, out: Path) -> None:
    """Composite a PNG (RGBA, LA or P) onto white and save it as an RGB PNG.

    Pillow writes no timestamp, so the same input and Pillow version give the same bytes.
    """
    with Image.open(src) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    Image.alpha_composite(white, rgba).convert("RGB").save(out, format="PNG", optimize=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- main --------------------------------------------------------------------------------------


def build(package: Path, out: Path) -> dict[str, object]:
    """Write images/, metadata.jsonl, classes.json, SOURCE.json and LICENSE-MIT under ``out``.

    Other files there (README.md, the images' LICENSE-Apache-2.0) are left alone.
    """
    items = read_emoji(package)
    if (out / "images").exists():
        shutil.rmtree(out / "images")
    (out / "images").mkdir(parents=True)
    digests = {}
    for it in items:
        flatten_png(package / IMAGE_DIR / it.image, out / "images" / f"{it.id}.png")
        digests[it.id] = sha256(out / "images" / f"{it.id}.png")
    rows = metadata_rows(items, digests)
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "classes.json").write_text(json.dumps({"category": list(CATEGORIES)}, indent=2) + "\n")
    version = json.loads((package / "package.json").read_text())["version"]
    (out / "SOURCE.json").write_text(json.dumps({
        "package": PACKAGE, "version": version, "image_dir": IMAGE_DIR, "seed": SEED,
        "split_fractions": dict(SPLIT_FRACTIONS), "class_word_stems": CATEGORIES,
        "emoji_json_sha256": sha256(package / "emoji.json"),
    }, indent=2) + "\n")
    shutil.copyfile(package / "LICENSE", out / "LICENSE-MIT")
    counts = collections.Counter((r["category"], r["split"]) for r in rows)
    return {"items": len(rows), "counts": {f"{c}/{s}": n for (c, s), n in sorted(counts.items())}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji"))
    parser.add_argument("--source", type=Path, default=None,
                        help=f"an extracted {PACKAGE} package folder (skips npm)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        package = fetch_package(Path(tmp)) if args.source is None else args.source
        if not (package / "emoji.json").is_file() or not (package / IMAGE_DIR).is_dir():
            raise SystemExit(f"{package} must hold emoji.json and {IMAGE_DIR}/")
        summary = build(package, args.out)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
