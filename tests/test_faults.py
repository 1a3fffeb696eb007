"""Fault injection: a clean manifest of real OpenClipArt rows, dirtied one fault at a time.

Each entry of ``FAULTS`` writes one manifest (the 60 clean rows plus the fault) and says
what ``check-data`` must report: the kind, the action taken, the line and the column.
Every fault must be reported there and nowhere else; a fault that stops must make
``python -m mmcore train`` print the whole report, one error line and exit 2 without a
traceback; a fault that does not stop must be handled by the loader as reported.
``test_the_suite_has_at_least_60_faults`` counts them: 75, 69 of them at a line of the file.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from _clipart_rows import CLIPART, clipart_rows
from PIL import Image

from mmcore.cli import main
from mmcore.config import Config
from mmcore.data import load_dataset
from mmcore.data.check import check_data

HEADER = ("image", "text", "label", "split")
BASE_ROWS = 60


def _split(i: int) -> str:
    return "val" if i % 10 == 3 else "test" if i % 10 == 7 else "train"


def _base(header: tuple[str, ...] = HEADER) -> list[dict]:
    rows = []
    for i, r in enumerate(clipart_rows(20, 3)):
        rows.append({"image": r["image"], "text": r["text"], "label": r["category"],
                     "split": _split(i), "id": f"r{i}"})
    return [{k: row[k] for k in header} for row in rows]


def _csv_bytes(rows: list[dict], header: tuple[str, ...]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[r[k] for k in header] for r in rows])
    return out.getvalue().encode()


@dataclass
class Fault:
    """One injected fault and the problem the report must hold for it."""

    name: str
    kind: str
    action: str
    column: str | None
    tail: bytes = b""  # raw CSV / JSONL lines appended to the clean rows
    line: int | None = BASE_ROWS + 2  # where the report must point (None: the whole file)
    header: tuple[str, ...] = HEADER
    jsonl: bool = False
    edit: Callable[[list[dict]], list[dict]] | None = None  # changes to the clean rows
    raw: Callable[[bytes], bytes] | None = None  # a change to the file's bytes
    sets: dict = field(default_factory=dict)
    row_id: str = f"line{BASE_ROWS + 2}"
    absent: bool = False  # the manifest is not written at all


def _row(*cells: str) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue().encode()


FIRST = _base()[0]  # a train row of class "animals"
JSON_LINE = BASE_ROWS + 1


def _json(obj: object) -> bytes:
    return (json.dumps(obj) + "\n").encode()


IMAGE_FAULTS = [  # (file the row names, kind, action under the default policy)
    ("bad/zero.jpg", "empty_file", "missing"), ("bad/zero.png", "empty_file", "missing"),
    ("bad/half.jpg", "truncated_image", "missing"), ("bad/half.png", "truncated_image", "missing"),
    ("bad/noise.png", "corrupt_image", "missing"), ("bad/words.jpg", "corrupt_image", "missing"),
    ("bad/error_page.jpg", "corrupt_image", "missing"),
    ("bad/pdf.png", "corrupt_image", "missing"),
    ("bad/bomb.png", "decompression_bomb", "missing"),
    ("bad/gone.jpg", "missing_file", "missing"), ("bad", "missing_file", "missing"),
    (FIRST["image"].upper(), "missing_file", "missing"),
    (" " + FIRST["image"], "missing_file", "missing"),
    (FIRST["image"].replace("/", "\\"), "missing_file", "missing"),
    ("bad/cmyk.jpg", "cmyk_image", "fix"), ("bad/deep.png", "deep_image", "fix"),
    ("bad/float.tif", "deep_image", "fix"), ("bad/palette.png", "palette_image", "fix"),
    ("bad/palette_alpha.png", "palette_image", "fix"), ("bad/rgba.png", "alpha_image", "fix"),
    ("bad/la.png", "alpha_image", "fix"), ("bad/gray.png", "grayscale_image", "fix"),
    ("bad/bits.png", "grayscale_image", "fix"), ("bad/lab.tif", "other_mode_image", "fix"),
    ("bad/anim.gif", "animated_image", "fix"),
    ("../outside.jpg", "outside_root", "missing"),
    ("OUTSIDE_ABSOLUTE", "outside_root", "missing"),
    ("bad/link.jpg", "outside_root", "missing"), ("/etc/passwd", "outside_root", "missing"),
]
FAULTS = [Fault(f"image {name!r}: {kind}", kind, action, "image",
                _row(name, "a picture", "animals", "train")) for name, kind, action in IMAGE_FAULTS]
FAULTS += [
    Fault("empty text", "empty_text", "missing", "text",
          _row(FIRST["image"], "", "animals", "train")),
    Fault("whitespace text", "whitespace_text", "missing", "text",
          _row(FIRST["image"], " \t  ", "animals", "train")),
    Fault("text of NUL bytes only", "whitespace_text", "missing", "text",
          _row(FIRST["image"], "\0\0\0", "animals", "train")),
    Fault("latin-1 bytes in a text", "non_utf8_text", "fix", "text",
          f"{FIRST['image']},caf".encode() + b"\xe9 cr\xe8me,animals,train\n"),
    Fault("200,000-character text", "long_text", "fix", "text",
          _row(FIRST["image"], "word " * 40_000, "animals", "train")),
    Fault("NUL byte inside a text", "control_text", "fix", "text",
          _row(FIRST["image"], "a cat\0 on a mat", "animals", "train")),
    Fault("bell and escape characters", "control_text", "fix", "text",
          _row(FIRST["image"], "ding\x07 \x1b[31mred", "animals", "train")),
    Fault("empty label", "empty_label", "stop", "label", _row(FIRST["image"], "t", "", "train")),
    Fault("label differing only in case", "label_case", "stop", "label",
          _row(FIRST["image"], "t", "ANIMALS", "train")),
    Fault("label in title case, in val", "label_case", "stop", "label",
          _row(FIRST["image"], "t", "Animals", "val")),
    Fault("label only in test", "unseen_label", "stop", "label",
          _row(FIRST["image"], "a car", "vehicles", "test")),
    Fault("label only in val", "unseen_label", "stop", "label",
          _row(FIRST["image"], "a car", "vehicles", "val")),
    Fault("one row with several labels (X|food)", "ambiguous_task", "stop", "label",
          _row(FIRST["image"], "t", "animals|buildings", "train")),
    Fault("several labels under task=multiclass", "bad_row", "stop", "label",
          _row(FIRST["image"], "t", "animals|buildings", "train"), sets={"task": "multiclass"}),
    Fault("label outside data.classes_file", "unknown_label", "stop", "label",
          _row(FIRST["image"], "t", "vehicles", "train"), sets={"classes_file": "CLASSES"}),
    Fault("unclosed quote, then a row with \"\" escapes", "merged_rows", "stop", None,
          b'images/x.jpg,"An unclosed quote,animals,train\n'
          b'images/y.jpg,"He said ""hi"" there",buildings,train\n'),
    Fault("unclosed quote swallowing the rows after it", "merged_rows", "stop", None,
          b'images/x.jpg,"never closed,animals,train\n' + _row(FIRST["image"], "t", "animals",
                                                                 "train")),
    Fault("unclosed quote on the last line", "field_count", "stop", None,
          b'images/x.jpg,"never closed,animals,train\n'),
    Fault("unquoted comma in a text", "field_count", "stop", None,
          f"{FIRST['image']},a cat, a hat,animals,train\n".encode()),
    Fault("unquoted comma, no split column (label = text's tail)", "field_count", "stop", None,
          f"{FIRST['image']},a cat, a hat,animals\n".encode(), header=HEADER[:3]),
    Fault("row with fields missing", "field_count", "stop", None,
          f"{FIRST['image']},a cat\n".encode()),
    Fault("exact duplicate row", "duplicate_row", "skip", None, _row(*FIRST.values())),
    Fault("train row copied with split=test", "split_leak", "stop", None,
          _row(*list(FIRST.values())[:3], "test")),
    Fault("same image, other text, other split", "shared_image", "warn", "image",
          _row(FIRST["image"], "another caption", "animals", "test")),
    Fault("same image bytes under another name, same text, other split", "split_leak", "stop",
          "image", _row("bad/copy.jpg", FIRST["text"], "animals", "test")),
    Fault("same image bytes under another name, other text, other split", "shared_image",
          "warn", "image", _row("bad/copy.jpg", "a different caption", "animals", "test")),
    Fault("id used twice", "duplicate_id", "stop", "id",
          _row(FIRST["image"], "t", "animals", "train", "r5"), header=(*HEADER, "id")),
    Fault("row with neither image nor text", "empty_row", "stop", None,
          _row("", "", "animals", "train")),
    Fault("unknown split name", "bad_row", "stop", "split",
          _row(FIRST["image"], "t", "animals", "holdout")),
    Fault("empty split cell among given splits", "bad_row", "stop", "split",
          _row(FIRST["image"], "t", "animals", "")),
    Fault("column named twice in the header", "bad_row", "stop", "label", line=1,
          raw=lambda b: b.replace(b"split\n", b"label\n", 1)),
    Fault("misspelt column (lable)", "missing_column", "stop", "label", line=1,
          raw=lambda b: b.replace(b"label,", b"lable,", 1)),
    Fault("required column absent", "missing_column", "stop", "text", line=1,
          raw=lambda b: b.replace(b"image,text,", b"image,caption,", 1)),
    Fault("file saved as UTF-16", "missing_column", "stop", "image", line=1,
          raw=lambda b: b.decode().encode("utf-16")),
    Fault("header only, no rows", "load_error", "stop", None, line=None,
          raw=lambda b: b.split(b"\n")[0] + b"\n"),
    Fault("JSONL: line is not JSON", "bad_row", "stop", None, b'{"image": "x.jpg", "text": \n',
          jsonl=True, line=JSON_LINE),
    Fault("JSONL: line is a list", "bad_row", "stop", None, b'["x.jpg", "t", "animals"]\n',
          jsonl=True, line=JSON_LINE),
    Fault("JSONL: label is an object", "bad_row", "stop", "label",
          _json({"image": None, "text": "t", "label": {"a": 1}, "split": "train"}),
          jsonl=True, line=JSON_LINE),
    Fault("JSONL: text is a list", "bad_row", "stop", "text",
          _json({"image": None, "text": ["t"], "label": "animals", "split": "train"}),
          jsonl=True, line=JSON_LINE),
    Fault("JSONL: key missing", "missing_column", "stop", "label",
          _json({"image": None, "text": "t", "split": "train"}), jsonl=True, line=JSON_LINE),
    Fault("JSONL: lone surrogate escape in a text", "non_utf8_text", "fix", "text",
          b'{"image": null, "text": "bad \\ud800 escape", "label": "animals", "split": "train"}\n',
          jsonl=True, line=JSON_LINE, row_id=f"line{JSON_LINE}"),
    Fault("batch larger than the training split", "batch_too_large", "stop", "optim.batch_size",
          line=None, sets={"batch_size": 1000}),
    Fault("a split without rows", "empty_split", "stop", None, line=None,
          edit=lambda rows: [{**r, "split": "train" if r["split"] == "test" else r["split"]}
                             for r in rows]),
    Fault("one class only", "load_error", "stop", "label", line=None,
          edit=lambda rows: [{**r, "label": "animals"} for r in rows]),
    Fault("classes_file naming a class twice", "load_error", "stop", None, line=None,
          sets={"classes_file": "CLASSES_TWICE"}),
    Fault("manifest not found", "load_error", "stop", None, line=None, absent=True),
]
STOPS = [f for f in FAULTS if f.action == "stop"]


def _images(folder: Path) -> None:
    """The bad image files the faults name, beside the clean rows' images."""
    bad = folder / "bad"
    bad.mkdir()
    real = (CLIPART / FIRST["image"]).read_bytes()
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "zero.png").write_bytes(b"")
    (bad / "half.jpg").write_bytes(real[: len(real) // 2])
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    noise.save(bad / "full.png")
    png = (bad / "full.png").read_bytes()
    (bad / "half.png").write_bytes(png[: len(png) // 2])
    (bad / "noise.png").write_bytes(np.random.default_rng(1).bytes(4096))
    (bad / "words.jpg").write_text("this is a caption, not a picture\n")
    (bad / "error_page.jpg").write_text("<html><body>404 Not Found</body></html>\n")
    (bad / "pdf.png").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (bad / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                                   + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(bad / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(bad / "deep.png")
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(bad / "float.tif")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.save(bad / "palette.png")
    palette.save(bad / "palette_alpha.png", transparency=0)
    Image.new("RGBA", (8, 8), (10, 20, 30, 100)).save(bad / "rgba.png")
    Image.new("LA", (8, 8), (10, 100)).save(bad / "la.png")
    Image.new("L", (8, 8), 90).save(bad / "gray.png")
    Image.new("1", (8, 8), 1).save(bad / "bits.png")
    Image.new("LAB", (8, 8), (50, 10, 10)).save(bad / "lab.tif")
    frames = [Image.new("RGB", (8, 8), (60 * i, 200 - 50 * i, 30)) for i in range(3)]
    frames[0].save(bad / "anim.gif", save_all=True, append_images=frames[1:])
    shutil.copy(CLIPART / FIRST["image"], bad / "copy.jpg")
    outside = folder.parent / "outside.jpg"
    shutil.copy(CLIPART / FIRST["image"], outside)
    os.symlink(outside, bad / "link.jpg")
    (folder / "classes.txt").write_text("animals\nbuildings\nelectronics\n")
    (folder / "classes_twice.txt").write_text("animals\nbuildings\nanimals\n")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    (root / "images").mkdir(parents=True)
    for r in clipart_rows(20, 3):
        shutil.copy(CLIPART / r["image"], root / r["image"])
    _images(root)
    return root


def _write(folder: Path, fault: Fault, index: int) -> Path:
    rows = _base(fault.header)
    if fault.edit is not None:
        rows = fault.edit(rows)
    if fault.jsonl:
        data = b"".join(_json(r) for r in rows)
    else:
        data = _csv_bytes(rows, fault.header)
    tail = fault.tail.replace(b"OUTSIDE_ABSOLUTE", str(folder.parent / "outside.jpg").encode())
    data += tail
    if fault.raw is not None:
        data = fault.raw(data)
    path = folder / f"fault{index:02d}.{'jsonl' if fault.jsonl else 'csv'}"
    if not fault.absent:
        path.write_bytes(data)
    return path


def _cfg(folder: Path, path: Path, fault: Fault) -> Config:
    sets = {"dataset": "manifest", "data_root": str(path), "batch_size": 8, "progress": False,
            **fault.sets}
    files = {"CLASSES": "classes.txt", "CLASSES_TWICE": "classes_twice.txt"}
    if sets.get("classes_file") in files:
        sets["classes_file"] = str(folder / files[sets["classes_file"]])
    return Config.from_params(**sets)


def test_the_suite_has_at_least_60_faults():
    assert len(FAULTS) >= 60
    assert len({f.name for f in FAULTS}) == len(FAULTS)
    located = [f for f in FAULTS if f.line is not None]
    assert len(located) >= 60  # reported at a line of the file, not only the file


def test_the_clean_rows_are_clean_but_for_a_real_duplicate(folder):
    """OpenClipArt holds the same picture under two names; split apart, it is reported."""
    rows = _base()
    path = folder / "clean.csv"
    path.write_bytes(_csv_bytes(rows, HEADER))
    report = check_data(Config.from_params(dataset="manifest", data_root=str(path),
                                           batch_size=8, progress=False))
    assert report.exit_code == 0 and report.split_sizes == {"train": 48, "val": 6, "test": 6}
    assert report.task_type == "multiclass" and report.classes == [
        "animals", "buildings", "electronics"]
    first: dict[bytes, dict] = {}
    expected = []
    for line, r in enumerate(rows, start=2):
        seen = first.setdefault((CLIPART / r["image"]).read_bytes(), r)
        if seen["split"] != r["split"]:
            expected.append(("shared_image", line, "warn"))
    assert expected and [(p.kind, p.row, p.action) for p in report.problems] == expected


def _new_problems(report, baseline) -> list:
    seen = {(p.kind, p.row, p.column) for p in baseline.problems}
    return [p for p in report.problems if (p.kind, p.row, p.column) not in seen]


@pytest.fixture(scope="module")
def baselines(folder) -> dict:
    out = {}
    for key, header, jsonl in (("csv", HEADER, False), ("plain", HEADER[:3], False),
                               ("id", (*HEADER, "id"), False), ("jsonl", HEADER, True)):
        path = folder / f"base_{key}.{'jsonl' if jsonl else 'csv'}"
        rows = _base(header)
        path.write_bytes(b"".join(_json(r) for r in rows) if jsonl else _csv_bytes(rows, header))
        out[(header, jsonl)] = check_data(Config.from_params(
            dataset="manifest", data_root=str(path), batch_size=8, progress=False))
    return out


@pytest.mark.parametrize("index", range(len(FAULTS)), ids=[f.name for f in FAULTS])
def test_each_fault_is_reported_where_it_is(folder, baselines, index):
    fault = FAULTS[index]
    path = _write(folder, fault, index)
    report = check_data(_cfg(folder, path, fault))
    new = _new_problems(report, baselines[(fault.header, fault.jsonl)])
    found = [(p.kind, p.action, p.row, p.column) for p in new]
    assert (fault.kind, fault.action, fault.line, fault.column) in found, found
    if fault.line is not None:  # nothing else is blamed on a clean row
        assert {p.row for p in new} <= {fault.line, None} | set(range(fault.line, fault.line + 3))
        blamed = next(p for p in new if p.kind == fault.kind)
        assert blamed.file == str(path)
        assert f"{path}:{fault.line}" in blamed.where()
    assert report.exit_code == (2 if fault.action == "stop" else 0)
    text = report.format()
    assert fault.kind in text and ("STOP:" in text) == (fault.action == "stop")


@pytest.mark.parametrize("index", [i for i, f in enumerate(FAULTS) if f.action != "stop"],
                         ids=[f.name for f in FAULTS if f.action != "stop"])
def test_loading_does_what_the_report_says(folder, index):
    fault = FAULTS[index]
    path = _write(folder, fault, index)
    cfg = _cfg(folder, path, fault)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        samples = {s.id: s for split in ("train", "val", "test")
                   for s in load_dataset(cfg.data, split).samples}
    assert len(samples) == BASE_ROWS + (fault.action != "skip")  # no row lost or merged
    if fault.action == "skip":
        assert fault.row_id not in samples
        return
    sample = samples[fault.row_id]
    if fault.kind in ("outside_root", "missing_file"):
        assert sample.image is None and sample.text == "a picture"  # never opened
    elif fault.column == "image":
        assert sample.image is not None


@pytest.mark.parametrize("index", [i for i, f in enumerate(FAULTS) if f.action == "stop"],
                         ids=[f.name for f in STOPS])
def test_train_stops_with_the_whole_report_one_line_and_exit_2(folder, tmp_path, capsys, index):
    fault = FAULTS[index]
    path = _write(folder, fault, index)
    cfg = _cfg(folder, path, fault)
    sets = {"dataset": "manifest", "data_root": str(path), "batch_size": cfg.optim.batch_size,
            "task": cfg.data.task, "classes_file": cfg.data.classes_file, "progress": "false",
            "out_dir": str(tmp_path / "run")}
    argv = ["train", "--no-sweep", *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "Traceback" not in out + err
    assert fault.kind in out and "STOP:" in out
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
