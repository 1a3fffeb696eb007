"""End to end on the real default data and real weights, at a tiny budget."""
from __future__ import annotations

import json

import pytest
import torch

from mmcore import experiment
from mmcore.config import Config
from mmcore.evaluation import collect
from mmcore.experiment import METHODS, load_datasets, method_config, run
from mmcore.missing import MissingTable

TINY = dict(limit_samples=24, epochs=1, batch_size=8, eval_batch_size=24, image_size=56,
            prompt_length=2, predictor_hidden=32, progress=False)


def test_method_config_changes_only_what_the_method_names(tmp_path):
    cfg = Config.from_params(out_dir=str(tmp_path))
    cls = method_config(cfg, "cls")
    assert cls.model.predict_from == "cls" and cls.run.out_dir == str(tmp_path / "cls")
    assert cls.replace(predict_from="prompts", out_dir=str(tmp_path)) == cfg
    assert method_config(cfg, "zero").loss.alpha == 0.0
    with pytest.raises(ValueError, match="valid: " + ", ".join(METHODS)):
        method_config(cfg, "best")


def test_batch_larger_than_the_training_split_is_named():
    with pytest.raises(ValueError, match="optim.batch_size=64 is larger than the training split"):
        load_datasets(Config.from_params(limit_samples=20, batch_size=64))


@pytest.mark.slow
def test_run_trains_sweeps_and_reloads_without_retraining(tmp_path, mmcore_cache, monkeypatch):
    cfg = Config.from_params(out_dir=str(tmp_path / "run"), **TINY)
    exp = run(cfg, rates=(0.0, 0.7), seeds=(0, 1))
    folder = exp.run_dir
    for name in ("config.yaml", "env.json", "metrics.jsonl", "final.json", "sweep.csv",
                 "sweep.json", "test_metrics.json"):
        assert (folder / name).is_file(), name
    assert len(exp.sweep_rows) == 2 * 3 * 2  # rates x types x seeds
    at_zero = {r["accuracy"] for r in exp.sweep_rows if r["missing_rate"] == 0.0}
    assert len(at_zero) == 1  # nothing hidden: type and seed cannot matter

    # the tables the rows name are saved, and reloading one reproduces its hash
    row = next(r for r in exp.sweep_rows if r["missing_rate"] == 0.7 and r["missing_type"] == "both")
    saved = MissingTable.load(folder / "missing" / MissingTable.build(
        len(exp.datasets["test"]), 0.7, "both", row["seed"], "clipart", "test").file_name())
    assert saved.digest() == row["table_sha256"]
    recorded = json.loads((folder / "test_metrics.json").read_text())
    assert recorded["missing_rate"] == cfg.missing.missing_rate

    last = folder / "checkpoints" / "last.safetensors"
    stamp = last.stat().st_mtime_ns
    passes = []  # encoding passes over a split
    monkeypatch.setattr(experiment, "collect", lambda *a, **k: passes.append(a) or collect(*a, **k))
    again = run(cfg, rates=(0.0, 0.7), seeds=(0, 1))
    assert last.stat().st_mtime_ns == stamp  # loaded, not retrained (training rewrites it)
    assert again.sweep_rows == exp.sweep_rows
    # its mean fills (not saved) come from the token cache's embeddings, without a prompt pass
    assert passes == []
    torch.testing.assert_close(again.model.mean_image, exp.model.mean_image)
    torch.testing.assert_close(again.model.mean_text, exp.model.mean_text)
