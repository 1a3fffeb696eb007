"""python -m mmcore: one clear line for a bad config, a full run for a good one."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mmcore.cli import main, parser


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
