"""Build the committed OpenClipArt dataset (data/openclipart/) from the Debian packages.

The raw clip art is public domain (OpenClipArt 0.18, Debian ``openclipart-svg`` and
``openclipart-png``). Each SVG carries RDF metadata (title, description, keywords); its
PNG rendering is the image. The text is built from that metadata with every word that
would name the label removed, so neither modality alone solves the task:

- ``category``: multi-class over object-like top-level folders. Their names, variants
  and the names of their sub-folders (``mammals`` says ``animals``) are stripped.
- ``keywords``: multi-label over the most frequent content keywords; those words are
  stripped too (the text is shared by both tasks).

Run again with ``python scripts/build_clipart.py`` (needs ``apt-get`` and the Debian
archive, or ``--source`` pointing at an extracted ``usr/share/openclipart``).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

PACKAGES = ("openclipart-svg", "openclipart-png")

# Object-like top-level folders with >= 40 items; dropped: computer, shapes,
# signs_and_symbols, special, unsorted, logos, buttons (not objects) and
# decorations, science, containers, education (< 30 items once the copies shared with
# another folder are dropped: too few for a 20% test split).
# Value: the words that name the class (stripped from the text as substrings of a word).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "animals": ("animal",),
    "buildings": ("building",),
    "electronics": ("electronic",),
    "food": ("food",),
    "geography": ("geograph",),
    "office": ("office",),
    "people": ("people", "person"),
    "plants": ("plant",),
    "recreation": ("recreation",),
    "tools": ("tool",),
    "transportation": ("transport",),
}

# Keywords that describe the file rather than the picture; never labels, always stripped.
BOILERPLATE = frozenset("""
    hash unsorted clipart clip art openclipart library image picture drawing svg png
    inkscape icon symbol simple white black color colour bw new
""".split())
# Short function words: not labels (the text keeps them).
STOPWORDS = frozenset("a an and the of on in with for to by from at or is it its".split())

NUM_KEYWORDS = 20  # keyword labels: the most frequent content keywords ...
MIN_KEYWORD_COUNT = 30  # ... each on at least this many items (>= ~6 in test)
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
THUMB_SIZE = 224  # square canvas: the ViT's input, so no crop ever cuts the drawing
JPEG_QUALITY = 90
MAX_PIXELS = 200_000_000  # larger PNGs are skipped (decoding one needs > 800 MB)

_NS = {
    "dc": "http://purl.org/dc/elements/1.1/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "cc": "http://web.resource.org/cc/",
}
_SIBILANTS = ("s", "x", "z", "ch", "sh")
_WORD = re.compile(r"[A-Za-z]+|[0-9]+")
_JUNK = re.compile(
    r"HASH\(0x[0-9a-f]+\)|https?://\S+|www\.\S+|\S+@\S+|clip\s*art\s+by\s+[^-]*-?"
    r"|EPS converted from", re.I)


@dataclass(frozen=True)
class Metadata:
    """The RDF fields of one SVG that can describe its picture."""

    title: str
    description: str
    keywords: tuple[str, ...]
    creator: str


@dataclass(frozen=True)
class Item:
    """One clip art item found in the package tree."""

    category: str
    folders: tuple[str, ...]  # sub-folders below the category folder
    svg: Path
    png: Path
    meta: Metadata

    @property
    def stem(self) -> str:
        return self.svg.stem


# --- reading ---------------------------------------------------------------------------------


def fetch_packages(workdir: Path) -> Path:
    """Download the two Debian packages with apt and extract them (no install).

    Returns:
        The extracted ``usr/share/openclipart`` folder (holding ``svg/`` and ``png/``).
    """
    for attempt in range(2):
        done = subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir,
                              capture_output=True, text=True)
        if done.returncode == 0:
            break
        if attempt == 0:
            subprocess.run(["apt-get", "update"], capture_output=True, check=False)
    else:
        raise RuntimeError(f"apt-get download {' '.join(PACKAGES)} failed: {done.stderr.strip()}")
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "root")], check=True)
    return workdir / "root" / "usr" / "share" / "openclipart"


def package_versions(workdir: Path) -> dict[str, str]:
    """Package name -> Debian version, read from the downloaded .deb files."""
    versions = {}
    for deb in sorted(workdir.glob("*.deb")):
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version"],
                                capture_output=True, text=True, check=True).stdout
        info = dict(line.split(": ", 1) for line in fields.strip().splitlines())
        versions[info["Package"]] = info["Version"]
    return versions


def read_metadata(svg: Path) -> Metadata:
    """Parse an SVG's RDF metadata; a broken or bare file gives empty fields, never an error."""
    try:
        work = ET.parse(svg).find(".//cc:Work", _NS)
    except (ET.ParseError, OSError, UnicodeDecodeError):
        work = None
    if work is None:
        return Metadata("", "", (), "")

    def text(path: str) -> str:
        return " ".join((work.findtext(path, default="", namespaces=_NS) or "").split())

    keywords = tuple(" ".join((li.text or "").split())
                     for li in work.findall("dc:subject/rdf:Bag/rdf:li", _NS))
    return Metadata(title=text("dc:title"), description=text("dc:description"),
                    keywords=tuple(k for k in keywords if k),
                    creator=text("dc:creator/cc:Agent/dc:title"))


def collect_items(share: Path, categories: Iterable[str] = CATEGORIES) -> list[Item]:
    """Every SVG under the chosen category folders that has its PNG, sorted by path."""
    items = []
    for category in categories:
        for svg in sorted((share / "svg" / category).rglob("*.svg")):
            rel = svg.relative_to(share / "svg")
            png = (share / "png" / rel).with_suffix(".png")
            if png.is_file():
                items.append(Item(category, rel.parts[1:-1], svg, png, read_metadata(svg)))
    return items


def dedupe(items: Sequence[Item]) -> list[Item]:
    """Drop copies: a file name or content found in two categories has no single label
    (dropped everywhere); a copy inside one category keeps its first path."""
    digest = {it.svg: hashlib.sha1(it.svg.read_bytes()).hexdigest() for it in items}
    cats: dict[str, set[str]] = collections.defaultdict(set)
    for it in items:
        cats[it.svg.name].add(it.category)
        cats[digest[it.svg]].add(it.category)
    kept, seen = [], set()
    for it in items:
        keys = (it.svg.name, digest[it.svg])
        if any(len(cats[k]) > 1 for k in keys) or any(k in seen for k in keys):
            continue
        seen.update(keys)
        kept.append(it)
    return kept


# --- text --------------------------------------------------------------------------------------


def word_forms(word: str) -> set[str]:
    """A word with its singular and plural forms (``berries`` <-> ``berry``, ``box`` <-> ``boxes``)."""
    w = word.lower()
    singular = {w}
    if w.endswith("ies"):
        singular.add(w[:-3] + "y")
    elif w.endswith("es") and w[:-2].endswith(_SIBILANTS):
        singular.add(w[:-2])
    elif w.endswith("s") and not w.endswith("ss"):
        singular.add(w[:-1])
    forms = set(singular)
    for s in singular - {w} or {w}:
        forms.add(s + "es" if s.endswith(_SIBILANTS) else s + "s")
        if len(s) > 1 and s.endswith("y") and s[-2] not in "aeiou":
            forms.add(s[:-1] + "ies")
    return forms


def folder_words(items: Iterable[Item]) -> set[str]:
    """Words of every sub-folder name (``breads_and_carbs`` -> bread, carb, ...): each
    sits inside one category, so it gives the label away."""
    words = set()
    for it in items:
        for folder in it.folders:
            words.update(w for w in _WORD.findall(folder.replace("_", " ")) if len(w) > 2)
    return {form for w in words - STOPWORDS for form in word_forms(w)}


def canonical_keyword(keyword: str, vocabulary: set[str]) -> str:
    """Lower-case a keyword and fold a plural onto its singular when that singular is used."""
    k = " ".join(keyword.lower().split())
    for cut in ("ies", "es", "s"):
        if k.endswith(cut):
            stem = k[: -len(cut)] + ("y" if cut == "ies" else "")
            if stem in vocabulary:
                return stem
    return k


def names_class(word: str) -> bool:
    """True for a word containing a class name (``seafood``, ``transportation``)."""
    w = word.lower()
    return any(stem in w for stems in CATEGORIES.values() for stem in stems)


def choose_keyword_labels(items: Sequence[Item], banned: set[str]) -> list[str]:
    """The most frequent single-word content keywords that do not name a category.

    Args:
        items: the deduplicated items.
        banned: words that may not be labels (boilerplate, creator names).

    Returns:
        Every keyword on at least ``MIN_KEYWORD_COUNT`` items, most frequent first (ties
        by name); ``build`` keeps the first ``NUM_KEYWORDS`` found in every split.
    """
    vocabulary = {k.lower() for it in items for k in it.meta.keywords}
    counts = collections.Counter(
        k for it in items for k in {canonical_keyword(x, vocabulary) for x in it.meta.keywords})
    ok = [(n, k) for k, n in counts.items()
          if n >= MIN_KEYWORD_COUNT and k.isalpha() and len(k) > 2
          and k not in banned and k not in STOPWORDS and not names_class(k)]
    return [k for _, k in sorted(ok, key=lambda t: (-t[0], t[1]))]


def item_keyword_labels(item: Item, labels: Sequence[str], vocabulary: set[str]) -> list[str]:
    """The label keywords an item carries, in label order."""
    mine = {canonical_keyword(k, vocabulary) for k in item.meta.keywords}
    return [k for k in labels if k in mine]


def clean_text(meta: Metadata, banned: set[str]) -> str | None:
    """Title, description and keywords joined, with every banned word and class name cut.

    Underscores and hyphens split words first, so ``apple_bitten`` cannot hide a word.

    Returns:
        The cleaned text, or None when no word is left (a real missing text).
    """
    creator = {w.lower() for w in _WORD.findall(meta.creator) if len(w) > 2}
    parts, seen = [], set()
    for part in (meta.title, meta.description, ", ".join(meta.keywords)):
        part = _JUNK.sub(" ", part).replace("_", " ")
        words = [w for w in re.split(r"[\s\-]+", part) if w]
        kept = []
        for w in words:
            core = w.strip(".,;:!?()[]\"'").lower()
            tokens = [t.lower() for t in _WORD.findall(w)]
            if any(t in banned or t in creator or names_class(t) for t in tokens):
                continue
            if core and not any(t.isalpha() for t in tokens):
                continue  # bare numbers ("01") are file-name noise
            kept.append(w)
        line = " ".join(kept).strip(" ,.;:-")
        line = re.sub(r"\s*,(\s*,)+", ",", line).strip(" ,")
        if line and line.lower() not in seen:
            seen.add(line.lower())
            parts.append(line)
    text = ". ".join(parts)
    return text if re.search(r"[A-Za-z]{2,}", text) else None


# --- split and images --------------------------------------------------------------------------


def group_key(stem: str) -> str:
    """Variants of one drawing (``pizza_cheese_bw``, ``bus1``/``bus2``...) share a key, so
    they land in one split. Digits and the ``bw`` tag are dropped."""
    words = [w for w in re.split(r"[_\-.\s]+", stem.lower()) if w and w != "bw"]
    return "_".join(re.sub(r"\d+", "", w) for w in words).strip("_") or stem.lower()


def assign_splits(items: Sequence[Item]) -> dict[str, str]:
    """Stem -> split: per category, groups in hash order go to the split furthest below
    its share (70/10/20).

    Deterministic (sha1, no RNG), stratified (each category is split on its own) and
    leak-free (a group never spans two splits).
    """
    by_cat: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for it in items:
        by_cat[it.category][group_key(it.stem)].append(it.stem)
    splits = {}
    for groups in by_cat.values():
        filled = {name: 0 for name, _ in SPLIT_FRACTIONS}
        for key in sorted(groups, key=lambda k: hashlib.sha1(k.encode()).hexdigest()):
            total = sum(filled.values()) + len(groups[key])
            name = max(SPLIT_FRACTIONS, key=lambda s: s[1] * total - filled[s[0]])[0]
            filled[name] += len(groups[key])
            splits.update((stem, name) for stem in groups[key])
    return splits


def make_thumbnail(png: Path, out: Path, size: int = THUMB_SIZE) -> None:
    """Flatten onto white, shrink to fit ``size`` and centre on a ``size`` x ``size`` canvas."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(png) as im:
            if im.width * im.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{png}: {im.width}x{im.height} pixels")
            im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            rgba = im.convert("RGBA")
    canvas = Image.new("RGB", (size, size), "white")
    canvas.paste(rgba, ((size - rgba.width) // 2, (size - rgba.height) // 2), rgba)
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY)


# --- main --------------------------------------------------------------------------------------


def build(share: Path, out: Path, versions: dict[str, str]) -> dict[str, object]:
    """Write images/, metadata.jsonl and classes.json under ``out``; return a summary."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    items = dedupe(collect_items(share))
    creators = {w.lower() for it in items for w in _WORD.findall(it.meta.creator) if len(w) > 2}
    base_banned = set(BOILERPLATE) | folder_words(items)
    vocabulary = {k.lower() for it in items for k in it.meta.keywords}
    splits = assign_splits(items)
    candidates = choose_keyword_labels(items, BOILERPLATE | creators)
    in_split = collections.defaultdict(set)
    for it in items:
        for k in item_keyword_labels(it, candidates, vocabulary):
            in_split[k].add(splits[it.stem])
    labels = [k for k in candidates if len(in_split[k]) == len(SPLIT_FRACTIONS)][:NUM_KEYWORDS]
    banned = base_banned | {form for k in labels for form in word_forms(k)}

    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    rows, skipped = [], []
    for it in items:
        try:
            make_thumbnail(it.png, out / "images" / f"{it.stem}.jpg")
        except (OSError, Image.DecompressionBombError) as err:
            skipped.append(f"{it.png.name}: {err}")
            continue
        rows.append({
            "id": it.stem,
            "image": f"images/{it.stem}.jpg",
            "text": clean_text(it.meta, banned),
            "category": it.category,
            "keywords": item_keyword_labels(it, labels, vocabulary),
            "split": splits[it.stem],
            "source": str(it.svg.relative_to(share / "svg")),
        })
    with open(out / "metadata.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    classes = {"category": sorted(CATEGORIES), "keywords": labels}
    (out / "classes.json").write_text(json.dumps(classes, indent=2) + "\n")
    (out / "SOURCE.json").write_text(json.dumps(
        {"packages": versions, "banned_words": sorted(banned), "skipped": skipped},
        indent=2) + "\n")
    return {"items": len(rows), "skipped": skipped, "labels": labels}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/openclipart"))
    parser.add_argument("--source", type=Path, default=None,
                        help="an extracted usr/share/openclipart (skips apt-get)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.source is None:
            share, versions = fetch_packages(Path(tmp)), package_versions(Path(tmp))
        else:
            share, versions = args.source, {p: "unknown (--source)" for p in PACKAGES}
        if not (share / "svg").is_dir() or not (share / "png").is_dir():
            raise SystemExit(f"{share} must hold svg/ and png/ (usr/share/openclipart)")
        summary = build(share, args.out, versions)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
