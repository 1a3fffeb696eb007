"""Figures and widgets for the book: one figure style, sliders, UMAP, curves, retrieval.

`set_style` is the one place that touches matplotlib's rcParams, so every chapter looks alike
and its PNGs stay small. The sliders work both in a static page (pre-rendered, jslinked) and
live in Jupyter (recomputed by a kernel).
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from PIL import Image

from mmcore.metrics import unit_rows

STYLE: dict[str, Any] = {
    "figure.figsize": (6.0, 3.2),
    "figure.dpi": 150,  # sharp at the page's width and on a phone's screen
    "savefig.dpi": 150,
    "figure.autolayout": False,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
}

# One colour per method across the whole book (seaborn's colour-blind palette).
METHODS: tuple[str, ...] = ("ours", "cls", "frozen", "mean", "zero", "dummy")
METHOD_COLORS: dict[str, Any] = dict(zip(METHODS, sns.color_palette("colorblind", len(METHODS))))


def method_palette(methods: Sequence[str]) -> dict[str, Any]:
    """The book's colour of each method; other names get the palette's next colours."""
    extra = iter(sns.color_palette("colorblind", len(METHODS) + len(methods))[len(METHODS):])
    return {m: METHOD_COLORS.get(m) or next(extra) for m in methods}


def set_style() -> None:
    """Apply the book's matplotlib style (PNGs at 150 dpi, seaborn's clean grid)."""
    mpl.rcParams.update(STYLE)
    try:  # the inline backend re-renders at its own dpi unless told otherwise
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except ImportError:
        pass


def stacked_slider(
    render: Callable[[Any], None], values: Sequence[Any], description: str
) -> widgets.VBox:
    """A slider over `values` that shows `render(value)`, pre-rendered for every value.

    The slider is `jslink`ed to a `Stack` of `Output`s, so moving it works in a static page
    (the outputs live in the saved widget state) as well as in Jupyter.

    Args:
        render: Called once per value inside an `Output` context; it displays what to show.
        values: Slider positions, in order.
        description: Label shown left of the slider.

    Returns:
        A `VBox([slider, stack])`.
    """
    if not values:
        raise ValueError("stacked_slider: `values` is empty; give at least one slider position")
    pages = []
    for value in values:
        out = widgets.Output()
        with out:
            render(value)
        pages.append(out)
    stack = widgets.Stack(pages, selected_index=0)
    slider = widgets.SelectionSlider(
        options=list(values), index=0, description=description,
        style={"description_width": "initial"},
    )
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


# --- chapter 01, 02, 05: the method's pieces, training curves, ablation summaries ----------------


def plot_attention_mask(mask: Any, num_tokens: int, ax: plt.Axes | None = None) -> plt.Figure:
    """Draw a read-only attention mask (rows: queries, columns: keys; dark = may attend).

    Args:
        mask: (L + K, L + K) bool, as ``mmcore.prompts.read_only_mask`` returns it.
        num_tokens: L; the rows and columns after it are the K prompts.
        ax: axes to draw on (a new square figure if None).

    Returns:
        The figure holding the heatmap.
    """
    mask = np.asarray(mask, dtype=float)
    size = mask.shape[0]
    if mask.shape != (size, size) or not 0 < num_tokens <= size:
        raise ValueError(f"plot_attention_mask: mask of shape {mask.shape} does not fit "
                         f"num_tokens={num_tokens}; expected (L + K, L + K) with L <= L + K")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    ax.imshow(mask, cmap="Greys", vmin=0, vmax=1.4)
    names = [f"t{i}" for i in range(num_tokens)] + [f"p{i}" for i in range(size - num_tokens)]
    ax.set_xticks(range(size), names, rotation=90)
    ax.set_yticks(range(size), names)
    for line in (ax.axhline, ax.axvline):
        line(num_tokens - 0.5, color="C3", lw=1.2)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.grid(False)
    return ax.figure


def plot_training_curves(history: Sequence[dict[str, float]], metric: str) -> plt.Figure:
    """Training losses and the validation metric per epoch, from a run's ``metrics.jsonl``.

    Args:
        history: one dict per epoch with ``epoch``, ``train_*`` losses and ``val_<metric>``.
        metric: the headline metric name (``mmcore.metrics.metric_for(task).name``).

    Returns:
        A figure with the losses (left) and the validation metric (right).
    """
    if not history:
        raise ValueError("plot_training_curves: the history is empty (no epoch finished)")
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.8))
    for key in ("train_loss", "train_task", "train_align"):
        rows = [row for row in history if key in row]  # epoch 0 (before training) has none
        if rows:
            left.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o",
                      label=key[6:])
    left.set_yscale("log")  # the alignment loss starts orders of magnitude above the task loss
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (epoch mean)")
    left.legend()
    key = f"val_{metric}"
    if any(key in row for row in history):
        right.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o", color="C2")
    right.set_xlabel("epoch")
    right.set_ylabel(f"validation {metric}")
    for ax in (left, right):
        ax.set_xticks(epochs)
    fig.tight_layout()
    return fig


def plot_variants(rows: Sequence[dict[str, Any]], metric: str,
                  reference: float | None = None) -> plt.Figure:
    """One horizontal bar per variant, grouped by ablation, with the spread over seeds.

    Args:
        rows: dicts with ``ablation``, ``variant``, ``mean`` and ``std`` of ``metric``.
        metric: axis label.
        reference: value of the default variant, drawn as a dashed line (None: none).

    Returns:
        One panel per ablation, sharing the metric axis.
    """
    groups = list(dict.fromkeys(row["ablation"] for row in rows))
    if not groups:
        raise ValueError("plot_variants: no rows to plot")
    fig, axes = plt.subplots(len(groups), 1, sharex=True, squeeze=False,
                             figsize=(6.0, 0.5 + 0.55 * len(rows)))
    for ax, group in zip(axes[:, 0], groups):
        part = [row for row in rows if row["ablation"] == group]
        y = np.arange(len(part))
        ax.barh(y, [r["mean"] for r in part], xerr=[r["std"] for r in part],
                color=[f"C{i}" for i in range(len(part))], height=0.6, capsize=3)
        ax.set_yticks(y, [str(r["variant"]) for r in part])
        ax.set_title(group, loc="left")
        if reference is not None:
            ax.axvline(reference, color="0.3", ls="--", lw=1)
    axes[-1, 0].set_xlabel(metric)
    fig.tight_layout()
    return fig


def plot_method_schematic() -> plt.Figure:
    """The method as a diagram: two encoders with read-only prompts, predictors, late fusion."""
    fig, ax = plt.subplots(figsize=(8.0, 3.4))
    ax.set_xlim(-0.1, 10)
    ax.set_ylim(0.2, 4.4)
    ax.axis("off")

    def box(x: float, y: float, w: float, h: float, text: str, color: str) -> None:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color,
                                    ec="0.3", lw=0.8))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8)

    def arrow(a: tuple[float, float], b: tuple[float, float], style: str = "-") -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, lw=0.9,
                                     ls=style, color="0.25"))

    for y, name, enc, head, other in ((2.9, "image", "ViT (BitFit)", "image head",
                                       "text"), (0.5, "text", "BERT (BitFit)",
                                                 "text head", "image")):
        box(0.0, y, 1.1, 0.9, f"{name}\ntokens", "#e8eef7")
        box(1.5, y, 1.9, 0.9, f"{enc}\n+ K read-only\nprompts", "#dbe8d4")
        box(4.0, y + 0.5, 1.6, 0.45, f"{name} embedding", "#f7f2dc")
        box(4.0, y - 0.1, 1.6, 0.45, "prompt outputs", "#f3e1e1")
        box(7.1, y, 1.2, 0.9, head, "#eeeeee")
        arrow((1.1, y + 0.45), (1.5, y + 0.45))
        arrow((3.4, y + 0.7), (4.0, y + 0.72))
        arrow((3.4, y + 0.2), (4.0, y + 0.12))
        arrow((5.6, y + 0.72), (7.1, y + 0.6))
    box(5.9, 1.75, 1.2, 0.9, "feature\npredictors\n(VICReg)", "#f3e1e1")
    arrow((5.6, 2.92), (6.2, 2.65), "--")  # image prompts -> predicted text
    arrow((5.6, 0.62), (6.2, 1.75), "--")  # text prompts -> predicted image
    arrow((7.1, 2.45), (7.5, 2.9), "--")  # predicted image stands in for a missing image
    arrow((7.1, 1.95), (7.5, 1.4), "--")  # predicted text stands in for a missing text
    box(8.7, 1.75, 1.2, 0.9, "sum of\nlogits", "#dddddd")
    arrow((8.3, 3.35), (9.3, 2.65))
    arrow((8.3, 0.95), (9.3, 1.75))
    ax.text(6.5, 4.25, "dashed: used when a modality is missing (and for VICReg in training)",
            ha="center", fontsize=7, color="0.35")
    return fig


def live_slider(
    render: Callable[[Any], None], values: Sequence[Any], description: str
) -> widgets.VBox:
    """The same slider as `stacked_slider`, but `render` runs again on every move.

    Needs a running kernel (Jupyter); in a static page it stays at the first value, so the
    book shows `stacked_slider` and keeps this one for readers who run the notebook.

    Args:
        render: Called with the selected value each time the slider moves.
        values: Slider positions, in order.
        description: Label shown left of the slider.

    Returns:
        An `ipywidgets.interactive` box (slider + output).
    """
    if not values:
        raise ValueError("live_slider: `values` is empty; give at least one slider position")
    slider = widgets.SelectionSlider(
        options=list(values), index=0, description=description,
        style={"description_width": "initial"},
    )
    return widgets.interactive(lambda value: render(value), value=slider)


def stacked_choice_slider(
    render: Callable[[Any, Any], None], choices: Sequence[Any], values: Sequence[Any],
    choice_description: str, description: str,
) -> widgets.VBox:
    """A slider and a row of buttons that together pick ``render(choice, value)``, kernel-free.

    One ``Stack`` per choice holds a pre-rendered ``Output`` per slider value; the slider
    is ``jslink``ed to every inner stack's index and the buttons to the outer stack's, so
    both work in a static page. Returns ``VBox([slider, buttons, stack])``.
    """
    if not choices or not values:
        raise ValueError("stacked_choice_slider: give at least one choice and one value")
    slider = widgets.SelectionSlider(options=list(values), index=0, description=description,
                                     style={"description_width": "initial"})
    buttons = widgets.ToggleButtons(options=[str(c) for c in choices], index=0,
                                    description=choice_description,
                                    style={"description_width": "initial"})
    inner = []
    for choice in choices:
        pages = []
        for value in values:
            out = widgets.Output()
            with out:
                render(choice, value)
            pages.append(out)
        stack = widgets.Stack(pages, selected_index=0)
        widgets.jslink((slider, "index"), (stack, "selected_index"))
        inner.append(stack)
    outer = widgets.Stack(inner, selected_index=0)
    widgets.jslink((buttons, "index"), (outer, "selected_index"))
    return widgets.VBox([slider, buttons, outer])


def describe_difference(values: Sequence[float], unit: str = "points",
                        names: tuple[str, str] = ("ours", "the baseline")) -> str:
    """A sentence on paired differences ``a - b``: its sign and size against its spread.

    "level with" when the mean difference is within one standard deviation of zero, so a
    take-away computed with it cannot claim more than the numbers hold.
    """
    values = np.asarray(list(values), dtype=float)
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    a, b = names
    if abs(mean) <= sd or abs(mean) < 0.05:
        return f"{a} is level with {b} ({mean:+.1f} {unit}, sd {sd:.1f})"
    side = "ahead of" if mean > 0 else "behind"
    return f"{a} is {side} {b} by {abs(mean):.1f} {unit} (sd {sd:.1f} over {len(values)})"


# --- embeddings: UMAP and nearest neighbours --------------------------------------------------


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


def plot_umap(
    ax: plt.Axes, true_xy: np.ndarray, pred_xy: np.ndarray, true_labels: np.ndarray,
    pred_labels: np.ndarray, classes: Sequence[str], title: str,
) -> None:
    """True embeddings as dots and predicted ones as crosses, both coloured by class.

    Labels are (N,) class indices, or (N, C) multi-hot (coloured by the first class).
    """
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    colour = {"cmap": cmap, "vmin": -0.5, "vmax": len(classes) - 0.5}
    ax.scatter(*true_xy.T, c=_class_index(true_labels), s=14, alpha=0.6, marker="o",
               linewidths=0, **colour)
    ax.scatter(*pred_xy.T, c=_class_index(pred_labels), s=18, alpha=0.9, marker="x",
               linewidths=1.0, **colour)
    ax.set(title=title, xticks=[], yticks=[])
    ax.grid(False)


def umap_panel(
    ax: plt.Axes, emb: Any, labels: np.ndarray, modality: str, classes: Sequence[str],
    title: str, random_state: int = 0,
) -> None:
    """UMAP of one space of an `Embeddings`: true `modality` embeddings and their predictions.

    Every row that has `modality` gives a true point; every row that has the *other*
    modality gives a predicted one.

    Args:
        ax: Where to draw.
        emb: `mmcore.model.Embeddings` of a split (CPU tensors).
        labels: (N,) class indices or (N, C) multi-hot of the same rows.
        modality: "image" or "text": the space to show.
        classes: Class names (for the colour range).
        title: Panel title.
        random_state: UMAP seed.
    """
    if modality not in ("image", "text"):
        raise ValueError(f"umap_panel: modality={modality!r}; valid: image, text")
    other = "text" if modality == "image" else "image"
    has_true = getattr(emb, f"has_{modality}").numpy()
    has_source = getattr(emb, f"has_{other}").numpy()
    true_xy, pred_xy = umap_embeddings(getattr(emb, f"{modality}_emb").numpy()[has_true],
                                       getattr(emb, f"pred_{modality}").numpy()[has_source],
                                       random_state=random_state)
    labels = np.asarray(labels)
    plot_umap(ax, true_xy, pred_xy, labels[has_true], labels[has_source], classes, title)


def _class_index(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.argmax(axis=1) if labels.ndim == 2 else labels


def umap_legend(fig: plt.Figure, classes: Sequence[str]) -> None:
    """One legend for a figure of `plot_umap` panels: the markers, then the class colours."""
    cmap = plt.get_cmap("tab20", max(len(classes), 1))
    handles = [plt.Line2D([], [], ls="", marker="o", color="0.4", label="true"),
               plt.Line2D([], [], ls="", marker="x", color="0.4", label="predicted")]
    handles += [plt.Line2D([], [], ls="", marker="o", color=cmap(i), label=name)
                for i, name in enumerate(classes)]
    fig.legend(handles=handles, loc="center right", fontsize=7)


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
    thumb: float = 1.1, wrap: int = 70, title: str = "",
) -> plt.Figure:
    """One row per query: its text above, the retrieved images as thumbnails, best first.

    Args:
        queries: The query texts.
        images: Per query, the image files retrieved for it (same count per row).
        hits: Per query and image, True where the image is the query's own partner; those
            thumbnails get a green frame.
        captions: Per query and image, a short text under the thumbnail (e.g. its class).
        thumb: Thumbnail size in inches.
        wrap: Characters per line of the query text.
        title: Figure title above the first query.

    Returns:
        The figure.
    """
    if len(queries) != len(images) or not queries:
        raise ValueError(f"retrieval_grid: {len(queries)} queries but {len(images)} image rows")
    k, rows = len(images[0]), len(queries)
    gap = 0.45 + (0.15 if captions else 0.0)  # inches per row for the query text and captions
    height = rows * (thumb + gap) + 0.3
    fig, axes = plt.subplots(rows, k, figsize=(k * thumb, height), squeeze=False)
    # a manual layout: tight_layout would squeeze the thumbnails to fit the long query titles
    fig.subplots_adjust(left=0.01, right=0.99, bottom=(gap - 0.35) / height + 0.01,
                        top=1 - (0.3 + 0.35) / height, wspace=0.05, hspace=gap / thumb)
    if title:
        fig.suptitle(title, x=0.01, y=1 - 0.05 / height, ha="left", va="top", fontsize=9)
    for row, (text, files) in enumerate(zip(queries, images)):
        for col, path in enumerate(files):
            ax = axes[row, col]
            with Image.open(path) as im:
                im.thumbnail((128, 128))
                ax.imshow(im.convert("RGB"))
            ax.set(xticks=[], yticks=[])
            if captions is not None:
                ax.set_xlabel(captions[row][col], fontsize=7, labelpad=2)
            hit = hits is not None and hits[row][col]
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set(color="tab:green" if hit else "0.8", linewidth=3 if hit else 0.8)
        label = textwrap.shorten(text, width=2 * wrap, placeholder=" ...")
        axes[row, 0].set_title("\n".join(textwrap.wrap(label, wrap)), loc="left", fontsize=8,
                               ha="left")
    return fig


# --- robustness curves ----------------------------------------------------------------------


def aggregate(
    rows: Iterable[Mapping[str, Any]], metric: str,
    keys: Sequence[str] = ("method", "missing_type", "missing_rate"),
) -> dict[tuple, tuple[float, float, int]]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of `metric` per group.

    Args:
        rows: Tidy result rows (e.g. sweep rows with a "method" column added).
        metric: The column to average.
        keys: Columns that define a group; the remaining variation (the seeds) is averaged.

    Returns:
        Group key tuple -> (mean, std, count).
    """
    groups: dict[tuple, list[float]] = {}
    for i, row in enumerate(rows):
        missing = [c for c in (*keys, metric) if c not in row]
        if missing:
            raise KeyError(f"aggregate: row {i} has no column {missing[0]!r}; has {sorted(row)}")
        groups.setdefault(tuple(row[c] for c in keys), []).append(float(row[metric]))
    return {key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for key, v in groups.items()}


def plot_metric_vs_rate(
    rows: Iterable[Mapping[str, Any]], metric: str, methods: Sequence[str] | None = None,
    types: Sequence[str] = ("both", "image", "text"), ylabel: str | None = None,
) -> plt.Figure:
    """`metric` against the missing rate: one panel per missing type, one line per method.

    Lines are the mean over the rows of a (method, type, rate), bands mean +- one standard
    deviation (seaborn's ``errorbar="sd"``); each panel's axis fits its own data.

    Args:
        rows: Tidy rows with "method", "missing_type", "missing_rate" and `metric` columns.
        metric: The column to plot.
        methods: Methods to draw, in legend order (default: in order of appearance).
        types: Missing types, one panel each.
        ylabel: Axis label (default: `metric`).

    Returns:
        The figure.
    """
    data = pd.DataFrame(list(rows))
    methods = list(methods or dict.fromkeys(data["method"]))
    data = data[data["method"].isin(methods)]
    fig, axes = plt.subplots(1, len(types), figsize=(3.4 * len(types), 3.2), squeeze=False)
    for ax, missing_type in zip(axes[0], types):
        sns.lineplot(data=data[data["missing_type"] == missing_type], x="missing_rate", y=metric,
                     hue="method", hue_order=methods, palette=method_palette(methods),
                     errorbar="sd", marker="o", ax=ax, legend=ax is axes[0, -1])
        ax.set(title=f"missing: {missing_type}", xlabel="missing rate $\\eta$", ylabel="")
    axes[0, 0].set_ylabel(ylabel or metric)
    sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.0, 1.0), title=None)
    fig.tight_layout()
    return fig


def plot_methods_at_rate(
    rows: Iterable[Mapping[str, Any]], metric: str, rate: float,
    methods: Sequence[str] | None = None, types: Sequence[str] = ("both", "image", "text"),
    ylim: tuple[float, float] | None = None, ylabel: str | None = None,
) -> plt.Figure:
    """Grouped bars of `metric` at one missing rate: a group per missing type, a bar per method.

    Error bars are one standard deviation over the rows of a (method, type). The axis
    starts near the smallest bar, not at zero, so that gaps of a point or two show;
    ``ylim`` fixes it instead (e.g. one range for every position of a slider).
    """
    data = pd.DataFrame(list(rows))
    methods = list(methods or dict.fromkeys(data["method"]))
    data = data[(data["missing_rate"] == rate) & data["method"].isin(methods)
                & data["missing_type"].isin(types)]
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    sns.barplot(data=data, x="missing_type", y=metric, hue="method", hue_order=methods,
                order=list(types), palette=method_palette(methods), errorbar="sd", capsize=0.1,
                ax=ax)
    ax.set(xlabel="missing type", ylabel=ylabel or metric,
           title=f"missing rate $\\eta$ = {rate:.1f}")
    if ylim is None:
        spread = data.groupby(["method", "missing_type"])[metric].agg(["mean", "std"]).fillna(0.0)
        ylim = value_range([*(spread["mean"] - spread["std"]), *(spread["mean"] + spread["std"])])
    ax.set_ylim(*ylim)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), title=None)
    fig.tight_layout()
    return fig


def value_range(values: Iterable[float], margin: float = 0.1) -> tuple[float, float]:
    """An axis range around ``values`` with ``margin`` times their spread on each side,
    never below zero for non-negative values (metrics)."""
    values = np.asarray(list(values), dtype=float)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = margin * max(hi - lo, 1e-6)
    return (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
