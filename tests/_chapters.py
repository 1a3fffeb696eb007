"""Every chapter at small parameters, run once a session.

``tests/test_notebooks.py`` checks each executed chapter and ``tests/test_book_site.py`` builds
the robustness chapter into its site: both read the same execution (the ``small_chapter``
fixture in conftest.py), made with the book's own executor (``scripts/build_book.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import papermill
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]

# Per notebook (file stem): Config leaves that make it run in seconds. Every notebook needs an
# entry, so a new chapter cannot silently run its full-size defaults under `make test`.
SMALL_PARAMS: dict[str, dict[str, Any]] = {
    "01_method": {"prompt_length": 2, "max_text_length": 32},
    "02_training": {"limit_samples": 64, "epochs": 1, "batch_size": 16, "eval_batch_size": 32,
                    "prompt_length": 2},
    # 03 and 04 load 02's "ours" run (same params, shared out_dir) and share "cls" with each other
    "03_embeddings": {"limit_samples": 64, "epochs": 1, "batch_size": 16, "eval_batch_size": 32,
                      "prompt_length": 2},
    "04_robustness": {"limit_samples": 64, "epochs": 1, "batch_size": 16, "eval_batch_size": 32,
                      "prompt_length": 2},
    # nine training runs in one notebook: each must be tiny
    "05_ablations": {"limit_samples": 24, "epochs": 1, "batch_size": 8, "eval_batch_size": 24,
                     "image_size": 56},
    # the same run as 02_training: in one session (shared out_dir) it is loaded, not retrained
    "06_design": {"limit_samples": 64, "epochs": 1, "batch_size": 16, "eval_batch_size": 32,
                  "prompt_length": 2},
    # reads the saved benchmark table; trains nothing and takes no parameters
    "07_performance": {},
}


def small_params(notebook: Path, runs_dir: Path) -> dict[str, Any]:
    """``notebook``'s small parameters, with its runs in ``runs_dir`` if it saves any."""
    params = dict(SMALL_PARAMS[notebook.stem])
    if "out_dir" in papermill.inspect_notebook(str(notebook)):
        params["out_dir"] = str(runs_dir)
    return params


def execute_small(notebook: Path, dest: Path, runs_dir: Path) -> dict[str, Any]:
    """Run ``notebook`` at its small parameters into ``dest``; returns the parameters.

    Raises:
        RuntimeError: A cell raised (the message names the notebook and the cell).
    """
    params = small_params(notebook, runs_dir)
    load_script("scripts/build_book.py").execute(notebook, dest, params, progress=False)
    return params
