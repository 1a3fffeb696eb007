"""The MAP missing-modality protocol: exact counts, seeding, nesting, persistence."""
import json

import pytest
import torch

from mmcore.config import MissingConfig
from mmcore.missing import MissingTable, load_or_build, num_missing, table_for_split


@pytest.mark.parametrize(
    "n, rate, kind, n_text, n_image",
    [
        (1000, 0.7, "text", 700, 0),
        (1000, 0.7, "image", 0, 700),
        (1000, 0.7, "both", 350, 350),
        (1000, 0.0, "both", 0, 0),
        (1000, 1.0, "both", 500, 500),
        (11, 0.9, "both", 5, 4),  # k = int(9.9) = 9: text gets the odd one
        (100, 0.29, "text", 29, 0),  # 100 * 0.29 is 28.999... in floating point
    ],
)
def test_counts_follow_the_protocol(n, rate, kind, n_text, n_image):
    table = MissingTable.build(n, rate, kind, seed=3)
    assert (len(table.text_missing), len(table.image_missing)) == (n_text, n_image)
    both_lost = set(table.text_missing) & set(table.image_missing)
    assert not both_lost
    assert all(0 <= i < n for i in table.text_missing + table.image_missing)
    complete = n - n_text - n_image
    assert int((~table.text_mask & ~table.image_mask).sum()) == complete


def test_num_missing_is_int_of_n_times_rate():
    assert [num_missing(1000, r) for r in (0.1, 0.5, 0.7, 0.999)] == [100, 500, 700, 999]


def test_same_seed_same_table_other_seed_other_table():
    a = MissingTable.build(500, 0.7, "both", seed=1)
    assert a == MissingTable.build(500, 0.7, "both", seed=1)
    b = MissingTable.build(500, 0.7, "both", seed=2)
    assert a.text_missing != b.text_missing and a.image_missing != b.image_missing


@pytest.mark.parametrize("kind", ["text", "image", "both"])
def test_tables_are_nested_across_rates(kind):
    low = MissingTable.build(400, 0.3, kind, seed=0)
    high = MissingTable.build(400, 0.7, kind, seed=0)
    assert set(low.text_missing) <= set(high.text_missing)
    assert set(low.image_missing) <= set(high.image_missing)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="missing_rate=1.5"):
        MissingTable.build(10, 1.5, "both", 0)
    with pytest.raises(ValueError, match="missing_type='audio'"):
        MissingTable.build(10, 0.5, "audio", 0)


def test_apply_combines_real_and_simulated_missingness():
    table = MissingTable.build(8, 0.5, "both", seed=0)
    index = torch.arange(8)
    real_image = torch.tensor([True] * 7 + [False])
    has_image, has_text = table.apply(index, real_image, torch.ones(8, dtype=torch.bool))
    assert has_image.tolist() == [bool(real_image[i]) and i not in table.image_missing
                                  for i in range(8)]
    assert has_text.tolist() == [i not in table.text_missing for i in range(8)]
    with pytest.raises(IndexError, match="n=8"):
        one = torch.ones(1, dtype=torch.bool)
        table.apply(torch.tensor([8]), one, one)


def test_save_load_round_trip(tmp_path):
    table = MissingTable.build(300, 0.7, "both", seed=5, dataset="mmimdb", split="test")
    path = table.save(tmp_path / table.file_name())
    assert path.name == "missing_mmimdb_test_both_0.7_seed5.json"
    record = json.loads(path.read_text())
    keys = {"dataset", "split", "missing_type", "missing_rate", "seed", "n", "sha256"}
    assert keys <= set(record)
    assert MissingTable.load(path, n=300) == table


def test_edited_table_fails_its_hash(tmp_path):
    path = MissingTable.build(50, 0.5, "text", seed=0).save(tmp_path / "t.json")
    record = json.loads(path.read_text())
    record["text_missing"][0] = (record["text_missing"][0] + 1) % 50
    path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="sha256"):
        MissingTable.load(path)


def test_loading_for_a_different_split_size_fails(tmp_path):
    path = MissingTable.build(50, 0.5, "text", seed=0, dataset="food101", split="val").save(
        tmp_path / "t.json")
    with pytest.raises(ValueError, match="n=50 samples but food101/val has 49"):
        MissingTable.load(path, n=49)


def test_training_split_follows_missing_train():
    cfg = MissingConfig(missing_rate=0.6, missing_type="image", missing_train="complete")
    assert table_for_split(cfg, "d", "train", 100).image_missing == ()
    assert len(table_for_split(cfg, "d", "val", 100).image_missing) == 60
    same = MissingConfig(missing_rate=0.6, missing_type="image", missing_train="missing")
    assert len(table_for_split(same, "d", "train", 100).image_missing) == 60


def test_load_or_build_saves_once_then_reuses(tmp_path):
    cfg = MissingConfig(missing_rate=0.7, missing_type="both", missing_seed=1)
    first = load_or_build(tmp_path, cfg, "memes", "test", 120)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    assert load_or_build(tmp_path, cfg, "memes", "test", 120) == first
    with pytest.raises(ValueError, match="n=120"):
        load_or_build(tmp_path, cfg, "memes", "test", 121)


def test_a_row_never_loses_its_only_modality():
    n = 200
    table = MissingTable.build(n, 1.0, "both", seed=0)
    index = torch.arange(n)
    has_image = torch.ones(n, dtype=torch.bool)
    has_text = torch.ones(n, dtype=torch.bool)
    has_text[::3] = False  # real missingness: every third row has no text
    has_image[1::3] = False  # and every third other row no image
    image, text = table.apply(index, has_image, has_text)
    assert not (~image & ~text).any()  # no row with neither
    assert (image <= has_image).all() and (text <= has_text).all()  # nothing made up
    complete = has_image & has_text
    # on rows that have both, the table applies exactly
    assert torch.equal(image[complete], ~torch.tensor(table.image_mask)[complete])
    assert torch.equal(text[complete], ~torch.tensor(table.text_mask)[complete])
    spared = (~has_text & torch.tensor(table.image_mask)).sum()
    assert spared > 0 and image[~has_text].all()  # text-less rows the table picked keep images
