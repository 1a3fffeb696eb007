"""Sliders for the book that work without a kernel.

Each position is rendered once, when the notebook runs, into an ``Output`` of a ``Stack``;
the slider (and the buttons) are ``jslink``ed to the stacks' indices, so moving them works in
the static site (the outputs live in the saved widget state) as well as in Jupyter.
`live_slider` is the kernel-backed variant for readers who run the notebook.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets


def _slider(values: Sequence[Any], description: str) -> widgets.SelectionSlider:
    """A slider over ``values`` as wide as the column, never wider (a phone's too)."""
    return widgets.SelectionSlider(options=list(values), index=0, description=description,
                                   style={"description_width": "initial"},
                                   layout=widgets.Layout(width="100%", max_width="36em"))


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
    slider = _slider(values, description)
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])


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
    slider = _slider(values, description)
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
    slider = _slider(values, description)
    buttons = widgets.ToggleButtons(options=[str(c) for c in choices], index=0,
                                    description=choice_description,
                                    style={"description_width": "initial", "button_width": "auto"},
                                    layout=widgets.Layout(width="100%", flex_flow="row wrap"))
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


