"""python -m mmcore: one clear line for a bad config, a full run for a good one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _clipart_rows import write_manifest

from mmcore.cli import main, parser
from mmcore.commands import _record_data
from mmcore.config import Config
from mmcore.data.check import check_data
from mmcore.data.problems import DataError


def test_help_lists_every_command():
    text = parser().format_help()
    for command in ("train", "evaluate", "sweep", "check-data"):
        assert command in text


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "missing_rate=1.5"], "missing.missing_rate=1.5 is out of range"),
    (["train", "--set", "prompt_lenght=3"], "unknown override 'prompt_lenght'"),
    (["train", "--set", "missing_type=audio"], "valid: both, image, text"),
])
def test_bad_overrides_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_missing_config_file_is_named(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_evaluate_from_the_run_folder(tmp_path, mmcore_cache):
    out = tmp_path / "run"
    sets = ["limit_samples=24", "epochs=1", "batch_size=8", "eval_batch_size=24", "image_size=56",
            "prompt_length=2", "predictor_hidden=32", "progress=false", f"out_dir={out}"]
    argv = ["train", "--method", "cls", "--no-sweep"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 0
    assert (out / "cls" / "final.json").is_file()
    done = subprocess.run([sys.executable, "-m", "mmcore", "sweep", "--run", str(out / "cls"),
                           "--rates", "0.5", "--seeds", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 rows" in done.stdout


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  prompt_length: 4\noptim:\n  epochs: [1, 2\n  lr: 3e-4\n")
    assert main(["train", "--config", str(bad)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {bad}: line 5, column 5: invalid YAML")
    assert "<unicode string>" not in line


@pytest.mark.parametrize("argv, needle", [
    (["train", "--set", "missing_rate=nan"], "missing.missing_rate=nan is not a finite number"),
    (["train", "--set", "lr=.inf"], "optim.lr=inf is not a finite number"),
    (["check-data", "--set", "text_encoder=[unclosed"], "override 'text_encoder=[unclosed'"),
    (["train", "--set", "dataset=manifest", "--set", "task=category"],
     "data.task='category' for a manifest; valid: auto, multiclass, multilabel, binary"),
    (["evaluate", "--run", "nowhere/run"], "nowhere/run holds no run (no config.yaml)"),
])
def test_config_and_run_faults_are_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in out + err


def test_a_batch_larger_than_the_data_shows_the_report_and_exits_2(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "my_data", per_class=4)
    argv = ["train", "--set", "dataset=manifest", "--set", f"data_root={manifest}",
            "--set", "batch_size=1000", "--set", "progress=false",
            "--set", f"out_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "batch_too_large" in out and "optim.batch_size=1000 is larger than the training" in out
    assert "task: multiclass (inferred: one label per row, 3 classes); 3 classes: animals, " \
           "buildings, electronics" in out
    assert err.startswith("error: 1 problem(s) in the data stop training")
    assert "\n" not in err.strip()


@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_evaluate_and_sweep_refuse_an_unfinished_run_naming_the_command(tmp_path, capsys,
                                                                        command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(Config.from_params(out_dir=str(run)).to_yaml())
    assert main([command, "--run", str(run)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: {run} is not a finished run (no final.json); finish its training "
                    f"with: python -m mmcore train --config {run / 'config.yaml'}")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # nothing trained


def test_check_data_writes_nothing_unless_asked(tmp_path, monkeypatch, capsys):
    manifest = write_manifest(tmp_path / "my_data", per_class=4)
    monkeypatch.chdir(tmp_path)
    assert main(["check-data", "--set", "dataset=manifest", "--set", f"data_root={manifest}",
                 "--set", "batch_size=4", "--set", "progress=false"]) == 0
    assert "\nOK: " in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_data"]


def test_the_task_and_classes_are_saved_and_a_resumed_run_must_match(tmp_path):
    manifest = write_manifest(tmp_path / "my_data", per_class=4)
    cfg = Config.from_params(dataset="manifest", data_root=str(manifest), batch_size=4,
                             progress=False)
    cfg = cfg.replace(out_dir=str(tmp_path / "run"))
    report = check_data(cfg)
    _record_data(report, cfg)
    saved = json.loads((tmp_path / "run" / "data.json").read_text())
    assert saved["task_type"] == "multiclass" and saved["classes"] == [
        "animals", "buildings", "electronics"]
    assert saved["task_reason"] == "inferred: one label per row, 3 classes"
    assert json.loads((tmp_path / "run" / "check_data.json").read_text())["exit_code"] == 0
    report.classes = ["animals", "buildings"]  # the data changed before a resume
    with pytest.raises(DataError, match="the data changed since this run started"):
        _record_data(report, cfg)
    other = tmp_path / "other"  # a folder holding a run of another config is left alone
    other.mkdir()
    (other / "config.yaml").write_text(cfg.replace(epochs=9).to_yaml())
    _record_data(report, cfg.replace(out_dir=str(other)))
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml"]


def test_ctrl_c_while_checking_is_one_line(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mmcore.commands.check_data", interrupted)
    assert main(["check-data"]) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_help_imports_no_loader_image_library_or_progress_bar():
    """``python -m mmcore --help`` answers without importing the training stack."""
    probe = ("import runpy, sys\n"
             "sys.argv = ['mmcore', '--help']\n"
             "try:\n"
             "    runpy.run_module('mmcore', run_name='__main__', alter_sys=True)\n"
             "except SystemExit as stop:\n"
             "    assert stop.code == 0, stop.code\n"
             "print(' '.join(sorted(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    loaded = set(done.stdout.split("\n")[-2].split())
    assert "usage: python -m mmcore" in done.stdout
    heavy = {m for m in loaded if m.split(".")[0] in ("PIL", "tqdm", "timm", "transformers",
                                                      "torchvision", "torch")}
    assert not heavy, sorted(heavy)[:10]
    assert not {m for m in loaded if m.startswith("mmcore.data")}
