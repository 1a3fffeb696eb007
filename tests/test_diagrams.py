"""mmcore.diagrams: the attention-mask heatmap checks its shape; the schematic draws."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from mmcore import diagrams  # noqa: E402 (after choosing the backend)


def test_attention_mask_marks_the_prompt_boundary() -> None:
    mask = np.tril(np.ones((5, 5), dtype=bool))
    fig = diagrams.plot_attention_mask(mask, num_tokens=3)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["t0", "t1", "t2", "p0", "p1"]
    with pytest.raises(ValueError, match="num_tokens=6"):
        diagrams.plot_attention_mask(mask, num_tokens=6)
    matplotlib.pyplot.close(fig)


def test_method_schematic_draws_boxes() -> None:
    fig = diagrams.plot_method_schematic()
    assert len(fig.axes[0].patches) > 10
    matplotlib.pyplot.close(fig)
