"""Strip notebook sources before committing: no outputs, no execution counts, no widget state.

Executed copies are build products (``scripts/build_book.py`` writes them to
``book/chapters``); the sources in ``notebooks/`` stay small and diff cleanly. Cell tags
(``parameters``, ``hide-input``, ...) and MyST-NB cell options are kept; everything else a
Jupyter session or papermill adds to the metadata is dropped.

    python scripts/strip_notebooks.py            # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check    # exit 1 if any notebook is not stripped (CI)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KEEP_CELL_METADATA = ("tags", "mystnb")
KEEP_NOTEBOOK_METADATA = ("kernelspec",)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` without outputs, execution counts, session metadata or injected cells."""
    nb.metadata = {k: v for k, v in nb.metadata.items() if k in KEEP_NOTEBOOK_METADATA}
    nb.metadata["language_info"] = {"name": "python"}
    # A cell papermill injected (an executed copy saved over its source) is never source.
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in KEEP_CELL_METADATA}
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nb


def strip_file(path: Path, check: bool = False) -> bool:
    """Strip one notebook file; return True if it was (or, with ``check``, would be) changed."""
    before = path.read_text()
    nb = nbformat.reads(before, as_version=4)
    after = nbformat.writes(strip(nb)) + "\n"
    changed = after != before
    if changed and not check:
        path.write_text(after)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if unstripped")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{path}: not a notebook file")
    changed = [p for p in paths if strip_file(p, check=args.check)]
    for path in changed:
        print(f"{'not stripped' if args.check else 'stripped'}: {path}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
