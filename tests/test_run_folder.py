"""The run folder: ``last`` round-trips a run's progress and trained weights, and only a run
of the same config (but for the leaves that do not change what it computes) may resume."""
from __future__ import annotations

import math

import pytest
import torch
from _toy import ToyModel
from torch.optim.lr_scheduler import LambdaLR

from mmcore.checkpoint import CheckpointError
from mmcore.config import Config
from mmcore.run_folder import (
    RESUMABLE_CHANGES,
    Progress,
    config_diff,
    resume_run,
    save_last,
)
from mmcore.runtime import DistInfo


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = ToyModel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, optimizer, LambdaLR(optimizer, lambda step: 1.0)


def test_config_diff_names_changed_leaves_but_not_resumable_ones():
    cfg = Config.from_params(epochs=2)
    assert config_diff(cfg.to_dict(), cfg) == []
    assert config_diff(cfg.to_dict(), cfg.replace(epochs=3)) == ["epochs: 2 -> 3"]
    assert {"out_dir", "device", "progress"} <= set(RESUMABLE_CHANGES)
    assert config_diff(cfg.to_dict(), cfg.replace(out_dir="elsewhere", progress=False)) == []


def test_progress_keeps_the_first_score_and_never_a_nan():
    state = Progress()
    assert state.improves(0.1)
    state.best_value = 0.5
    assert state.improves(0.6) and not state.improves(0.5) and not state.improves(math.nan)


def test_last_round_trips_the_progress_and_weights(tmp_path):
    cfg, info = Config.from_params(epochs=2, out_dir=str(tmp_path)), DistInfo()
    model, optimizer, scheduler = _parts(0)
    state = Progress(epoch=1, step=7, history=[{"epoch": 0, "step": 0}], metric="accuracy",
                     best_value=0.5, best_epoch=1)
    save_last(tmp_path, model, optimizer, scheduler, state, cfg, info, torch.device("cpu"))
    other, other_opt, other_sched = _parts(1)
    assert vars(resume_run(tmp_path, cfg, info, other, other_opt, other_sched, True)) == vars(
        state)
    for a, b in zip(model.parameters(), other.parameters()):  # checkpoints hold what trains
        assert torch.equal(a, b) or not a.requires_grad
    with pytest.raises(FileExistsError, match="resume=True"):
        resume_run(tmp_path, cfg, info, other, other_opt, other_sched, False)
    with pytest.raises(CheckpointError, match="epochs: 2 -> 3"):
        resume_run(tmp_path, cfg.replace(epochs=3), info, other, other_opt, other_sched, True)
