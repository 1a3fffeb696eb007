"""Shared fixtures. Real-weight fixtures are session-scoped so the DINOv2 conversion runs once."""
from __future__ import annotations

import os
from pathlib import Path

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
def offline_vit(mmcore_cache: Path):
    """The converted offline DINOv2 ViT-S/14 at 224 px, in eval mode (do not modify it)."""
    from mmcore.config import ModelConfig
    from mmcore.weights import load_image_backbone

    return load_image_backbone(ModelConfig(image_size=224)).eval()
