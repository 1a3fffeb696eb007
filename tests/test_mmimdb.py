"""MM-IMDb loader on fixtures with the original and MAP layouts and IMDbPY quirks."""
import json
from pathlib import Path

import pytest
from PIL import Image

from mmcore.config import DataConfig
from mmcore.data import load_dataset
from mmcore.data.mmimdb import GENRES, load_mmimdb

MOVIES = {
    # several plots with IMDbPY author credits; a genre outside the 23 ("News")
    "0106714": {"title": "A", "genres": ["Drama", "News", "Sci-Fi"],
                "plot": ["Short plot.::someone", "A much longer plot about a ship.::critic@x"],
                "cast": [{"name": "X"}]},
    # plot as a bare string, genres in odd case and spacing
    "0000002": {"genres": [" comedy", "FILM-NOIR"], "plot": "Only one plot."},
    # no plot: fall back to the outline
    "0000003": {"genres": "Horror", "plot outline": "An outline."},
    # no text at all, no known genre
    "0000004": {"genres": ["News"]},
    "0000005": {"genres": ["Western", "War"], "plot": ["p"]},
}
SPLIT = {"train": ["0106714", "0000002", "0000003"], "dev": ["0000004"],
         "test": ["0000005", "0999999"]}  # 0999999: listed but absent from dataset/


def make_mmimdb(root: Path, layout: str = "original") -> Path:
    """Write a tiny MM-IMDb, original (``dataset/``) or MAP (``images/``, ``labels/``) layout."""
    image_dir = root / ("dataset" if layout == "original" else "images")
    json_dir = root / ("dataset" if layout == "original" else "labels")
    image_dir.mkdir(parents=True)
    json_dir.mkdir(exist_ok=True)
    for i, (movie_id, record) in enumerate(MOVIES.items()):
        Image.new("RGB", (20, 30), (40 * i, 80, 120)).save(image_dir / f"{movie_id}.jpeg")
        (json_dir / f"{movie_id}.json").write_text(json.dumps(record))
    (root / "split.json").write_text(json.dumps(SPLIT))
    return root


@pytest.mark.parametrize("layout", ["original", "map"])
def test_both_layouts_give_the_same_samples(tmp_path, layout):
    root = make_mmimdb(tmp_path / "mmimdb", layout)
    ds = load_mmimdb(root, "train")
    assert ds.task_type == "multilabel" and ds.classes == list(GENRES) and len(GENRES) == 23
    assert [s.id for s in ds.samples] == SPLIT["train"]
    first = ds.samples[0]
    assert first.image.is_file() and first.image.name == "0106714.jpeg"
    assert first.label == (GENRES.index("Drama"), GENRES.index("Sci-Fi"))  # "News" ignored


def test_longest_plot_is_kept_without_author(tmp_path):
    ds = load_mmimdb(make_mmimdb(tmp_path), "train")
    texts = [s.text for s in ds.samples]
    assert texts == ["A much longer plot about a ship.", "Only one plot.", "An outline."]


def test_genres_are_matched_tolerantly(tmp_path):
    ds = load_mmimdb(make_mmimdb(tmp_path), "train")
    assert ds.samples[1].label == (GENRES.index("Comedy"), GENRES.index("Film-Noir"))
    assert ds.samples[2].label == (GENRES.index("Horror"),)


def test_val_is_dev_and_a_movie_may_have_no_text_or_known_genre(tmp_path):
    ds = load_mmimdb(make_mmimdb(tmp_path), "val")
    assert [(s.id, s.text, s.label) for s in ds.samples] == [("0000004", None, ())]


def test_ids_without_json_are_dropped_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="0999999"):
        ds = load_mmimdb(make_mmimdb(tmp_path), "test")
    assert [s.id for s in ds.samples] == ["0000005"]


def test_parent_of_the_archive_folder_is_accepted(tmp_path):
    make_mmimdb(tmp_path / "mmimdb")
    assert len(load_mmimdb(tmp_path, "train")) == 3


def test_missing_folder_explains_the_expected_layouts(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_mmimdb(tmp_path / "nowhere", "train")
    message = str(err.value)
    assert "dataset/<id>.jpeg" in message and "labels/<id>.json" in message
    assert "archive.org" in message


def test_bad_split_and_corrupt_json_are_named(tmp_path):
    root = make_mmimdb(tmp_path)
    with pytest.raises(ValueError, match="split='dev'"):
        load_mmimdb(root, "dev")
    (root / "dataset" / "0000002.json").write_text("{not json")
    with pytest.raises(ValueError, match="0000002.json"):
        load_mmimdb(root, "train")


def test_registry_dispatches_and_limits(tmp_path):
    root = make_mmimdb(tmp_path)
    cfg = DataConfig(dataset="mmimdb", data_root=str(root), limit_samples=2)
    ds = load_dataset(cfg, "train")
    assert ds.name == "mmimdb" and len(ds) == 2
    assert {s.id for s in ds.samples} <= set(SPLIT["train"])
    assert [s.id for s in load_dataset(cfg, "train").samples] == [s.id for s in ds.samples]
