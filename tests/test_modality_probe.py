"""The frozen-feature probe script's pure parts: which tasks it probes, and its ridge R^2."""
from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script

from mmcore.config import Config

P = load_script("scripts/modality_probe.py")


def test_tasks_per_dataset():
    assert P.tasks_of(Config()) == ["category", "keywords"]
    assert P.tasks_of(Config.from_params(dataset="emoji", data_root="data/emoji")) == ["auto"]


def test_ridge_r2_recovers_a_linear_map_and_nothing_from_noise():
    rng = np.random.default_rng(0)
    x = {s: rng.normal(size=(n, 8)) for s, n in (("train", 400), ("val", 100), ("test", 100))}
    w = rng.normal(size=(8, 4))
    linear = {s: v @ w for s, v in x.items()}
    noise = {s: rng.normal(size=(len(v), 4)) for s, v in x.items()}
    r2, lam = P.ridge_r2(x, linear)
    assert r2 == pytest.approx(1.0, abs=1e-3) and lam == min(P.RIDGE_LAMBDAS)
    assert P.ridge_r2(x, noise)[0] < 0.05
