"""Sphinx extension: every notebook page also offers its source as a Markdown notebook.

The theme's download button lists a notebook page's source (the executed ``.ipynb``) and a
print-to-PDF. This adds ``.md``: the same notebook as MyST Markdown text (jupytext's
``md:myst`` format, without outputs), which diffs line by line and which JupyterLab opens as
a notebook where jupytext is installed (``make setup`` installs it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jupytext
from sphinx.application import Sphinx

LABEL = "download-markdown-notebook-button"


def _add_button(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any],
                doctree: Any) -> None:
    """Append ``.md`` to the download group the theme built for a notebook page."""
    if context.get("page_source_suffix") != ".ipynb":
        return
    for group in context.get("header_buttons", []):
        if group.get("label") == "download-buttons":
            group["buttons"].insert(1, {
                "type": "link",
                "url": f'{context["pathto"]("_sources", 1)}/{pagename}.md',
                "text": ".md",
                "tooltip": "Download as a Markdown notebook (MyST)",
                "icon": "fas fa-file-alt",
                "label": LABEL,
            })


def _write_markdown(app: Sphinx, exception: Exception | None) -> None:
    """Write ``_sources/<page>.md`` next to each notebook page's ``.ipynb`` source."""
    if exception is not None or app.builder.format != "html":
        return
    for docname in sorted(app.env.found_docs):
        source = Path(app.env.doc2path(docname))
        if source.suffix == ".ipynb":
            dest = Path(app.outdir) / "_sources" / f"{docname}.md"
            dest.parent.mkdir(parents=True, exist_ok=True)
            jupytext.write(jupytext.read(source), dest, fmt="md:myst")


def setup(app: Sphinx) -> dict[str, Any]:
    # After sphinx-book-theme's add_header_buttons (priority 501) has built the group.
    app.connect("html-page-context", _add_button, priority=600)
    app.connect("build-finished", _write_markdown)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
