"""VICReg against a transcription of the reference, its edge cases, alternatives and task loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmcore.config import LossConfig
from mmcore.losses import (
    alignment_loss,
    scale_to_target,
    cosine_alignment,
    mse_alignment,
    off_diagonal,
    task_loss,
    vicreg_loss,
)


def reference_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg main_vicreg.py VICReg.forward, single process, projector removed."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)

    def ref_off_diagonal(m):
        n = m.shape[0]
        return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()

    cov_loss = ref_off_diagonal(cov_x).pow_(2).sum().div(num_features) + \
        ref_off_diagonal(cov_y).pow_(2).sum().div(num_features)
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


@pytest.mark.parametrize("coeffs", [(25.0, 25.0, 1.0), (1.0, 3.0, 0.5)])
def test_vicreg_matches_reference(coeffs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=g) * 0.7
    y = torch.randn(16, 12, generator=g) * 1.5 + 0.3
    ours = vicreg_loss(x, y, *coeffs)
    ref = reference_vicreg(x.clone(), y.clone(), *coeffs)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want)


def test_off_diagonal_drops_exactly_the_diagonal():
    m = torch.arange(16.0).view(4, 4)
    off = off_diagonal(m)
    assert off.numel() == 12
    assert set(off.tolist()) == set(range(16)) - {0.0, 5.0, 10.0, 15.0}


def test_invariance_zero_for_identical_inputs():
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    terms = vicreg_loss(x, x.clone())
    assert terms.inv.item() == 0.0
    assert terms.total.item() > 0  # variance / covariance still act


def test_collapsed_inputs_give_full_variance_penalty():
    x = torch.ones(8, 6)  # every row identical: std 0 in every dimension
    terms = vicreg_loss(x, x.clone(), std_coeff=25.0)
    # std = sqrt(0 + 1e-4) = 0.01, so each branch contributes (1 - 0.01) / 2
    torch.testing.assert_close(terms.var, torch.tensor(0.99))
    torch.testing.assert_close(terms.cov, torch.tensor(0.0))
    torch.testing.assert_close(terms.total, 25.0 * terms.var)


def test_decorrelated_unit_variance_has_small_var_and_cov():
    x = torch.randn(4096, 4, generator=torch.Generator().manual_seed(2)) * 2
    terms = vicreg_loss(x, x.clone())
    assert terms.var.item() == 0.0  # std ~2 > 1: hinge inactive
    assert terms.cov.item() < 0.05


def test_vicreg_gradients_reach_both_branches():
    x = torch.randn(6, 5, requires_grad=True)
    y = torch.randn(6, 5, requires_grad=True)
    vicreg_loss(x, y).total.backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0


def test_vicreg_is_float32_under_bf16_autocast():
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    y = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = vicreg_loss(x, y)
    assert all(t.dtype == torch.float32 for t in terms)
    torch.testing.assert_close(terms.total, vicreg_loss(x, y).total)


def test_vicreg_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 rows"):
        vicreg_loss(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        vicreg_loss(torch.randn(4, 4), torch.randn(4, 5))


def test_mse_and_cosine_alignment():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    mse = mse_alignment(x, x + 1)
    torch.testing.assert_close(mse.total, torch.tensor(1.0))
    assert mse.var.item() == 0.0 and mse.cov.item() == 0.0
    cos = cosine_alignment(x, 3 * x)  # same direction: zero loss whatever the norm
    torch.testing.assert_close(cos.total, torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(cosine_alignment(x, -x).total, torch.tensor(2.0))


@pytest.mark.parametrize("name", ["vicreg", "mse", "cosine"])
def test_alignment_loss_dispatches(name):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 4, generator=g)
    y = torch.randn(6, 4, generator=g).requires_grad_()  # a target that trains (no stop-grad)
    cfg = LossConfig(alignment=name, sim_coeff=2.0, std_coeff=3.0, cov_coeff=4.0,
                     scale_to_target=False)
    want = {"vicreg": lambda: vicreg_loss(x, y, 2.0, 3.0, 4.0),
            "mse": lambda: mse_alignment(x, y),
            "cosine": lambda: cosine_alignment(x, y)}[name]()
    torch.testing.assert_close(alignment_loss(x, y, cfg).total, want.total)


def test_task_loss_per_task_type():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(task_loss(logits, labels, "multiclass"),
                               F.cross_entropy(logits, labels))
    multi = (torch.rand(4, 3, generator=g) > 0.5).float()
    torch.testing.assert_close(task_loss(logits, multi, "multilabel"),
                               F.binary_cross_entropy_with_logits(logits, multi))
    binary = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(task_loss(logits[:, :2], binary, "binary"),
                               F.cross_entropy(logits[:, :2], binary))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert task_loss(logits.bfloat16(), labels, "multiclass").dtype == torch.float32


def test_task_loss_errors_name_the_problem():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="binary task expects 2 logits"):
        task_loss(logits, torch.zeros(4, dtype=torch.long), "binary")
    with pytest.raises(ValueError, match="multilabel labels"):
        task_loss(logits, torch.zeros(4, 2), "multilabel")
    with pytest.raises(ValueError, match="multiclass labels must be"):
        task_loss(logits, torch.zeros(4, 3), "multiclass")
    with pytest.raises(ValueError, match="task_type"):
        task_loss(logits, torch.zeros(4, dtype=torch.long), "regression")


@pytest.mark.parametrize("name", ["vicreg", "mse", "cosine"])
def test_scaled_alignment_does_not_depend_on_the_embeddings_scale(name):
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    cfg = LossConfig(alignment=name)  # scale_to_target is the default
    for k in (0.05, 30.0):
        torch.testing.assert_close(alignment_loss(k * x, k * y, cfg).total,
                                   alignment_loss(x, y, cfg).total)


def test_scaling_to_the_target_silences_the_variance_hinge_for_a_perfect_prediction():
    # a text-like target: every dimension spreads about 0.3, well below VICReg's threshold of 1
    y = 0.3 * torch.randn(256, 8, generator=torch.Generator().manual_seed(9))
    y.requires_grad_()  # both branches count in VICReg's variance term
    raw = alignment_loss(y.clone(), y, LossConfig(alignment="vicreg", scale_to_target=False))
    scaled = alignment_loss(y.clone(), y, LossConfig(alignment="vicreg"))
    assert raw.inv.item() == 0.0 and scaled.inv.item() == 0.0
    assert raw.var.item() > 0.6  # unscaled, a perfect prediction is still pushed to spread out
    assert scaled.var.item() < 0.1


def test_scale_comes_from_the_target_without_gradient():
    pred = torch.randn(8, 4, requires_grad=True)
    target = (3.0 * torch.randn(8, 4)).requires_grad_()
    p, t = scale_to_target(pred, target)
    torch.testing.assert_close(p * target.detach().std(0).mean(), pred.detach(),
                               check_dtype=False)
    t.sum().backward()
    torch.testing.assert_close(target.grad, torch.full_like(target, 1 / target.detach().std(0).mean().item()))


def test_a_detached_target_drops_only_its_constant_halves():
    torch.manual_seed(0)
    x = torch.randn(16, 8, requires_grad=True)
    y = torch.randn(16, 8) * 0.3
    full = vicreg_loss(x, y)
    pred_only = vicreg_loss(x, y, y_trains=False)
    assert pred_only.inv == full.inv
    assert pred_only.var < full.var and pred_only.cov < full.cov  # y's halves left out
    (g_full,) = torch.autograd.grad(full.total, x)
    (g_pred,) = torch.autograd.grad(pred_only.total, x)
    torch.testing.assert_close(g_pred, g_full)  # the same training signal
    # y carries no gradient
    terms = alignment_loss(x, y, LossConfig(alignment="vicreg", scale_to_target=False))
    assert terms.var == pred_only.var and terms.cov == pred_only.cov
