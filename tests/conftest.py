"""Shared fixtures. Real-weight fixtures are session-scoped so the DINOv2 conversion runs once."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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
