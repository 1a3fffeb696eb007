"""The committed OpenClipArt dataset, its loader, and the build script's pure functions."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _scripts import load_script
from PIL import Image

from mmcore.data.clipart import SPLITS, TASKS, load_clipart

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "openclipart"


def _load_builder():
    return load_script("scripts/build_clipart.py")


B = _load_builder()


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def classes() -> dict[str, list[str]]:
    return json.loads((DATA / "classes.json").read_text())


# --- the committed data ------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("split", SPLITS)
def test_loader_counts_match_metadata(rows, classes, task, split):
    ds = load_clipart(DATA, task, split)
    wanted = [r for r in rows if r["split"] == split and (task == "category" or r["keywords"])]
    assert len(ds) == len(wanted) > 0
    assert ds.task_type == TASKS[task] and ds.name == "clipart" and ds.split == split
    assert ds.classes == classes[task]
    for sample, row in zip(ds.samples, wanted):
        assert sample.id == row["id"]
        names = [row["category"]] if task == "category" else row["keywords"]
        assert [ds.classes[i] for i in sample.label] == sorted(names, key=ds.classes.index)
        assert sample.text == row["text"]  # None stays None: real missingness
    if task == "category":
        assert all(len(s.label) == 1 for s in ds.samples)


def test_some_texts_are_really_missing(rows):
    ds = load_clipart(DATA, "category", "train")
    missing = sum(s.text is None for s in ds.samples)
    assert missing == sum(r["text"] is None for r in rows if r["split"] == "train") > 0
    assert all(s.text is None or s.text.strip() for s in ds.samples)


@pytest.mark.parametrize("task", list(TASKS))
def test_splits_disjoint_and_stratified(task):
    parts = {split: load_clipart(DATA, task, split) for split in SPLITS}
    ids = [{s.id for s in ds.samples} for ds in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for split, ds in parts.items():
        present = {i for s in ds.samples for i in s.label}
        assert present == set(range(ds.num_classes)), f"{task}/{split} lacks a class"
    if task == "category":  # each class is split close to 70/10/20
        total = sum(len(ds) for ds in parts.values())
        for c in range(parts["train"].num_classes):
            n = {k: sum(s.label == (c,) for s in ds.samples) for k, ds in parts.items()}
            assert abs(n["train"] / sum(n.values()) - 0.7) < 0.12, n
        assert abs(len(parts["test"]) / total - 0.2) < 0.02


def test_no_label_word_left_in_text(rows, classes):
    words = {form for k in classes["keywords"] for form in B.word_forms(k)}
    stems = [s for names in B.CATEGORIES.values() for s in names] + classes["category"]
    for row in rows:
        if row["text"] is None:
            continue
        text = row["text"].lower()
        assert not any(s in text for s in stems), (row["id"], row["text"])
        tokens = set(re.findall(r"[a-z]+", text))
        assert not tokens & words, (row["id"], tokens & words)


def test_no_variant_of_a_drawing_spans_two_splits(rows):
    split_of: dict[tuple[str, str], str] = {}
    for row in rows:
        key = (row["category"], B.group_key(row["id"]))
        assert split_of.setdefault(key, row["split"]) == row["split"], key


def test_images_are_rgb_224(rows):
    assert len({r["image"] for r in rows}) == len(rows)
    for row in rows:
        with Image.open(DATA / row["image"]) as im:
            assert im.mode == "RGB" and im.size == (224, 224), row["image"]
    with Image.open(DATA / rows[0]["image"]) as im:
        im.load()  # decodes, not only the header


def test_committed_size_is_small():
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size < 30 * 2**20


# --- errors ------------------------------------------------------------------------------


def test_missing_folder_says_what_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*metadata\.jsonl.*build_clipart\.py"):
        load_clipart(tmp_path / "nowhere", "category", "train")


@pytest.mark.parametrize("task, split, bad", [("genre", "train", "genre"), ("category", "dev", "dev")])
def test_bad_task_or_split_names_the_valid_ones(task, split, bad):
    with pytest.raises(ValueError, match=rf"{bad!r}.*valid: .*(category, keywords|train, val, test)"):
        load_clipart(DATA, task, split)


def test_broken_metadata_line_names_file_and_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps({"category": ["a"], "keywords": []}))
    (tmp_path / "metadata.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"metadata\.jsonl:1: missing field 'image'"):
        load_clipart(tmp_path, "category", "train")


# --- the build's functions ---------------------------------------------------------------


def _item(category: str, stem: str, folders: tuple[str, ...] = (), title: str = "",
          keywords: tuple[str, ...] = ()) -> "B.Item":
    path = Path(category, *folders, f"{stem}.svg")
    return B.Item(category, folders, path, path.with_suffix(".png"),
                  B.Metadata(title, "", keywords, "Jane Doe"))


def test_read_metadata_tolerates_broken_files(tmp_path):
    good = tmp_path / "good.svg"
    good.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"'
        ' xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        "<metadata><rdf:RDF><cc:Work><dc:title> Red   Apple </dc:title>"
        "<dc:subject><rdf:Bag><rdf:li>fruit</rdf:li><rdf:li></rdf:li><rdf:li>red</rdf:li>"
        "</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata></svg>")
    meta = B.read_metadata(good)
    assert meta.title == "Red Apple" and meta.keywords == ("fruit", "red")
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg><metadata><dc:title>oops")
    assert B.read_metadata(broken) == B.Metadata("", "", (), "")


def test_clean_text_strips_class_folder_and_label_words():
    banned = B.folder_words([_item("food", "x", ("desserts",))]) | B.word_forms("fruit")
    meta = B.Metadata("Seafood Cake", "A cake for foodies HASH(0x89cb06c)",
                      ("food", "dessert", "Fruits", "birthday", "Jane"), "Jane Doe")
    text = B.clean_text(meta, banned)
    assert text == "Cake. A cake for. birthday"
    assert B.clean_text(B.Metadata("Food_01", "", ("fruit",), ""), banned) is None


def test_build_functions_are_deterministic():
    items = [_item(c, f"{name}_{i}", title=f"{name} drawing", keywords=(name, "red"))
             for c in ("animals", "tools") for name in ("cat", "saw", "owl", "axe", "bee")
             for i in range(4)]
    banned = B.folder_words(items) | B.BOILERPLATE
    first = (B.assign_splits(items), [B.clean_text(it.meta, banned) for it in items],
             B.choose_keyword_labels(items, banned))
    again = (B.assign_splits(list(items)), [B.clean_text(it.meta, banned) for it in items],
             B.choose_keyword_labels(list(items), banned))
    assert first == again


def test_assign_splits_stratifies_and_keeps_variants_together():
    items = [_item(c, f"thing{i}_by_someone_{j:02d}") for c in ("animals", "food")
             for i in "abcdefghijklmnopqrst" for j in range(1, 3)]
    items += [_item("animals", "pizza_cheese"), _item("animals", "pizza_cheese_bw")]
    splits = B.assign_splits(items)
    for c in ("animals", "food"):
        got = [splits[it.stem] for it in items if it.category == c]
        assert {s: got.count(s) for s in ("train", "val", "test")}["train"] / len(got) == pytest.approx(0.7, abs=0.1)
        assert set(got) == {"train", "val", "test"}
    assert splits["pizza_cheese"] == splits["pizza_cheese_bw"]
    assert splits["thinga_by_someone_01"] == splits["thinga_by_someone_02"]


def test_dedupe_drops_cross_category_copies(tmp_path):
    def svg(folder: str, name: str, body: str) -> "B.Item":
        path = tmp_path / folder / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(body)
        return B.Item(folder, (), path, path.with_suffix(".png"), B.Metadata("", "", (), ""))

    a = svg("food", "apple.svg", "<svg>1</svg>")
    b = svg("office", "apple.svg", "<svg>2</svg>")  # same name, other category
    c = svg("food", "pear.svg", "<svg>3</svg>")
    d = svg("food", "pear_copy.svg", "<svg>3</svg>")  # same bytes, same category
    assert B.dedupe([a, b, c, d]) == [c]


def test_thumbnail_is_white_padded_rgb(tmp_path):
    src = tmp_path / "tall.png"
    im = Image.new("RGBA", (300, 900), (0, 0, 0, 0))
    im.paste((200, 0, 0, 255), (0, 0, 300, 900))
    im.save(src)
    out = tmp_path / "tall.jpg"
    B.make_thumbnail(src, out)
    with Image.open(out) as thumb:
        assert thumb.mode == "RGB" and thumb.size == (224, 224)
        assert min(thumb.getpixel((2, 112))) > 240  # side padding is white
        r, g, b = thumb.getpixel((112, 112))
        assert r > 150 and g < 60 and b < 60  # the drawing itself kept its colour
