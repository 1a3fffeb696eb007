"""Shared fixtures. Real-weight fixtures are session-scoped so the DINOv2 conversion runs once."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers), each worker takes its share of the
    cores, and so do the kernels, scripts and torchrun children it starts: two workers of two
    threads each on two cores stall each other's OpenMP barriers.

    ``--dist loadgroup`` must group: spread over workers, the chapter tests would each build
    the executed chapters and the site again. pytest-xdist groups by suffixing node ids, which
    pytest 9.2 ignores (pytest-dev/pytest-xdist#1386), silently."""
    if config.getoption("dist", "no") == "loadgroup" and pytest.version_tuple >= (9, 2):
        raise pytest.UsageError(f"--dist loadgroup does not group on pytest {pytest.__version__}"
                                " (pytest-dev/pytest-xdist#1386): pip install 'pytest<9.2'")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, len(os.sched_getaffinity(0)) // int(workers)))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def mmcore_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh ``$MMCORE_CACHE`` for the session: the first use converts, later uses load."""
    path = tmp_path_factory.mktemp("mmcore_cache")
    previous = os.environ.get("MMCORE_CACHE")
    os.environ["MMCORE_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MMCORE_CACHE", None)
    else:
        os.environ["MMCORE_CACHE"] = previous


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run folder for every notebook a session executes (tests/test_notebooks.py, the
    built chapter of tests/test_book_site.py): never runs/, and chapters at the same small
    parameters load each other's runs instead of training them again."""
    return tmp_path_factory.mktemp("notebook_runs") / "runs"


@pytest.fixture(scope="session")
def small_chapter(tmp_path_factory: pytest.TempPathFactory, runs_dir: Path
                  ) -> Callable[[str], tuple[Path, dict[str, Any]]]:
    """``small_chapter(stem)``: the chapter executed at its small parameters (tests/_chapters.py)
    and the parameters it ran with. It runs once a session, at the first request: the
    notebook test and the built site's chapter check the same execution."""
    from _chapters import ROOT, execute_small

    folder = tmp_path_factory.mktemp("executed_chapters")
    done: dict[str, tuple[Path, dict[str, Any]]] = {}

    def executed(stem: str) -> tuple[Path, dict[str, Any]]:
        if stem not in done:
            dest = folder / f"{stem}.ipynb"
            done[stem] = dest, execute_small(ROOT / "notebooks" / dest.name, dest, runs_dir)
        return done[stem]

    return executed


@pytest.fixture(scope="session")
def offline_vit(mmcore_cache: Path):
    """The converted offline DINOv2 ViT-S/14 at 224 px, in eval mode (do not modify it)."""
    from mmcore.config import ModelConfig
    from mmcore.weights import load_image_backbone

    return load_image_backbone(ModelConfig(image_size=224)).eval()
