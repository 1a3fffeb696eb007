"""Hateful Memes loader: zero-padded image names, JSONL splits, unlabelled files."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcore.data.collate import UNLABELLED
from mmcore.data.hateful_memes import CLASSES, load_hateful_memes
from mmcore.metrics import compute_metrics

IDS = {"train": [2973, 10432, 51203, 98765], "dev_seen": [1235, 47123], "test_seen": [8291]}


def make_memes(root: Path) -> Path:
    """Write a tiny Hateful Memes release: ``img/<5-digit>.png`` and JSONL files."""
    (root / "img").mkdir(parents=True)
    for stem, ids in {**IDS, "test": [777]}.items():
        lines = []
        for k, meme_id in enumerate(ids):
            img = f"img/{meme_id:05d}.png"
            Image.new("RGB", (16, 16), (k * 50, 0, 200)).save(root / img)
            row = {"id": meme_id, "img": img, "text": f"meme number {meme_id}"}
            if stem != "test":  # phase 1's test.jsonl has no labels
                row["label"] = k % 2
            lines.append(json.dumps(row))
        (root / f"{stem}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_image_path_comes_from_the_img_field(tmp_path):
    ds = load_hateful_memes(make_memes(tmp_path), "train")
    assert ds.task_type == "binary" and ds.classes == list(CLASSES)
    first = ds.samples[0]
    assert first.id == "2973" and first.image == tmp_path / "img" / "02973.png"
    assert all(s.image.is_file() for s in ds.samples)
    assert [s.label for s in ds.samples] == [(0,), (1,), (0,), (1,)]


@pytest.mark.parametrize("split, n", [("val", 2), ("test", 1)])
def test_val_and_test_are_the_seen_files(tmp_path, split, n):
    assert len(load_hateful_memes(make_memes(tmp_path), split)) == n


def test_release_unpacked_into_data_folder_is_found(tmp_path):
    make_memes(tmp_path / "data")
    assert len(load_hateful_memes(tmp_path, "train")) == 4


def test_unlabelled_file_loads_but_cannot_be_scored(tmp_path):
    with pytest.warns(UserWarning, match="no label"):
        ds = load_hateful_memes(make_memes(tmp_path), "test_phase1")
    assert [s.label for s in ds.samples] == [()]
    with pytest.raises(ValueError, match="unlabelled"):
        compute_metrics(np.zeros((1, 2)), np.array([UNLABELLED]), "binary")


def test_absent_split_file_lists_what_is_there(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_hateful_memes(make_memes(tmp_path), "test_unseen")
    assert "test_unseen.jsonl" in str(err.value) and "dev_seen.jsonl" in str(err.value)


def test_missing_folder_explains_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"img/<5-digit id>\.png"):
        load_hateful_memes(tmp_path / "nowhere", "train")


def test_bad_lines_are_named(tmp_path):
    root = make_memes(tmp_path)
    with (root / "train.jsonl").open("a") as f:
        f.write(json.dumps({"id": 5, "text": "no image field"}) + "\n")
    with pytest.raises(ValueError, match=r"train.jsonl: line 5"):
        load_hateful_memes(root, "train")
    (root / "dev_seen.jsonl").write_text(json.dumps({"id": 1, "img": "img/00001.png",
                                                     "label": 3}) + "\n")
    with pytest.raises(ValueError, match="label 3 is not 0 or 1"):
        load_hateful_memes(root, "val")
