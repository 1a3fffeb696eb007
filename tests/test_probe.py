"""Closed-form starts: logistic heads reach the optimum, ridge matches the normal equations."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from mmcore.model import Embeddings
from mmcore.probe import fit_logistic, fit_ridge, initialise_from_probes
from tests.test_prompt_cache import _tiny_model


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 2
    y = torch.arange(n) % 3
    return centres[y] + torch.randn(n, 8, generator=torch.Generator().manual_seed(seed)), y


def test_logistic_head_matches_scikit_learn_and_picks_its_penalty_on_validation():
    x, y = _blobs(300, 0)
    x_val, y_val = _blobs(150, 1)
    fit = fit_logistic(x, y, "multiclass", x_val, y_val, num_classes=3, weight_decays=(1e-2,))
    # the same objective: mean cross-entropy + wd/2 ||W||^2  <=>  C = 1 / (wd * n)
    ref = LogisticRegression(C=1 / (1e-2 * 300), tol=1e-8, max_iter=5000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(fit.weight.numpy(), ref.coef_, atol=2e-3)
    assert fit.val_score > 0.9 and fit.penalty == 1e-2
    assert fit_logistic(x, y, "multiclass", x_val, y_val, 3, (1e3, 1e-3)).penalty == 1e-3


def test_ridge_solves_the_normal_equations_and_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    true_w = torch.randn(4, 6, generator=g)
    y = x @ true_w.T + 0.5 + 0.01 * torch.randn(400, 4, generator=g)
    fit = fit_ridge(x, y, x, y, lambdas=(1e-6,))
    torch.testing.assert_close(fit.weight, true_w, atol=1e-2, rtol=0)
    assert fit.val_score > 0.999  # R^2
    assert fit_ridge(x, y, x, y, lambdas=(1e-6, 1e3)).penalty == 1e-6


def test_initialise_sets_heads_linear_predictors_and_mean_fills():
    model = _tiny_model()
    model.predict_from = "cls"
    for name in ("image_to_text", "text_to_image"):  # one Linear: the ridge predictor
        d_in, d_out = model.predictors[name].mlp[0].in_features, model.predictors[name].mlp[-1].out_features
        model.predictors[name].mlp = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(60, 32, generator=g), torch.randn(60, 32, generator=g)
    labels = torch.arange(60) % 3
    has_text = torch.arange(60) % 5 != 0  # every fifth row lacks its text
    emb = Embeddings(image, text, None, None, torch.ones(60, dtype=torch.bool), has_text,
                     read_image=image, read_text=text)  # the cls predictors read embeddings
    before = model.heads["image"].fc.weight.clone()
    report = initialise_from_probes(model, emb, labels, emb, labels)
    assert set(report) == {"heads", "ridge_image_to_text", "ridge_text_to_image"}
    pairs = has_text
    ridge = fit_ridge(image[pairs], text[pairs], image[pairs], text[pairs])
    torch.testing.assert_close(model.predictors["image_to_text"].mlp[0].weight, ridge.weight)
    ridge = fit_ridge(image[has_text], text[has_text], image[has_text], text[has_text])
    torch.testing.assert_close(model.predictors["image_to_text"].mlp[0].weight, ridge.weight)
    assert not torch.equal(model.heads["image"].fc.weight, before)
    torch.testing.assert_close(model.mean_text, text[has_text].mean(0))  # only rows that have it
    torch.testing.assert_close(model.mean_image, image.mean(0))
    only_means = _tiny_model()
    heads = only_means.heads["text"].fc.weight.clone()
    assert initialise_from_probes(only_means, emb, labels, emb, labels, fit=False) == {}
    assert torch.equal(only_means.heads["text"].fc.weight, heads)
    torch.testing.assert_close(only_means.mean_text, text[has_text].mean(0))


def test_mean_fill_stands_in_the_training_mean():
    model = _tiny_model().eval()
    model.set_fill_means(torch.full((32,), 2.0), torch.full((32,), -1.0))
    emb = Embeddings(torch.randn(3, 32), torch.randn(3, 32), torch.zeros(3, 32), torch.zeros(3, 32),
                     torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool))
    has_text = torch.tensor([True, False, True])
    filled = model.fill_missing(emb, torch.ones(3, dtype=torch.bool), has_text, fill="mean")
    assert torch.equal(filled["text"][1], torch.full((32,), -1.0))
    assert torch.equal(filled["text"][0], emb.text_emb[0]) and torch.equal(filled["image"], emb.image_emb)


def test_a_modality_no_training_row_has_is_left_as_built():
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(20, 32, generator=g), torch.zeros(20, 32)
    emb = Embeddings(image, text, None, None, torch.ones(20, dtype=torch.bool),
                     torch.zeros(20, dtype=torch.bool))  # no text anywhere (as in a fixture)
    before = model.heads["text"].fc.weight.clone()
    report = initialise_from_probes(model, emb, torch.arange(20) % 3, emb, torch.arange(20) % 3)
    assert set(report) == {"heads"}
    assert torch.equal(model.heads["text"].fc.weight, before)
    assert torch.equal(model.mean_text, torch.zeros(32))


def test_heads_start_as_one_logistic_regression_on_both_embeddings():
    """Late fusion sums two linear heads: their start is one fit on [image, text], split."""
    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(90) % 3
    centres = torch.randn(3, 32, generator=g)
    image = centres[labels] + 2 * torch.randn(90, 32, generator=g)  # each alone is noisy
    text = 10 * centres[labels] + 20 * torch.randn(90, 32, generator=g)  # another scale
    both = torch.ones(90, dtype=torch.bool)
    emb = Embeddings(image, text, None, None, both, both)
    report = initialise_from_probes(model, emb, labels, emb, labels)
    fused = model.heads["image"](image) + model.heads["text"](text)
    joint = torch.cat([image, text], 1)
    mean, std = joint.mean(0), joint.std(0)
    ref = fit_logistic((joint - mean) / std, labels, "multiclass", (joint - mean) / std, labels, 3)
    torch.testing.assert_close(fused, ((joint - mean) / std) @ ref.weight.T + ref.bias,
                               atol=1e-3, rtol=1e-3)
    assert report["heads"] == ref.val_score
    assert (fused.argmax(1) == labels).float().mean() > 0.9  # the two together separate them


def test_a_deep_predictor_starts_at_its_targets_mean():
    model = _tiny_model().eval()
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(40, 32, generator=g) + 1, torch.randn(40, 32, generator=g) - 2
    both = torch.ones(40, dtype=torch.bool)
    emb = Embeddings(image, text, None, None, both, both)
    initialise_from_probes(model, emb, torch.arange(40) % 3, emb, torch.arange(40) % 3)
    predicted = model.predictors["image_to_text"](torch.randn(5, 2, 32))
    torch.testing.assert_close(predicted, text.mean(0).expand(5, -1))
