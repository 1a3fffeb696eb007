"""User manifests (CSV / JSONL), the stratified ordering, and the ``load_dataset`` registry."""
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmcore.config import DataConfig
from mmcore.data import SPLITS, load_dataset
from mmcore.data.manifest import load_manifest
from mmcore.data.problems import DataError


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 20 % 256, 0, 0)).save(folder / f"{i}.png")
    return [f"{folder.name}/{i}.png" for i in range(n)]


# --- reading --------------------------------------------------------------------------------


def test_csv_rows_with_missing_modalities_and_relative_paths(tmp_path):
    paths = _images(tmp_path / "pics", 3)
    manifest = _csv(tmp_path / "m.csv", "image,text,label,split,id",
                    [f"{paths[0]},a red thing,cat,train,x1", ",text only,dog,train,x2",
                     f"{paths[2]},,cat,train,x3", f"{paths[1]},\"quoted, text\",dog,test,x4"])
    ds = load_manifest(manifest, "train")
    assert ds.task_type == "binary" and ds.classes == ["cat", "dog"] and ds.name == "m"
    assert [(s.id, s.label) for s in ds.samples] == [("x1", (0,)), ("x2", (1,)), ("x3", (0,))]
    assert ds.samples[0].image == tmp_path / "pics" / "0.png"
    assert ds.samples[1].image is None and ds.samples[2].text is None
    assert load_manifest(manifest, "test").samples[0].text == "quoted, text"


def test_jsonl_with_label_lists_is_multilabel(tmp_path):
    paths = _images(tmp_path / "img", 2)
    rows = [{"image": paths[0], "text": "t", "label": ["b", "a"], "split": "train"},
            {"image": paths[1], "text": None, "label": "c", "split": "train"},
            {"image": None, "text": "u", "label": "a|c", "split": "validation"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_manifest(manifest, "train")
    assert ds.task_type == "multilabel" and ds.classes == ["a", "b", "c"]
    assert [s.label for s in ds.samples] == [(0, 1), (2,)]
    assert [s.id for s in ds.samples] == ["line1", "line2"]
    assert [s.label for s in load_manifest(manifest, "val").samples] == [(0, 2)]


def test_integer_classes_sort_numerically_and_three_are_multiclass(tmp_path):
    rows = [f",t{i},{label},train" for i, label in enumerate(["10", "2", "1", "2"])]
    ds = load_manifest(_csv(tmp_path / "m.csv", "image,text,label,split", rows), "train")
    assert ds.classes == ["1", "2", "10"] and ds.task_type == "multiclass"
    assert [s.label[0] for s in ds.samples] == [2, 1, 0, 1]


def test_without_split_column_rows_are_split_80_10_10(tmp_path):
    rows = [f",text {i},{'ab'[i % 2]}" for i in range(50)]
    manifest = _csv(tmp_path / "m.csv", "image,text,label", rows)
    splits = {s: load_manifest(manifest, s) for s in ("train", "val", "test")}
    assert [len(d) for d in splits.values()] == [40, 5, 5]
    ids = [{x.id for x in d.samples} for d in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [x.id for x in load_manifest(manifest, "val").samples] == \
        [x.id for x in splits["val"].samples]


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, row, task, needle",
    [
        ("image,text", ",t", "auto", "missing column 'label'"),
        ("image,text,label", ",t,", "auto", r"line 2, column 'label': empty label"),
        ("image,text,label", ",,a", "auto", "line 2: both 'image' and 'text' are empty"),
        ("image,text,label,split", ",t,a,holdout", "auto", "column 'split': 'holdout'"),
        ("image,text,label", ",t,a|b", "multiclass", "line 2, column 'label': several labels"),
        ("image,text,label", ",t,c", "binary", "needs exactly 2 classes"),
        ("image,text,label", ",t,a", "category", "data.task='category' is not valid"),
    ],
)
def test_errors_name_file_line_and_column(tmp_path, header, row, task, needle):
    good = [",o,a", ",p,b"] if "split" not in header else [",o,a,train", ",p,b,train"]
    manifest = _csv(tmp_path / "bad.csv", header, [row, *good])
    with pytest.raises(ValueError, match=needle) as err:
        load_manifest(manifest, "train", task=task)
    assert "bad.csv" in str(err.value) or "data.task" in str(err.value)


def test_absent_image_follows_the_policy(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "image,text,label,split",
                    ["gone.png,t,a,train", ",u,b,train"])
    with pytest.raises(DataError, match=r"line 2, column 'image'.*gone.png"):
        load_manifest(manifest, "train", bad_sample_policy="stop")
    with pytest.warns(UserWarning, match="gone.png"):
        kept = load_manifest(manifest, "train", bad_sample_policy="missing")
    assert kept.samples[0].image is None and kept.samples[0].text == "t"
    with pytest.warns(UserWarning, match="dropped"):
        skipped = load_manifest(manifest, "train", bad_sample_policy="skip")
    assert [s.text for s in skipped.samples] == ["u"]


def test_duplicate_ids_and_absent_manifest(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "image,text,label,id", [",t,a,k", ",u,b,k"])
    with pytest.raises(ValueError, match="'k' already used on line 2"):
        load_manifest(manifest, "train")
    with pytest.raises(DataError, match="manifest not found"):
        load_manifest(tmp_path / "none.csv", "train")


# --- registry -------------------------------------------------------------------------------


def test_registry_limits_samples_with_a_stratified_subset(tmp_path):
    rows = [f",text {i},{'a' if i < 60 else 'b'},train" for i in range(80)]
    manifest = _csv(tmp_path / "m.csv", "image,text,label,split", rows)
    cfg = DataConfig(dataset="manifest", data_root=str(manifest), task="auto", limit_samples=20)
    ds = load_dataset(cfg, "train")
    assert len(ds) == 20
    assert Counter(ds.classes[s.label[0]] for s in ds.samples) == {"a": 15, "b": 5}
    positions = [int(s.text.split()[1]) for s in ds.samples]
    assert positions == sorted(positions)  # original order kept
    assert [s.id for s in load_dataset(cfg, "train").samples] == [s.id for s in ds.samples]


def test_registry_rejects_unknown_splits_and_lists_every_dataset():
    assert {"clipart", "mmimdb", "food101", "hateful_memes", "manifest"} <= set(SPLITS)
    cfg = DataConfig(dataset="food101", data_root="nowhere")
    with pytest.raises(ValueError, match="split='dev_seen' for food101; valid: train, val, test"):
        load_dataset(cfg, "dev_seen")


# --- where images may come from -------------------------------------------------------------


def test_paths_outside_the_folder_are_never_opened_unless_allowed(tmp_path):
    data = tmp_path / "data"
    inside = _images(data / "pics", 2)
    _images(tmp_path / "elsewhere", 1)
    (data / "pics" / "link_in.png").symlink_to(data / "pics" / "1.png")
    (data / "pics" / "link_out.png").symlink_to(tmp_path / "elsewhere" / "0.png")
    rows = [f"{inside[0]},a,x,train", f"{data / inside[1]},b,y,train",  # absolute, inside
            "pics/link_in.png,c,x,train", "pics/link_out.png,d,y,train",
            "../elsewhere/0.png,e,x,train", f"{tmp_path / 'elsewhere' / '0.png'},f,y,train"]
    manifest = _csv(data / "m.csv", "image,text,label,split", rows)
    with pytest.warns(UserWarning, match=r"outside_root x3 \(missing\)"):
        kept = load_manifest(manifest, "train")
    assert [s.image is not None for s in kept.samples] == [True, True, True, False, False, False]
    with pytest.raises(DataError, match=r"line 5, column 'image': pics/link_out.png resolves "
                                        r"outside .*allow_outside_root"):
        load_manifest(manifest, "train", bad_sample_policy="stop")
    allowed = load_manifest(manifest, "train", allow_outside_root=True)
    assert all(s.image is not None for s in allowed.samples)


def test_a_quoted_text_over_several_lines_is_one_row(tmp_path):
    manifest = _csv(tmp_path / "m.csv", "image,text,label", [
        ',"first line, with a comma\nsecond line, x, y",a', ",plain,b", ",other,a", ",more,b"])
    ds = load_manifest(manifest, "train", task="multiclass")
    texts = [s.text for split in ("train", "val", "test")
             for s in load_manifest(manifest, split).samples]
    assert "first line, with a comma\nsecond line, x, y" in texts and len(texts) == 4
    assert ds.task_type == "multiclass"


def test_bom_and_crlf_keep_line_numbers(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbfimage,text,label\r\n,one,a\r\n,two,b\r\n"
                         b',"three\r\nlines, here",a\r\n,a cat, a hat,b\r\n')
    with pytest.raises(DataError, match=r"m\.csv: line 6 has 4 fields but the header has 3"):
        load_manifest(manifest, "train")
