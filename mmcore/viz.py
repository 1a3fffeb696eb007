"""The book's figure style and its statistical plots: one colour per method, curves, bars.

`set_style` is the one place that touches matplotlib's rcParams, so every chapter looks alike.
The other figure modules: `mmcore.diagrams` (the method drawn), `mmcore.embedding_plots`
(UMAP and retrieval) and `mmcore.sliders` (kernel-free widgets for the static site).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

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

    One colour means one thing in every panel: the default variant (its name ends in
    "(default)") in the method's colour, every alternative in grey.

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
        colors = [METHOD_COLORS["ours"] if str(r["variant"]).endswith("(default)") else "0.7"
                  for r in part]
        ax.barh(y, [r["mean"] for r in part], xerr=[r["std"] for r in part], color=colors,
                height=0.6, capsize=3)
        ax.set_yticks(y, [str(r["variant"]) for r in part])
        ax.set_title(group, loc="left")
        if reference is not None:
            ax.axvline(reference, color="0.3", ls="--", lw=1)
    axes[-1, 0].set_xlabel(metric)
    fig.tight_layout()
    return fig


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


def plot_training_rate(
    rows: Iterable[Mapping[str, Any]], metric: str, train_rate: float,
    types: Sequence[str] = ("both", "image", "text"), ylabel: str | None = None,
) -> plt.Figure:
    """`metric` against the test missing rate for the model trained at ``train_rate``, beside
    the model trained on complete pairs (``train_rate`` 0): one panel per test missing type.

    Each panel's axis spans every training rate in ``rows``, so that a slider over the
    training rate moves the lines, not the axes.

    Args:
        rows: Tidy rows with "train_rate", "missing_type", "missing_rate" and `metric`.
        metric: The column to plot.
        train_rate: The training rate to draw (a value of the "train_rate" column).
        types: Test missing types, one panel each.
        ylabel: Axis label (default: `metric`).
    """
    data = pd.DataFrame(list(rows))
    if train_rate not in set(data["train_rate"]):
        raise ValueError(f"plot_training_rate: no rows with train_rate={train_rate}; "
                         f"have {sorted(set(data['train_rate']))}")
    names = {0.0: "trained on complete pairs"}
    if train_rate:
        names[train_rate] = f"trained at $\\eta$ = {train_rate:.1f}"
    colors = dict(zip(names.values(), ["0.55", METHOD_COLORS["ours"]]))
    fig, axes = plt.subplots(1, len(types), figsize=(3.0 * len(types), 3.3), squeeze=False)
    for ax, missing_type in zip(axes[0], types):
        part = data[data["missing_type"] == missing_type]
        stats = part.groupby(["train_rate", "missing_rate"])[metric].agg(["mean", "std"])
        stats = stats.fillna(0.0)
        ax.set_ylim(*value_range([*(stats["mean"] - stats["std"]), *(stats["mean"] + stats["std"])]))
        shown = part[part["train_rate"].isin(list(names))].assign(
            trained=lambda d: d["train_rate"].map(names))
        sns.lineplot(data=shown, x="missing_rate", y=metric, hue="trained",
                     hue_order=list(names.values()), palette=colors,
                     errorbar="sd", marker="o", ax=ax, legend=ax is axes[0, 0])
        ax.axvline(train_rate, color="0.3", ls=":", lw=1)
        ax.set(title=f"test: missing {missing_type}", xlabel="test missing rate $\\eta$",
               ylabel="")
    axes[0, 0].set_ylabel(ylabel or metric)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    axes[0, 0].get_legend().remove()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def clean_table(frame: pd.DataFrame) -> Any:
    """``frame`` as the book shows a table: one header row, the index as ordinary columns.

    pandas writes a second, mostly blank header row for a named index; here the index
    becomes the first columns and the row numbers are hidden. Format the values first
    (strings), as the Styler shows floats with six decimals.
    """
    styled = lambda f: f.style.set_table_attributes('class="dataframe"')  # noqa: E731
    if any(name is not None for name in frame.index.names):
        return styled(frame.reset_index()).hide(axis="index")
    return styled(frame)
