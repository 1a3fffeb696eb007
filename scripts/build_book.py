"""Build the book: execute every notebook with papermill, then render the site with Jupyter Book.

The notebooks in ``notebooks/`` are stripped sources. Each one is executed (kernel
``python3``, working directory = repository root) into ``book/chapters/<name>.ipynb``; those
executed copies are build products. Jupyter Book then renders them without executing
anything (``execute_notebooks: "off"``) into ``_build/html``, failing on any warning.

A notebook is executed again only when its source, its parameters or any ``mmcore`` source
changed since its executed copy was written: the copy records a fingerprint of all three.

    python scripts/build_book.py                 # what `make book` runs
    python scripts/build_book.py --only 00_toolchain_demo
    python scripts/build_book.py --no-execute    # re-render the existing executed copies
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
CHAPTERS = BOOK / "chapters"
CONFIG = ROOT / "_config.yml"
STAGING = ROOT / "_build" / "executing"  # where a notebook runs; a failed run stays here

# Papermill parameters `make book` passes per notebook (file stem -> Config leaves). A notebook
# not listed runs at the defaults of its parameters cell, which mirror Config's defaults.
PARAMETERS: dict[str, dict[str, Any]] = {}

FINGERPRINT_KEY = "mmcore_build"  # notebook metadata key holding the fingerprint


def fingerprint(source: Path, parameters: dict[str, Any]) -> str:
    """Hash of what an executed copy depends on: the notebook, its parameters, mmcore's code."""
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    for path in sorted((ROOT / "mmcore").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_current(executed: Path, stamp: str) -> bool:
    """True when ``executed`` exists and was produced from inputs with fingerprint ``stamp``."""
    if not executed.is_file():
        return False
    meta = nbformat.read(executed, as_version=4).metadata
    return meta.get(FINGERPRINT_KEY, {}).get("fingerprint") == stamp


def execute(
    source: Path, dest: Path, parameters: dict[str, Any], stamp: str = "", progress: bool = True
) -> None:
    """Run ``source`` with papermill and write the executed copy to ``dest``.

    The notebook runs in a staging file first, so a failed run never leaves a half-executed
    chapter in the book; the staging copy is kept for inspection and named in the error.

    Args:
        source: Stripped notebook.
        dest: Where the executed copy goes (its folder is created).
        parameters: Papermill parameters (flat Config leaves).
        stamp: Fingerprint recorded in the copy's metadata (see ``fingerprint``).
        progress: Show papermill's per-cell progress bar.

    Raises:
        RuntimeError: The notebook raised; the message names it and the staging copy.
    """
    STAGING.mkdir(parents=True, exist_ok=True)
    staged = STAGING / source.name
    try:
        papermill.execute_notebook(
            str(source),
            str(staged),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(ROOT),
            progress_bar=progress,
        )
    except papermill.PapermillExecutionError as err:
        raise RuntimeError(
            f"{source.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
            f"  executed copy for inspection: {staged}"
        ) from err
    nb = nbformat.read(staged, as_version=4)
    nb.metadata[FINGERPRINT_KEY] = {"fingerprint": stamp, "parameters": parameters}
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    staged.unlink()


def build_site(book: Path, config: Path, output: Path) -> None:
    """Render ``book`` with Jupyter Book into ``output/_build/html``; any warning is an error.

    Raises:
        RuntimeError: Jupyter Book reported a warning or an error.
    """
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(jupyter_book), "build", str(book), "--config", str(config),
        "--path-output", str(output), "--all", "-W", "-n", "--keep-going",
    ]
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        raise RuntimeError("jupyter-book build failed: see the warnings above (-W makes them errors)")


def select(only: Sequence[str]) -> list[Path]:
    """Notebook sources in file-name order; ``only`` keeps those named (stem or file name)."""
    sources = sorted(NOTEBOOKS.glob("*.ipynb"))
    if not only:
        return sources
    by_name = {p.stem: p for p in sources}
    unknown = [name for name in only if Path(name).stem not in by_name]
    if unknown:
        raise SystemExit(
            f"--only {unknown[0]}: no such notebook in notebooks/; valid: {', '.join(by_name)}"
        )
    return [by_name[Path(name).stem] for name in only]


def remove_stale_chapters(sources: Sequence[Path]) -> None:
    """Delete executed copies whose source notebook no longer exists (renamed or removed)."""
    names = {p.name for p in sources}
    for executed in CHAPTERS.glob("*.ipynb"):
        if executed.name not in names:
            print(f"removing stale chapter {executed.relative_to(ROOT)}")
            executed.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="execute only these notebooks (others keep their executed copies)")
    parser.add_argument("--no-execute", action="store_true",
                        help="render the existing executed copies without running anything")
    parser.add_argument("--force", action="store_true",
                        help="execute even when an executed copy is up to date")
    parser.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    sources = select(args.only)
    if not args.only:
        remove_stale_chapters(sources)
    if not args.no_execute:
        for i, source in enumerate(sources, 1):
            parameters = PARAMETERS.get(source.stem, {})
            dest = CHAPTERS / source.name
            stamp = fingerprint(source, parameters)
            tag = f"[{i}/{len(sources)}] {source.stem}"
            if not args.force and is_current(dest, stamp):
                print(f"{tag}: up to date")
                continue
            print(f"{tag}: executing{' with ' + json.dumps(parameters) if parameters else ''}",
                  flush=True)
            t0 = time.perf_counter()
            try:
                execute(source, dest, parameters, stamp)
            except RuntimeError as err:
                print(f"build_book: {err}", file=sys.stderr)
                return 1
            print(f"{tag}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    if not args.no_build:
        print("building the site with jupyter-book", flush=True)
        try:
            build_site(BOOK, CONFIG, ROOT)
        except RuntimeError as err:
            print(f"build_book: {err}", file=sys.stderr)
            return 1
        site = ROOT / "_build" / "html"
        print(f"site: {site.relative_to(ROOT)}/index.html ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
