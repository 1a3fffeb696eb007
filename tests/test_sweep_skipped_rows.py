"""A split whose bad rows were skipped (bad_sample_policy="skip") sweeps like the rows it kept."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mmcore.missing import MissingTable
from mmcore.evaluation import collect, score, sweep
from test_model import make_batch, make_model


def test_gaps_in_split_positions_are_scored_by_cache_position():
    model = make_model().eval()
    kept = [0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 13, 15]  # rows 3, 6, 10, 14 were skipped
    batch = dataclasses.replace(make_batch([True] * len(kept), [True] * len(kept), seed=0),
                                index=torch.tensor(kept))
    cache = collect(model, [batch], precision="fp32", progress=False)
    assert cache.index.tolist() == kept and len(cache) == 12
    rows = sweep(model, cache, "multiclass", dataset="toy", rates=(0.0, 0.5, 1.0), seeds=(0,),
                 progress=False)
    assert len(rows) == 9  # 3 types x 3 rates, no IndexError on positions 13 and 15
    dense = dataclasses.replace(cache, index=torch.arange(12))  # the same rows, no gaps
    table = MissingTable.build(12, 0.5, "both", seed=0)
    assert score(model, cache, table, "multiclass") == pytest.approx(
        score(model, dense, table, "multiclass"))
