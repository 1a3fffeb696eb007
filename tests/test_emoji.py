"""The committed emoji dataset, its loader, check-data on it, and the build script's functions."""
from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest
from _scripts import load_script
from PIL import Image

from mmcore import cli
from mmcore.config import Config
from mmcore.data import load_dataset
from mmcore.data.emoji import SPLITS, load_emoji

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "emoji"
B = load_script("scripts/build_emoji.py")

# The 1,906 base emoji of emoji-datasource-google 16.0.0 outside "Component".
COUNTS = {"Smileys & Emotion": 169, "People & Body": 386, "Animals & Nature": 159,
          "Food & Drink": 131, "Travel & Places": 218, "Activities": 85, "Objects": 264,
          "Symbols": 224, "Flags": 270}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = (DATA / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def parts() -> dict:
    return {split: load_emoji(DATA, split) for split in SPLITS}


# --- the committed data ------------------------------------------------------------------


def test_counts_and_classes(rows, parts):
    classes = json.loads((DATA / "classes.json").read_text())["category"]
    assert classes == list(COUNTS) == list(B.CATEGORIES)
    assert collections.Counter(r["category"] for r in rows) == COUNTS
    assert sum(len(ds) for ds in parts.values()) == len(rows) == 1906
    for split, ds in parts.items():
        assert ds.name == "emoji" and ds.split == split and ds.task_type == "multiclass"
        assert ds.classes == classes


@pytest.mark.parametrize("split", SPLITS)
def test_loader_matches_metadata(rows, parts, split):
    ds = parts[split]
    wanted = [r for r in rows if r["split"] == split]
    assert [s.id for s in ds.samples] == [r["id"] for r in wanted]
    for sample, row in zip(ds.samples, wanted):
        assert ds.classes[sample.label[0]] == row["category"] and len(sample.label) == 1
        assert sample.text == row["text"] and sample.text.strip()
        assert sample.image == DATA / row["image"]


def test_splits_disjoint_and_stratified(parts):
    ids = [{s.id for s in ds.samples} for ds in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for c, total in enumerate(COUNTS.values()):
        n = {k: sum(s.label == (c,) for s in ds.samples) for k, ds in parts.items()}
        assert sum(n.values()) == total
        for split, share in B.SPLIT_FRACTIONS:
            assert abs(n[split] - share * total) <= 2, (c, n)


@pytest.mark.parametrize("field", ["unified", "sha256"])
def test_gender_variants_and_identical_images_share_a_split(rows, field):
    split_of: dict[str, str] = {}
    for row in rows:
        key = B.group_key(row[field]) if field == "unified" else row[field]
        assert split_of.setdefault(key, row["split"]) == row["split"], row["name"]
    assert len(split_of) < len(rows)  # some groups really hold several emoji


def test_no_category_word_in_text(rows):
    stems = [s for names in B.CATEGORIES.values() for s in names]
    for row in rows:
        assert not any(s in row["text"] for s in stems), (row["id"], row["text"])
        assert row["text"] == row["text"].lower()


def test_metadata_is_what_the_build_makes_of_its_package_fields(rows):
    items = [B.Emoji(r["unified"], r["name"], r["category"], r["subcategory"], f"{r['id']}.png")
             for r in rows]
    assert B.metadata_rows(items, {r["id"]: r["sha256"] for r in rows}) == rows


def test_every_image_decodes_to_the_committed_bytes(rows):
    assert len({r["image"] for r in rows}) == len(rows)
    on_disk = {p.name for p in (DATA / "images").iterdir()}
    assert on_disk == {Path(r["image"]).name for r in rows}
    for row in rows:
        assert B.sha256(DATA / row["image"]) == row["sha256"], row["image"]
        with Image.open(DATA / row["image"]) as im:
            im.load()
            assert im.mode == "RGB" and im.size == (64, 64), row["image"]


def test_licences_and_size():
    assert "MIT License" in (DATA / "LICENSE-MIT").read_text()
    assert "Apache License" in (DATA / "LICENSE-Apache-2.0").read_text()
    source = json.loads((DATA / "SOURCE.json").read_text())
    assert (source["package"], source["version"]) == (B.PACKAGE, B.VERSION)
    size = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert size <= 10 * 2**20


def test_load_dataset_and_check_data_are_clean(tmp_path, capsys):
    cfg = Config.from_params(dataset="emoji", data_root=str(DATA))
    assert len(load_dataset(cfg.data, "test")) == 381
    code = cli.main(["check-data", "--set", "dataset=emoji", "--set", f"data_root={DATA}",
                     "--set", f"out_dir={tmp_path}", "--set", "progress=false"])
    out = capsys.readouterr().out
    assert code == 0 and "no problems found" in out, out


# --- errors ------------------------------------------------------------------------------


def test_missing_folder_says_what_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*metadata\.jsonl.*build_emoji\.py"):
        load_emoji(tmp_path / "nowhere", "train")


def test_bad_split_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'dev'.*valid: train, val, test"):
        load_emoji(DATA, "dev")


@pytest.mark.parametrize("line, error", [
    ('{"id": "x"}', r"metadata\.jsonl:1: missing field 'image'"),
    ('{"id": "x", "image": "i.png", "text": "t", "category": "Nope", "split": "train"}',
     r"category 'Nope' not in classes\.json"),
])
def test_bad_metadata_line_says_where(tmp_path, line, error):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps({"category": ["Flags"]}))
    (tmp_path / "metadata.jsonl").write_text(line + "\n")
    with pytest.raises(ValueError, match=error):
        load_emoji(tmp_path, "train")


# --- the build's functions ---------------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("Japan Flag", "japan"),
    ("CROSSED FLAGS", "crossed"),
    ("PUT LITTER IN ITS PLACE SYMBOL", "put litter in its"),
    ("FACE SAVOURING DELICIOUS FOOD", "face savouring delicious"),
    ("FAMILY: MAN, WOMAN, BOY", "family: man, woman, boy"),
    ("Flag", None),
])
def test_clean_name_cuts_category_words(name, text):
    assert B.clean_name(name) == text


def test_group_key_joins_gender_variants_only():
    cook = {B.group_key(u) for u in ("1F468-200D-1F373", "1F469-200D-1F373", "1F9D1-200D-1F373")}
    rower = {B.group_key(u) for u in ("1F6A3", "1F6A3-200D-2642-FE0F", "1F6A3-200D-2640-FE0F")}
    assert len(cook) == len(rower) == 1
    assert B.group_key("1F600") != B.group_key("1F603")


def test_group_of_links_variants_and_identical_images():
    items = [B.Emoji(u, "x", "People & Body", "sub", f"{u.lower()}.png")
             for u in ("1F468-200D-1F373", "1F469-200D-1F373", "1F46A", "1F46B", "1F600")]
    digests = {"1f468-200d-1f373": "a", "1f469-200d-1f373": "b", "1f46a": "c", "1f46b": "c",
               "1f600": "d"}
    assert B.group_of(items, digests) == {
        "1f468-200d-1f373": "1f468-200d-1f373", "1f469-200d-1f373": "1f468-200d-1f373",
        "1f46a": "1f46a", "1f46b": "1f46a", "1f600": "1f600"}


def test_assign_splits_is_seeded_and_stratified():
    items = [B.Emoji(f"{i:X}", f"thing {i}", ("Flags", "Objects")[i % 2], "sub", f"{i:x}.png")
             for i in range(100)]
    digests = {it.id: it.id for it in items}
    first, again = B.assign_splits(items, digests), B.assign_splits(list(items), digests)
    other = B.assign_splits(items, digests, seed=1)
    assert first == again != other
    for c in ("Flags", "Objects"):
        got = collections.Counter(first[it.id] for it in items if it.category == c)
        assert got == {"train": 30, "val": 10, "test": 10}


def test_flatten_png_is_white_backed_rgb_and_deterministic(tmp_path):
    src = tmp_path / "src.png"
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste((200, 0, 0, 255), (16, 16, 48, 48))
    im.save(src)
    B.flatten_png(src, tmp_path / "a.png")
    B.flatten_png(src, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as out:
        assert out.mode == "RGB" and out.getpixel((2, 2)) == (255, 255, 255)
        assert out.getpixel((32, 32)) == (200, 0, 0)
    assert re.fullmatch(r"[0-9a-f]{64}", B.sha256(tmp_path / "a.png"))
