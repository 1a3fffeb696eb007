"""The method drawn: the architecture as a diagram and the read-only attention mask."""
from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch


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


