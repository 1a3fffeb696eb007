"""Embedding figures for chapter 3: where predicted embeddings land, and what they retrieve.

A UMAP map per space shows the true embeddings and the predictions of a few highlighted
classes, each prediction tied to its own truth by a line; retrieval grids show the real
images nearest to the image predicted from a text, marked by whether each is of the
query's class. The numbers the prose quotes come from the full-dimensional embeddings
(`nearest_class_agreement`), never from the 2-D map.
"""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

from mmcore.metrics import unit_rows

RIGHT, WRONG = "#1a7f37", "#b42318"  # right class / other class in retrieval grids


def umap_embeddings(
    true: np.ndarray, pred: np.ndarray, random_state: int = 0, n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One 2-D UMAP fitted on true and predicted embeddings of the same space together.

    Fitting both sets jointly puts them in one map, so "the predictions land where the true
    embeddings are" can be read off the picture.

    Args:
        true: (N, D) embeddings from the modality's encoder.
        pred: (M, D) embeddings predicted from the other modality.
        random_state: UMAP seed (fixes the layout; UMAP then runs single-threaded).
        n_neighbors: UMAP's neighbourhood size.
        min_dist: UMAP's minimum distance between embedded points.

    Returns:
        (N, 2) and (M, 2) coordinates for `true` and `pred`.
    """
    if true.ndim != 2 or pred.ndim != 2 or true.shape[1] != pred.shape[1]:
        raise ValueError(f"umap_embeddings: true {true.shape} and pred {pred.shape} must be "
                         "(N, D) and (M, D) with the same D")
    import umap  # imported here: its first import compiles numba code for seconds

    points = np.concatenate([true, pred]).astype(np.float32)  # (N + M, D)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine",
                        random_state=random_state, n_jobs=1)  # a seed forces one thread
    xy = reducer.fit_transform(points)  # (N + M, 2)
    return xy[: len(true)], xy[len(true):]


def class_index(labels: np.ndarray) -> np.ndarray:
    """(N,) class indices from (N,) indices or (N, C) multi-hot labels (the first class)."""
    labels = np.asarray(labels)
    return labels.argmax(axis=1) if labels.ndim == 2 else labels


def top_classes(labels: np.ndarray, n: int) -> list[int]:
    """The ``n`` most frequent classes of ``labels``, most frequent first (ties: lower index)."""
    index = class_index(labels)
    counts = np.bincount(index)
    return [int(c) for c in np.argsort(-counts, kind="stable")[:n] if counts[c] > 0]


def space_points(emb: Any, labels: np.ndarray, modality: str, random_state: int = 0) -> dict:
    """One UMAP of a space of an `Embeddings`: its true embeddings and their predictions.

    Every row that has ``modality`` gives a true point; every row that has the *other*
    modality gives a predicted one (predicted from that modality).

    Returns:
        ``true_xy`` (N, 2), ``pred_xy`` (M, 2), ``true_rows`` (N,) and ``pred_rows`` (M,)
        (the rows they come from) and ``labels`` (class indices of every row).
    """
    if modality not in ("image", "text"):
        raise ValueError(f"space_points: modality={modality!r}; valid: image, text")
    other = "text" if modality == "image" else "image"
    true_rows = np.flatnonzero(getattr(emb, f"has_{modality}").numpy())
    pred_rows = np.flatnonzero(getattr(emb, f"has_{other}").numpy())
    true_xy, pred_xy = umap_embeddings(getattr(emb, f"{modality}_emb").numpy()[true_rows],
                                       getattr(emb, f"pred_{modality}").numpy()[pred_rows],
                                       random_state=random_state)
    return {"true_xy": true_xy, "pred_xy": pred_xy, "true_rows": true_rows,
            "pred_rows": pred_rows, "labels": class_index(labels)}


def plot_space(ax: plt.Axes, points: Mapping[str, np.ndarray], highlight: Sequence[int],
               colors: Sequence[Any], title: str, max_lines: int = 12) -> None:
    """Draw `space_points` on ``ax``: every true embedding as a light grey dot; for the
    ``highlight`` classes, true embeddings as coloured dots, predictions as crosses of the
    same colour, and for the first ``max_lines`` predictions of each class a line to its own
    sample's true embedding. The view spans the 3rd to 97th percentile of the points (plus a margin),
    so a few far outliers do not squeeze the rest; a note counts the points left outside."""
    labels = points["labels"]
    ax.scatter(*points["true_xy"].T, s=6, color="0.82", linewidths=0, zorder=1)
    where_true = {int(r): i for i, r in enumerate(points["true_rows"])}
    for cls, color in zip(highlight, colors):
        t = labels[points["true_rows"]] == cls
        p = labels[points["pred_rows"]] == cls
        pairs = [(points["pred_xy"][i], points["true_xy"][where_true[int(r)]])
                 for i, r in zip(np.flatnonzero(p), points["pred_rows"][p]) if int(r) in where_true]
        for (px, py), (tx, ty) in pairs[:max_lines]:
            ax.plot([px, tx], [py, ty], color=color, lw=0.8, alpha=0.6, zorder=2)
        ax.scatter(*points["true_xy"][t].T, s=14, color=color, linewidths=0, alpha=0.8, zorder=3)
        ax.scatter(*points["pred_xy"][p].T, s=22, color=color, marker="x", linewidths=1.1,
                   zorder=4)
    xy = np.concatenate([points["true_xy"], points["pred_xy"]])
    low, high = np.percentile(xy, 3, axis=0), np.percentile(xy, 97, axis=0)
    pad = 0.15 * (high - low)
    low, high = low - pad, high + pad
    outside = int(np.sum(np.any((xy < low) | (xy > high), axis=1)))
    ax.set(xlim=(low[0], high[0]), ylim=(low[1], high[1]), title=title, xticks=[], yticks=[])
    if outside:
        ax.text(0.01, 0.01, f"{outside} points outside the view", transform=ax.transAxes,
                fontsize=8, color="0.4")
    ax.grid(False)


def umap_figure(embeddings: Mapping[str, Any], labels: Mapping[str, np.ndarray], modality: str,
                classes: Sequence[str], n_highlight: int = 4, random_state: int = 0,
                max_lines: int = 12) -> plt.Figure:
    """One space (``modality``) for several models, one above the other, with one legend below.

    Stacked, the figure stays narrow: scaled to a phone's width its labels stay legible.

    Args:
        embeddings: model name -> its `Embeddings` of the test split.
        labels: model name -> (N,) class indices or (N, C) multi-hot of the same rows.
        modality: "image" or "text": the space to show.
        classes: Class names.
        n_highlight: How many classes to colour (the most frequent); the rest stay grey.
        random_state: UMAP seed.
        max_lines: Predictions per class tied to their truth by a line.
    """
    names = list(embeddings)
    highlight = top_classes(next(iter(labels.values())), n_highlight)
    colors = sns.color_palette("Dark2", len(highlight))
    height = 3.4 * len(names) + 1.3  # inches: the panels, then the legend
    fig, axes = plt.subplots(len(names), 1, figsize=(4.2, height), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        points = space_points(embeddings[name], labels[name], modality, random_state)
        plot_space(ax, points, highlight, colors, f"{name}: {modality} space", max_lines)
    handles = [Patch(color=c, label=classes[k]) for k, c in zip(highlight, colors)]
    handles += [Line2D([], [], ls="", marker="o", color="0.82", label="other classes (true)"),
                Line2D([], [], ls="", marker="o", color="0.3", label="true embedding"),
                Line2D([], [], ls="", marker="x", color="0.3", label="prediction"),
                Line2D([], [], color="0.3", lw=0.8, label=f"{max_lines} per class: to its truth")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, handlelength=1.2,
               columnspacing=1.0, bbox_to_anchor=(0.5, 0.0))
    fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.3 / height, bottom=1.3 / height,
                        hspace=0.12)
    return fig


def nearest_class_agreement(pred: np.ndarray, true: np.ndarray, pred_labels: np.ndarray,
                            true_labels: np.ndarray) -> tuple[float, float]:
    """How often a prediction's nearest true embedding (cosine) is of the prediction's class,
    and what chance gives (the class frequencies of the predictions times those of the
    truths).

    Returns:
        (agreement, chance), both fractions.
    """
    pred_labels, true_labels = class_index(pred_labels), class_index(true_labels)
    found = nearest(pred, true, 1)[:, 0]
    agreement = float(np.mean(true_labels[found] == pred_labels))
    size = int(max(pred_labels.max(), true_labels.max())) + 1
    p, t = (np.bincount(x, minlength=size) / len(x) for x in (pred_labels, true_labels))
    return agreement, float(p @ t)


def space_agreement(emb: Any, labels: np.ndarray, modality: str) -> tuple[float, float]:
    """`nearest_class_agreement` in one space of an `Embeddings`: every prediction of a
    ``modality`` embedding against every true one."""
    other = "text" if modality == "image" else "image"
    has_true = getattr(emb, f"has_{modality}").numpy()
    has_pred = getattr(emb, f"has_{other}").numpy()
    index = class_index(labels)
    return nearest_class_agreement(getattr(emb, f"pred_{modality}").numpy()[has_pred],
                                   getattr(emb, f"{modality}_emb").numpy()[has_true],
                                   index[has_pred], index[has_true])


def complete_pairs(emb: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(predicted, true) embeddings per direction, on the rows that have both modalities.

    Args:
        emb: `mmcore.model.Embeddings` of a split (CPU tensors).

    Returns:
        {"text -> image": (pred_image, image_emb), "image -> text": (pred_text, text_emb)},
        each (M, D) over the same M complete rows.
    """
    both = (emb.has_image & emb.has_text).numpy()
    return {"text -> image": (emb.pred_image.numpy()[both], emb.image_emb.numpy()[both]),
            "image -> text": (emb.pred_text.numpy()[both], emb.text_emb.numpy()[both])}


def nearest(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) indices of the `k` keys nearest to each query by cosine similarity, best first."""
    if not 1 <= k <= len(keys):
        raise ValueError(f"nearest: k={k} must be in 1..{len(keys)} (the number of keys)")
    sim = unit_rows(queries) @ unit_rows(keys).T  # (Q, N)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def retrieve_images(emb: Any, rows: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) rows whose real image is nearest to the image predicted from each row's text.

    Args:
        emb: `mmcore.model.Embeddings` of a split (CPU tensors).
        rows: (Q,) query rows; each must have its text.
        k: Images to return per query, best first, among the rows that have an image.
    """
    rows = np.asarray(rows)
    if not emb.has_text.numpy()[rows].all():
        raise ValueError("retrieve_images: a query row has no text to predict an image from")
    keys = np.flatnonzero(emb.has_image.numpy())
    found = nearest(emb.pred_image.numpy()[rows], emb.image_emb.numpy()[keys], k)  # (Q, k)
    return keys[found]


def retrieval_grid(
    queries: Sequence[str], images: Sequence[Sequence[str | Path]],
    hits: Sequence[Sequence[bool]] | None = None, captions: Sequence[Sequence[str]] | None = None,
    query_classes: Sequence[str] | None = None, same_class: Sequence[Sequence[bool]] | None = None,
    thumb: float = 1.25, wrap: int = 60, title: str = "",
) -> plt.Figure:
    """One row per query: its class and text above, the retrieved images as thumbnails.

    Args:
        queries: The query texts.
        images: Per query, the image files retrieved for it, best first (same count per row).
        hits: Per query and image, True where the image is the query's own partner; those
            thumbnails get a thick green frame.
        captions: Per query and image, a short text under the thumbnail (e.g. its class).
        query_classes: Per query, its class, shown before its text.
        same_class: Per query and image, whether the image is of the query's class: its
            caption starts with a green check mark, or a red cross.
        thumb: Thumbnail size in inches.
        wrap: Characters per line of the query text.
        title: Figure title above the first query.

    Returns:
        The figure.
    """
    if len(queries) != len(images) or not queries:
        raise ValueError(f"retrieval_grid: {len(queries)} queries but {len(images)} image rows")
    k, rows = len(images[0]), len(queries)
    gap = 0.55 + (0.2 if captions else 0.0)  # inches per row for the query text and captions
    top = 0.45 if title else 0.1
    height = rows * (thumb + gap) + top
    fig, axes = plt.subplots(rows, k, figsize=(k * thumb, height), squeeze=False)
    # a manual layout: tight_layout would squeeze the thumbnails to fit the long query titles
    fig.subplots_adjust(left=0.01, right=0.99, bottom=(gap - 0.45) / height + 0.01,
                        top=1 - (top + 0.45) / height, wspace=0.06, hspace=gap / thumb)
    if title:
        fig.suptitle("\n".join(textwrap.wrap(title, 8 * k)), x=0.01, y=1 - 0.03 / height,
                     ha="left", va="top", fontsize=9)
    for row, (text, files) in enumerate(zip(queries, images)):
        for col, path in enumerate(files):
            ax = axes[row, col]
            with Image.open(path) as im:
                im.thumbnail((160, 160))
                ax.imshow(im.convert("RGB"))
            ax.set(xticks=[], yticks=[])
            same = None if same_class is None else bool(same_class[row][col])
            if captions is not None:
                mark = "" if same is None else ("\u2713 " if same else "\u2717 ")
                ax.set_xlabel(mark + captions[row][col], fontsize=8, labelpad=2,
                              color="0.2" if same is None else RIGHT if same else WRONG)
            hit = hits is not None and hits[row][col]
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set(color=RIGHT if hit else "0.8", linewidth=3.5 if hit else 0.8)
        label = textwrap.shorten(text, width=2 * wrap, placeholder=" ...")
        if query_classes is not None:
            label = f"[{query_classes[row]}] {label}"
        axes[row, 0].set_title("\n".join(textwrap.wrap(label, wrap)), loc="left", fontsize=9,
                               ha="left")
    return fig
