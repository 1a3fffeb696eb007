"""Build the book: execute every notebook with papermill, then render the site with Jupyter Book.

The notebooks in ``notebooks/`` are stripped sources. Each one is executed (kernel
``python3``, working directory = repository root) into ``book/chapters/<name>.ipynb``; those
executed copies are build products. Jupyter Book then renders them without executing
anything (``execute_notebooks: "off"``) into ``_build/html``, failing on any warning.

Each notebook runs at the defaults of its ``parameters`` cell, which mirror ``Config``'s. A
notebook is executed again only when its source or any ``mmcore`` source changed since its
executed copy was written: the copy records a fingerprint of both.

Chapters run two at a time (``--jobs``), each kernel on its share of the cores: much of a
chapter is single-threaded (imports, data, plots, Python between the products), so on two
cores two one-thread kernels did the same work in 48 s that two two-thread runs took 72 s
one after the other. A chapter that reads the runs another one trains starts after it
(``AFTER``).

The site gets repository and issues buttons when ``repository.url`` is set in ``_config.yml``
(or ``--repository-url`` is given); without a URL it has neither.

    python scripts/build_book.py                 # what `make book` runs
    python scripts/build_book.py --only 04_robustness
    python scripts/build_book.py --jobs 1        # one chapter at a time, on every core
    python scripts/build_book.py --no-execute    # re-render the existing executed copies
    python scripts/build_book.py --no-execute --repository-url https://github.com/you/mmcore
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from queue import Empty
from typing import Any, Sequence

import nbformat
import papermill
import yaml
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import Type

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BOOK = ROOT / "book"
CHAPTERS = BOOK / "chapters"
CONFIG = ROOT / "_config.yml"
STAGING = ROOT / "_build" / "executing"  # where a notebook runs; a failed run stays here

FINGERPRINT_KEY = "mmcore_build"  # notebook metadata key holding the fingerprint

# Chapters that read or train runs another chapter trains start once it has finished, never
# beside it: two kernels training one run folder would race. Chapter 04 compares the runs that
# chapter 03 trains (the CLS-token and frozen ones, emoji's) and would otherwise train them too.
AFTER: dict[str, tuple[str, ...]] = {
    "03_embeddings": ("02_training",),
    "04_robustness": ("02_training", "03_embeddings"),
    "06_design": ("02_training",),
}


class RecheckingChannel(AsyncZMQSocketChannel):
    """A kernel channel whose wait for the next message looks again every ``RECHECK_S``.

    pyzmq's asyncio poll can miss the wake-up for a message that has already arrived; it
    then sees it only when its timeout runs out, and papermill's is none: it waits forever.
    That was the test suite's intermittent hang, always in chapter 04, the kernel idle.
    Executed over and over, two at a time, a notebook with chapter 04's widget cells waited
    out the whole timeout (45 or 30 s) in its ``widgets.interact`` cell in 4 of 82 runs, and
    then found the reply there; re-checked every second, 3 of 44 runs waited 1.0 s there
    and none longer.
    """

    RECHECK_S = 1.0

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.RECHECK_S if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await super().get_msg(timeout=min(self.RECHECK_S, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise


class RecheckingKernelClient(AsyncKernelClient):
    """The kernel client nbclient drives, on ``RecheckingChannel``s for replies and output."""

    shell_channel_class = Type(RecheckingChannel)
    iopub_channel_class = Type(RecheckingChannel)


class RecheckingKernelManager(AsyncKernelManager):
    """The kernel manager that hands out ``RecheckingKernelClient``s (``execute`` uses it)."""

    client_factory = Type(RecheckingKernelClient)


def fingerprint(source: Path) -> str:
    """Hash of what an executed copy depends on: the notebook and mmcore's code."""
    digest = hashlib.sha256()
    digest.update(source.read_bytes())
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
            kernel_manager_class=RecheckingKernelManager,
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


def site_config(config: Path, repository_url: str = "") -> dict[str, Any]:
    """The Jupyter Book configuration to build with: ``config`` with its repository and issues
    buttons on exactly when a repository URL is set, and its local extensions' paths absolute.

    Jupyter Book refuses those buttons without a URL, so ``_config.yml`` keeps them off and
    leaves the URL empty for the author to fill; this turns them on once it is filled.

    Args:
        config: The book's ``_config.yml``.
        repository_url: Overrides ``repository.url`` of ``config`` when not empty.
    """
    data = yaml.safe_load(config.read_text()) or {}
    # Jupyter Book resolves these against the config file's folder; the built config lives
    # elsewhere, so they become absolute.
    local = (data.get("sphinx") or {}).get("local_extensions") or {}
    for name, path in local.items():
        local[name] = str((config.parent / path).resolve())
    repository = data.get("repository") or {}
    if repository_url:
        repository["url"] = repository_url
    data["repository"] = repository
    has_url = bool(repository.get("url"))
    html = data.get("html") or {}
    html["use_repository_button"] = has_url
    html["use_issues_button"] = has_url
    data["html"] = html
    return data


def build_site(book: Path, config: Path, output: Path, repository_url: str = "") -> None:
    """Render ``book`` with Jupyter Book into ``output/_build/html``; any warning is an error.

    Args:
        book: The book's source folder (``_toc.yml``, ``intro.md``, ``chapters/``).
        config: Its ``_config.yml``; built as ``site_config`` turns it (repository buttons).
        output: Where ``_build/`` goes.
        repository_url: Overrides ``repository.url`` of ``config`` when not empty.

    Raises:
        RuntimeError: Jupyter Book reported a warning or an error.
    """
    book, output = book.resolve(), output.resolve()  # jupyter-book runs in ROOT
    effective = output / "_build" / "_config.yml"
    effective.parent.mkdir(parents=True, exist_ok=True)
    effective.write_text(yaml.safe_dump(site_config(config, repository_url), sort_keys=False))
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [
        str(jupyter_book), "build", str(book), "--config", str(effective),
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


def run_chapters(names: Sequence[str], run: Callable[[str], Any], executor: Executor,
                 jobs: int, after: dict[str, tuple[str, ...]] = AFTER,
                 report: Callable[[str], None] = print) -> str:
    """Run ``run(name)`` for every chapter on ``executor``, at most ``jobs`` at once, each
    after the chapters ``after`` says it needs (those among ``names``; the others are taken
    as done).

    A chapter that others wait for starts first, so that the chain of chapters waiting for
    each other starts as early as it can. After a failure no chapter starts; those running
    finish.

    Returns:
        "" when every chapter ran, else the first failure's message.
    """
    waiting = list(names)
    needs = {name: {n for n in after.get(name, ()) if n in waiting} for name in waiting}
    needed = {n for wanted in needs.values() for n in wanted}
    running: dict[Future, tuple[str, float]] = {}
    failure = ""
    while waiting or running:
        ready = [n for n in waiting if not needs[n]] if not failure else []
        for name in sorted(ready, key=lambda n: n not in needed)[:jobs - len(running)]:
            waiting.remove(name)
            report(f"{name}: executing")
            running[executor.submit(run, name)] = (name, time.perf_counter())
        if not running:
            break  # a failure left the rest unstarted
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            name, t0 = running.pop(future)
            if (err := future.exception()) is not None:
                message = str(err) if str(err).startswith(name) else (
                    f"{name} failed: {type(err).__name__}: {err}")
                failure = failure or message
                continue
            report(f"{name}: done in {time.perf_counter() - t0:.1f} s")
            for wanted in needs.values():
                wanted.discard(name)
    return failure


def _execute_chapter(stamps: dict[str, str], name: str) -> None:
    """Execute ``notebooks/<name>.ipynb`` into ``book/chapters`` (in a worker process),
    recording the fingerprint ``stamps`` holds for it."""
    source = NOTEBOOKS / f"{name}.ipynb"
    execute(source, CHAPTERS / source.name, {}, stamps[name], progress=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="execute only these notebooks (others keep their executed copies)")
    parser.add_argument("--no-execute", action="store_true",
                        help="render the existing executed copies without running anything")
    parser.add_argument("--force", action="store_true",
                        help="execute even when an executed copy is up to date")
    parser.add_argument("--no-build", action="store_true", help="execute only; skip jupyter-book")
    parser.add_argument("--jobs", type=int, default=2, metavar="N",
                        help="chapters executed at once, each kernel on its share of the cores "
                             "(default 2; 1: one at a time)")
    parser.add_argument("--repository-url", default="", metavar="URL",
                        help="the book's repository (overrides repository.url of _config.yml); "
                             "turns on the repository and issues buttons")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give 1 or more")

    start = time.perf_counter()
    sources = select(args.only)
    if not args.only:
        remove_stale_chapters(sources)
    stamps = {} if args.no_execute else {p.stem: fingerprint(p) for p in sources}
    stale = [name for name, stamp in stamps.items()
             if args.force or not is_current(CHAPTERS / f"{name}.ipynb", stamp)]
    if stale:
        print(f"executing {', '.join(stale)}; up to date: "
              f"{', '.join(p.stem for p in sources if p.stem not in stale) or 'none'}")
        jobs = min(args.jobs, len(stale))
        cores = len(os.sched_getaffinity(0))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # inherited by each kernel
            os.environ.setdefault(variable, str(max(1, cores // jobs)))
        # fork: the workers need no re-import, and this process has started no thread yet
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            failure = run_chapters(stale, functools.partial(_execute_chapter, stamps), pool, jobs,
                                   report=lambda line: print(line, flush=True))
        if failure:
            print(f"build_book: {failure}", file=sys.stderr)
            return 1
    elif stamps:
        print(f"up to date: {', '.join(stamps)}")
    if not args.no_build:
        print("building the site with jupyter-book", flush=True)
        try:
            build_site(BOOK, CONFIG, ROOT, args.repository_url)
        except RuntimeError as err:
            print(f"build_book: {err}", file=sys.stderr)
            return 1
        site = ROOT / "_build" / "html"
        print(f"site: {site.relative_to(ROOT)}/index.html ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
