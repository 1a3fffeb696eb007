"""mmcore.sliders: each position rendered once, controls jslinked to the stacks (kernel-free)."""
from __future__ import annotations

import ipywidgets as widgets
import pytest

from mmcore import sliders


def test_stacked_slider_links_slider_to_one_output_per_value(monkeypatch) -> None:
    links = []
    monkeypatch.setattr(sliders.widgets, "jslink", lambda *pair: links.append(pair))
    seen = []
    box = sliders.stacked_slider(seen.append, [0.1, 0.5, 0.9], description="rate")
    slider, stack = box.children
    assert isinstance(slider, widgets.SelectionSlider) and isinstance(stack, widgets.Stack)
    assert seen == [0.1, 0.5, 0.9]
    assert len(stack.children) == 3 and all(isinstance(c, widgets.Output) for c in stack.children)
    assert links == [((slider, "index"), (stack, "selected_index"))]
    assert slider.options == (0.1, 0.5, 0.9) and stack.selected_index == 0
    with pytest.raises(ValueError, match="values"):
        sliders.stacked_slider(seen.append, [], description="rate")


def test_live_slider_rerenders_on_change() -> None:
    seen = []
    box = sliders.live_slider(seen.append, [1, 2, 3], description="k")
    box.children[0].value = 3
    assert seen[0] == 1 and seen[-1] == 3


def test_stacked_choice_slider_links_buttons_and_slider(monkeypatch) -> None:
    links = []
    monkeypatch.setattr(sliders.widgets, "jslink", lambda *pair: links.append(pair))
    seen = []
    box = sliders.stacked_choice_slider(lambda c, v: seen.append((c, v)), ["a", "b"], [1, 2, 3],
                                        "type", "rate")
    slider, buttons, outer = box.children
    assert seen == [(c, v) for c in "ab" for v in (1, 2, 3)]
    assert [len(inner.children) for inner in outer.children] == [3, 3]
    assert ((buttons, "index"), (outer, "selected_index")) in links
    assert all(((slider, "index"), (inner, "selected_index")) in links for inner in outer.children)
    with pytest.raises(ValueError, match="at least one"):
        sliders.stacked_choice_slider(lambda c, v: None, [], [1], "type", "rate")

