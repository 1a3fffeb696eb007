"""UPMC Food-101 loader: header-less CSVs, class from file name, stratified val carve."""
import csv
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmcore.data.food101 import VAL_FRACTION, class_of, load_food101

CLASSES = {"apple_pie": 30, "baby_back_ribs": 20, "hot_dog": 10}  # training rows per class


def make_food101(root: Path, n_test: int = 3) -> Path:
    """Write a tiny UPMC Food-101: images per class and header-less titles CSVs."""
    (root / "texts").mkdir(parents=True)
    for part, counts in (("train", CLASSES), ("test", dict.fromkeys(CLASSES, n_test))):
        rows = []
        for c, (cls, count) in enumerate(counts.items()):
            folder = root / "images" / part / cls
            folder.mkdir(parents=True)
            for n in range(count):
                name = f"{cls}_{n}.jpg"
                Image.new("RGB", (12, 10), (60 * c, 5 * n, 90)).save(folder / name)
                # texts with commas and quotes; the class column is not trusted
                rows.append([name, f'Recipe {n}, "best" {cls.replace("_", " ")}', "ignored"])
        with (root / "texts" / f"{part}_titles.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


def test_class_comes_from_the_file_name():
    assert class_of("baby_back_ribs_12.jpg") == "baby_back_ribs"
    with pytest.raises(ValueError, match="nounderscore.jpg"):
        class_of("nounderscore.jpg")


def test_csv_is_header_less_and_quoted_text_survives(tmp_path):
    ds = load_food101(make_food101(tmp_path), "test")
    assert ds.task_type == "multiclass" and ds.classes == sorted(CLASSES)
    assert len(ds) == 9  # the first CSV row is data, not a header
    first = ds.samples[0]
    assert first.id == "apple_pie_0" and first.text == 'Recipe 0, "best" apple pie'
    assert first.image == tmp_path / "images" / "test" / "apple_pie" / "apple_pie_0.jpg"
    assert all(s.image.is_file() for s in ds.samples)
    names = [ds.classes[s.label[0]] for s in ds.samples]
    assert names == [class_of(s.id + ".jpg") for s in ds.samples]


def test_val_carve_is_stratified_disjoint_and_deterministic(tmp_path):
    root = make_food101(tmp_path)
    train, val = load_food101(root, "train"), load_food101(root, "val")
    n = sum(CLASSES.values())
    assert len(val) == round(n * VAL_FRACTION) and len(train) + len(val) == n
    assert not {s.id for s in train.samples} & {s.id for s in val.samples}
    per_class = Counter(val.classes[s.label[0]] for s in val.samples)
    for cls, count in CLASSES.items():
        assert abs(per_class[cls] - count * len(val) / n) <= 1
    assert [s.id for s in load_food101(root, "val").samples] == [s.id for s in val.samples]


def test_val_fraction_reproduces_map_sizes():
    n_val = round(67_988 * VAL_FRACTION)
    assert (67_988 - n_val, n_val) == (61_142, 6_846)


def test_map_split_json_overrides_the_carve(tmp_path):
    root = make_food101(tmp_path)
    names = [f"hot_dog_{n}.jpg" for n in range(10)]
    (root / "split.json").write_text(json.dumps({"train": names[2:], "val": names[:2], "test": []}))
    assert [s.id for s in load_food101(root, "val").samples] == ["hot_dog_0", "hot_dog_1"]
    assert len(load_food101(root, "train")) == 8


def test_missing_folder_explains_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_food101(tmp_path, "train")
    assert "train_titles.csv" in str(err.value) and "<class>_<n>.jpg" in str(err.value)
    assert "visiir" in str(err.value)


def test_test_class_unknown_to_train_is_an_error(tmp_path):
    root = make_food101(tmp_path)
    with (root / "texts" / "test_titles.csv").open("a", newline="") as f:
        csv.writer(f).writerow(["sushi_1.jpg", "fish", "sushi"])
    with pytest.raises(ValueError, match="'sushi'"):
        load_food101(root, "test")
