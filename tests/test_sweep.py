"""One-pass evaluation: scoring from the cache equals encoding each masked batch anew."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mmcore.metrics import compute_metrics
from mmcore.missing import MissingTable
from mmcore.evaluation import collect, score, sweep
from test_model import make_batch, make_model

N_BATCHES, B = 3, 8


def split_batches(real_image_missing: tuple[int, ...] = ()):
    """A split of N_BATCHES * B samples as Batches with split-wide indices, shuffled order."""
    batches = []
    for k in reversed(range(N_BATCHES)):  # out of order: collect must sort by index
        batch = make_batch([True] * B, [True] * B, seed=k)
        index = torch.arange(k * B, (k + 1) * B)
        has_image = torch.tensor([int(i) not in real_image_missing for i in index])
        batches.append(dataclasses.replace(batch, index=index, has_image=has_image))
    return batches


@pytest.mark.parametrize("missing_type", ["text", "image", "both"])
@pytest.mark.parametrize("fill", ["predict", "zero", "dummy"])
def test_cached_scores_equal_a_fresh_pass_under_the_table(missing_type, fill):
    model = make_model(fill=fill).eval()
    batches = split_batches(real_image_missing=(3, 17))  # real missingness rides along
    cache = collect(model, batches, precision="fp32", progress=False)
    table = MissingTable.build(N_BATCHES * B, 0.5, missing_type, seed=1)

    logits, labels = [], []
    with torch.no_grad():
        for batch in sorted(batches, key=lambda b: int(b.index[0])):
            has_image, has_text = table.apply(batch.index, batch.has_image, batch.has_text)
            masked = dataclasses.replace(batch, has_image=has_image, has_text=has_text)
            logits.append(model.fuse(model.encode(masked), has_image, has_text))
            labels.append(batch.labels)
    fresh = compute_metrics(torch.cat(logits), torch.cat(labels), "multiclass")
    assert score(model, cache, table, "multiclass") == pytest.approx(fresh, abs=1e-6)


def test_collect_encodes_each_sample_once_with_its_real_modalities():
    model = make_model().eval()
    batches = split_batches(real_image_missing=(5,))
    cache = collect(model, batches, precision="fp32", progress=False)
    assert cache.index.tolist() == list(range(N_BATCHES * B))
    assert not bool(cache.emb.has_image[5]) and bool(cache.emb.has_image[4])
    seen = sorted(r for call in model.image_encoder.calls for r in call)
    assert len(seen) == N_BATCHES * B - 1  # each present image exactly once, the absent never


def test_sweep_grid_rows_and_saved_tables(tmp_path):
    model = make_model().eval()
    cache = collect(model, split_batches(), precision="fp32", progress=False)
    rows = sweep(model, cache, "multiclass", dataset="toy", rates=(0.0, 0.5, 1.0),
                 seeds=(0, 1), fills=(None, "zero"), table_dir=tmp_path, progress=False)
    assert len(rows) == 3 * 3 * 2 * 2
    assert {r["fill"] for r in rows} == {"predict", "zero"}
    assert len(list(tmp_path.glob("missing_toy_test_*.json"))) == 3 * 3 * 2
    at_zero = {r["accuracy"] for r in rows if r["missing_rate"] == 0.0}
    assert len(at_zero) == 1  # with nothing missing, type, seed and fill cannot matter
    # at rate 1 the "image" type hides every image: predict and zero fills must differ somewhere
    full = [r for r in rows if r["missing_rate"] == 1.0 and r["missing_type"] == "image"]
    saved = MissingTable.load(tmp_path / MissingTable.build(
        24, 1.0, "image", 0, dataset="toy", split="test").file_name(), n=24)
    assert saved.image_mask.all()
    assert {r["table_sha256"] for r in full} == {
        MissingTable.build(24, 1.0, "image", s, dataset="toy", split="test").digest() for s in (0, 1)}
