"""A small copy of the book to build in tests: the real configuration, table of contents, home
page and vendored assets, with a stand-in for every chapter (its real title, one short
paragraph, and a code cell whose output is a table wider than a phone).

Stand-ins render in seconds and leave the repository's ``_build`` and ``runs/`` alone; a test
that needs a real chapter executes it over its stand-in (see tests/test_book_site.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
WIDE_COLUMNS = 12  # the stand-in table of chapter 2: too wide for a 390 px column


def chapter_title(notebook: Path) -> str:
    """The first Markdown heading of ``notebook`` (its title in the sidebar), without ``#``."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ValueError(f"{notebook.name} has no '# ' title")


def _wide_table() -> str:
    head = "".join(f"<th>rate {i / 10:.1f}</th>" for i in range(WIDE_COLUMNS))
    row = "".join(f"<td>{50 + i:.2f}</td>" for i in range(WIDE_COLUMNS))
    return (f'<table class="dataframe"><thead><tr><th>method</th>{head}</tr></thead>'
            f"<tbody><tr><th>ours</th>{row}</tr></tbody></table>")


def standin_book(out: Path) -> Path:
    """Write ``out/_config.yml`` and ``out/book/`` (stand-in chapters); returns the book folder."""
    book = out / "book"
    (book / "chapters").mkdir(parents=True)
    for name in ("_toc.yml", "intro.md"):
        shutil.copy(ROOT / "book" / name, book / name)
    for folder in ("_vendor", "_ext"):
        shutil.copytree(ROOT / "book" / folder, book / folder)
    shutil.copy(ROOT / "_config.yml", out / "_config.yml")
    for source in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        cell = nbformat.v4.new_code_cell("table")
        cell.outputs = [nbformat.v4.new_output(
            "execute_result", data={"text/html": _wide_table(), "text/plain": "table"},
            execution_count=1)]
        nb.cells = [
            nbformat.v4.new_markdown_cell(f"# {chapter_title(source)}\n\nA stand-in page."),
            cell,
        ]
        nbformat.write(nb, book / "chapters" / source.name)
    return book


def build(out: Path, repository_url: str = "") -> Path:
    """Build the book in ``out`` (``standin_book`` first) with scripts/build_book.py's own
    ``build_site``; returns the site folder ``out/_build/html``."""
    build_book = load_script("scripts/build_book.py")
    build_book.build_site(out / "book", out / "_config.yml", out, repository_url)
    return out / "_build" / "html"


GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}


def git(*args: str, cwd: Path) -> str:
    """``git args`` in ``cwd`` with a fixed identity; its stdout."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV}).stdout


def make_publish(site: Path, work: Path, remote: str,
                 **variables: str) -> subprocess.CompletedProcess:
    """The Makefile's `publish` target run in the git repository ``work`` (setup skipped: the
    tests already run in the installed venv), publishing ``site`` to ``remote``."""
    command = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-o", "setup",
               "publish", f"VENV={Path(sys.executable).parents[1]}", f"SITE={site}",
               f"PUBLISH_REMOTE={remote}"]
    command += [f"{key}={value}" for key, value in variables.items()]
    return subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **GIT_ENV})
