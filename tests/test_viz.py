"""mmcore.viz: aggregation, the rate figures in the book's colours, computed comparisons."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from mmcore import metrics, viz  # noqa: E402 (after choosing the backend)


def _rows() -> list[dict]:
    """Two methods, two rates, three seeds of one missing type, with hand-checkable values."""
    values = {("ours", 0.5): [0.6, 0.7, 0.8], ("ours", 0.9): [0.5, 0.5, 0.5],
              ("cls", 0.5): [0.4, 0.6, 0.5], ("cls", 0.9): [0.1, 0.3, 0.2]}
    return [{"method": m, "missing_type": "both", "missing_rate": r, "seed": s, "accuracy": v}
            for (m, r), vs in values.items() for s, v in enumerate(vs)]


def test_aggregate_matches_hand_computation() -> None:
    stats = viz.aggregate(_rows(), "accuracy")
    assert set(stats) == {("ours", "both", 0.5), ("ours", "both", 0.9),
                          ("cls", "both", 0.5), ("cls", "both", 0.9)}
    mean, std, n = stats[("ours", "both", 0.5)]
    assert n == 3 and mean == pytest.approx(0.7)
    assert std == pytest.approx(np.sqrt(((0.1) ** 2 + 0 + (0.1) ** 2) / 2))  # ddof = 1
    assert stats[("ours", "both", 0.9)][1] == pytest.approx(0.0)
    assert stats[("cls", "both", 0.9)][:2] == pytest.approx((0.2, 0.1))


def test_aggregate_single_value_has_zero_std_and_custom_keys() -> None:
    stats = viz.aggregate(_rows()[:1], "accuracy", keys=("method",))
    assert stats == {("ours",): (pytest.approx(0.6), 0.0, 1)}


def test_aggregate_names_a_missing_column() -> None:
    rows = [{"method": "ours", "missing_type": "both", "missing_rate": 0.1}]
    with pytest.raises(KeyError, match="accuracy"):
        viz.aggregate(rows, "accuracy")


def test_plot_metric_vs_rate_draws_mean_and_band_per_method() -> None:
    fig = viz.plot_metric_vs_rate(_rows(), "accuracy", methods=["ours", "cls"], types=("both",))
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert [matplotlib.colors.to_hex(line.get_color()) for line in lines] == [
        matplotlib.colors.to_hex(viz.METHOD_COLORS[m]) for m in ("ours", "cls")]  # book colours
    np.testing.assert_allclose(lines[0].get_xdata(), [0.5, 0.9])
    np.testing.assert_allclose(lines[1].get_ydata(), [0.5, 0.2])
    band = ax.collections[1].get_paths()[0].vertices  # cls: mean +- std
    assert band[:, 1].max() == pytest.approx(0.6) and band[:, 1].min() == pytest.approx(0.1)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ours", "cls"]
    matplotlib.pyplot.close(fig)


def test_plot_methods_at_rate_bars_are_the_means() -> None:
    fig = viz.plot_methods_at_rate(_rows(), "accuracy", 0.9, methods=["ours", "cls"],
                                   types=("both",))
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0 and p.get_width() > 0][:2]
    assert [b.get_height() for b in bars] == pytest.approx([0.5, 0.2])
    low, high = ax.get_ylim()
    assert 0.0 < low < 0.2 and high > 0.5  # the axis fits the data, not 0..1
    matplotlib.pyplot.close(fig)


def test_cosine_and_partner_ranks() -> None:
    true = np.eye(4)
    pred = np.array([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 0, 0.1, 0], [0, 0, 0, -1.0]])
    np.testing.assert_allclose(metrics.cosine_to_partner(pred, true)[:2], [1.0, 1.0])
    assert metrics.cosine_to_partner(pred, true)[3] == pytest.approx(-1.0)
    # row 2 is nearer to item 0 than to its partner 2; row 3 is nearest to everything but 3
    np.testing.assert_array_equal(metrics.partner_ranks(pred, true), [0, 0, 1, 3])


def test_partner_stats_from_ranks() -> None:
    true = np.eye(4)
    pred = np.array([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [1.0, 0, 0.1, 0], [0, 0, 0, -1.0]])
    stats = metrics.partner_stats(pred, true, ks=(1, 2))  # ranks 0, 0, 1, 3
    assert stats["recall@1"] == pytest.approx(0.5) and stats["recall@2"] == pytest.approx(0.75)
    assert stats["median_rank"] == pytest.approx(1.5) and stats["chance_rank"] == 2.5
    assert stats["cosine"] == pytest.approx(metrics.cosine_to_partner(pred, true).mean())


def _train_rows() -> list[dict]:
    return [{"train_rate": t, "missing_type": "both", "missing_rate": r, "seed": s,
             "accuracy": 0.5 + 0.1 * t - 0.2 * r + 0.01 * s}
            for t in (0.0, 0.3, 0.7) for r in (0.0, 0.5, 1.0) for s in range(3)]


def test_plot_training_rate_draws_complete_and_chosen_rate_on_fixed_axes() -> None:
    figs = [viz.plot_training_rate(_train_rows(), "accuracy", t, types=("both",))
            for t in (0.3, 0.7)]
    for fig, t in zip(figs, (0.3, 0.7)):
        lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 3]
        np.testing.assert_allclose(lines[0].get_ydata(), [0.51, 0.41, 0.31])  # complete
        np.testing.assert_allclose(lines[1].get_ydata(), np.array([0.51, 0.41, 0.31]) + 0.1 * t)
    assert figs[0].axes[0].get_ylim() == figs[1].axes[0].get_ylim()  # the slider moves lines only
    with pytest.raises(ValueError, match="train_rate=0.5"):
        viz.plot_training_rate(_train_rows(), "accuracy", 0.5)
    for fig in figs:
        matplotlib.pyplot.close(fig)


def test_describe_difference_says_level_within_one_sd() -> None:
    assert viz.describe_difference([1.0, -1.0, 0.5]).startswith("ours is level with")
    assert "ahead of the baseline by 2.0 points" in viz.describe_difference([2.0, 2.1, 1.9])
    assert "behind" in viz.describe_difference([-3.0, -2.9, -3.1])



def test_plot_variants_colours_the_default_alike_in_every_panel():
    rows = [{"ablation": "K", "variant": "1", "mean": 60.0, "std": 1.0},
            {"ablation": "K", "variant": "6 (default)", "mean": 62.0, "std": 0.5},
            {"ablation": "loss", "variant": "mse (default)", "mean": 62.0, "std": 0.5},
            {"ablation": "loss", "variant": "vicreg", "mean": 55.0, "std": 2.0}]
    fig = viz.plot_variants(rows, "accuracy (%)", reference=62.0)
    panels = fig.axes
    assert [ax.get_title(loc="left") for ax in panels] == ["K", "loss"]
    ours = matplotlib.colors.to_rgba(viz.METHOD_COLORS["ours"])
    for ax, default_index in zip(panels, (1, 0)):
        colours = [bar.get_facecolor() for bar in ax.patches]
        assert colours[default_index] == ours
        assert all(c != ours for i, c in enumerate(colours) if i != default_index)
    with pytest.raises(ValueError, match="no rows"):
        viz.plot_variants([], "accuracy (%)")
    plt.close(fig)
