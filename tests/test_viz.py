"""mmcore.viz: the pure parts of the book's figures (aggregation, ranks, neighbours, widgets)."""
from __future__ import annotations

import ipywidgets as widgets
import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")

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


def test_nearest_orders_by_cosine_and_checks_k() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(10, 5))
    queries = keys[[3, 7]] * 5.0 + 1e-3 * rng.normal(size=(2, 5))
    idx = viz.nearest(queries, keys, k=4)
    assert idx.shape == (2, 4)
    np.testing.assert_array_equal(idx[:, 0], [3, 7])
    sims = metrics.unit_rows(queries) @ metrics.unit_rows(keys).T
    assert np.all(np.diff(np.take_along_axis(sims, idx, axis=1), axis=1) <= 0)
    with pytest.raises(ValueError, match="k=11"):
        viz.nearest(queries, keys, k=11)


def test_stacked_slider_links_slider_to_one_output_per_value(monkeypatch) -> None:
    links = []
    monkeypatch.setattr(viz.widgets, "jslink", lambda *pair: links.append(pair))
    seen = []
    box = viz.stacked_slider(seen.append, [0.1, 0.5, 0.9], description="rate")
    slider, stack = box.children
    assert isinstance(slider, widgets.SelectionSlider) and isinstance(stack, widgets.Stack)
    assert seen == [0.1, 0.5, 0.9]
    assert len(stack.children) == 3 and all(isinstance(c, widgets.Output) for c in stack.children)
    assert links == [((slider, "index"), (stack, "selected_index"))]
    assert slider.options == (0.1, 0.5, 0.9) and stack.selected_index == 0
    with pytest.raises(ValueError, match="values"):
        viz.stacked_slider(seen.append, [], description="rate")


def test_live_slider_rerenders_on_change() -> None:
    seen = []
    box = viz.live_slider(seen.append, [1, 2, 3], description="k")
    box.children[0].value = 3
    assert seen[0] == 1 and seen[-1] == 3


@pytest.mark.slow  # umap-learn compiles numba code on first use
def test_umap_embeddings_shapes_and_seed() -> None:
    rng = np.random.default_rng(0)
    true, pred = rng.normal(size=(40, 8)), rng.normal(size=(30, 8))
    a_true, a_pred = viz.umap_embeddings(true, pred, random_state=0, n_neighbors=5)
    b_true, _ = viz.umap_embeddings(true, pred, random_state=0, n_neighbors=5)
    assert a_true.shape == (40, 2) and a_pred.shape == (30, 2)
    np.testing.assert_allclose(a_true, b_true)  # random_state fixes the layout
    with pytest.raises(ValueError, match="same D"):
        viz.umap_embeddings(true, pred[:, :4])


def test_retrieval_grid_layout_and_hits(tmp_path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (300, 200), (80 * i, 0, 0)).save(path)
        files.append(path)
    fig = viz.retrieval_grid(["a query", "another query"], [files, files[::-1]],
                             hits=[[True, False, False], [False, False, False]])
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title(loc="left") == "a query"
    assert fig.axes[0].spines["left"].get_edgecolor()[:3] == matplotlib.colors.to_rgb("tab:green")
    assert fig.axes[1].spines["left"].get_edgecolor()[:3] != matplotlib.colors.to_rgb("tab:green")
    with pytest.raises(ValueError, match="2 queries but 1"):
        viz.retrieval_grid(["a", "b"], [files])
    matplotlib.pyplot.close(fig)
