"""mmcore.embedding_plots: neighbours, class agreement, the UMAP panels and retrieval grids."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")

from mmcore import embedding_plots as ep  # noqa: E402 (after choosing the backend)
from mmcore import metrics  # noqa: E402


def test_nearest_orders_by_cosine_and_checks_k() -> None:
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(10, 5))
    queries = keys[[3, 7]] * 5.0 + 1e-3 * rng.normal(size=(2, 5))
    idx = ep.nearest(queries, keys, k=4)
    assert idx.shape == (2, 4)
    np.testing.assert_array_equal(idx[:, 0], [3, 7])
    sims = metrics.unit_rows(queries) @ metrics.unit_rows(keys).T
    assert np.all(np.diff(np.take_along_axis(sims, idx, axis=1), axis=1) <= 0)
    with pytest.raises(ValueError, match="k=11"):
        ep.nearest(queries, keys, k=11)


@pytest.mark.slow  # umap-learn compiles numba code on first use
def test_umap_embeddings_shapes_and_seed() -> None:
    rng = np.random.default_rng(0)
    true, pred = rng.normal(size=(40, 8)), rng.normal(size=(30, 8))
    a_true, a_pred = ep.umap_embeddings(true, pred, random_state=0, n_neighbors=5)
    b_true, _ = ep.umap_embeddings(true, pred, random_state=0, n_neighbors=5)
    assert a_true.shape == (40, 2) and a_pred.shape == (30, 2)
    np.testing.assert_allclose(a_true, b_true)  # random_state fixes the layout
    with pytest.raises(ValueError, match="same D"):
        ep.umap_embeddings(true, pred[:, :4])


def test_top_classes_most_frequent_first() -> None:
    assert ep.top_classes(np.array([2, 2, 0, 1, 2, 0]), 2) == [2, 0]
    assert ep.top_classes(np.eye(3)[[1, 1, 0]], 5) == [1, 0]  # multi-hot: first class; no empty


def test_nearest_class_agreement_and_chance() -> None:
    true = np.eye(4)
    pred = np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])  # nearest truths: rows 0 and 3
    agreement, chance = ep.nearest_class_agreement(pred, true, np.array([0, 0]),
                                                   np.array([0, 0, 1, 1]))
    assert agreement == pytest.approx(0.5) and chance == pytest.approx(0.5)


def test_plot_space_ties_each_prediction_to_its_truth() -> None:
    points = {"true_xy": np.array([[0.0, 0], [1, 1], [2, 2]]), "pred_xy": np.array([[0.0, 1],
              [5, 5]]), "true_rows": np.array([0, 1, 2]), "pred_rows": np.array([0, 3]),
              "labels": np.array([0, 0, 1, 0])}
    fig, ax = matplotlib.pyplot.subplots()
    ep.plot_space(ax, points, highlight=[0], colors=["red"], title="t")
    lines = ax.get_lines()  # row 3 has no truth: one line, from (0, 1) to row 0's (0, 0)
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_xydata(), [[0, 1], [0, 0]])
    matplotlib.pyplot.close(fig)


def test_retrieval_grid_layout_and_hits(tmp_path) -> None:
    files = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (300, 200), (80 * i, 0, 0)).save(path)
        files.append(path)
    fig = ep.retrieval_grid(["a query", "another query"], [files, files[::-1]],
                             hits=[[True, False, False], [False, False, False]])
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title(loc="left") == "a query"
    assert fig.axes[0].spines["left"].get_edgecolor()[:3] == matplotlib.colors.to_rgb(ep.RIGHT)
    assert fig.axes[1].spines["left"].get_edgecolor()[:3] != matplotlib.colors.to_rgb(ep.RIGHT)
    with pytest.raises(ValueError, match="2 queries but 1"):
        ep.retrieval_grid(["a", "b"], [files])
    matplotlib.pyplot.close(fig)


def test_retrieval_grid_shows_query_class_and_marks_the_right_class(tmp_path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (64, 64)).save(path)
    fig = ep.retrieval_grid(["a text"], [[path, path]], captions=[["cats", "dogs"]],
                            query_classes=["cats"], same_class=[[True, False]])
    assert fig.axes[0].get_title(loc="left").startswith("[cats] a text")
    assert fig.axes[0].get_xlabel() == "\u2713 cats" and fig.axes[1].get_xlabel() == "\u2717 dogs"
    assert matplotlib.colors.to_hex(fig.axes[1].xaxis.label.get_color()) == ep.WRONG
    matplotlib.pyplot.close(fig)

