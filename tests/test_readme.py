"""Every command the README prints runs as printed, or is listed in ``NOT_RUN`` with why not.

The own-data commands (those naming ``my_data/`` or ``runs/mine``) run verbatim with
``bash -c`` in a folder holding ``my_data/manifest.csv``: 60 real rows of the committed
OpenClipArt data. The README's Python example runs after them, as printed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _clipart_rows import write_manifest

README = Path(__file__).resolve().parents[1] / "README.md"
# the first words of each command not run here, and why
NOT_RUN = {
    "make book": "builds the whole book; the notebook and site tests cover it",
    "make test": "is this test suite",
    "make lab": "starts a JupyterLab server that waits for a browser",
    "python -m mmcore train --config configs/offline.yaml": "the full default training (token "
                                                            "cache, 2 epochs: minutes); the "
                                                            "notebook tests run it small",
    "python scripts/evidence.py": "trains every method x 3 seeds x 2 datasets x 2 settings "
                                  "(about two hours on 2 shared cores); its table is in the "
                                  "README",
    "python scripts/prompt_variants.py": "trains 18 models (about 20 minutes on 2 shared cores); "
                                         "tests/test_prompt_variants.py runs one small variant",
    "python -m mmcore train --config configs/mmimdb.yaml": "needs a GPU and MM-IMDb in /data",
    "python -m mmcore train --config configs/food101.yaml": "needs a GPU, Food-101 in /data "
                                                            "and the paper's weights in /weights",
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """Each command of every ``bash`` block, continuation lines joined, comment lines dropped."""
    commands = []
    for block in _blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(command.strip())
    return commands


def _own_data(command: str) -> bool:
    return "my_data/" in command or "runs/mine" in command


def test_every_command_is_run_or_listed_with_a_reason():
    commands = readme_commands()
    own = [c for c in commands if _own_data(c)]
    assert [c.split()[3] for c in own] == ["check-data", "train", "sweep"]
    for command in commands:
        assert _own_data(command) or any(command.startswith(k) for k in NOT_RUN), command
    for prefix in NOT_RUN:  # the list holds no stale entry
        assert any(c.startswith(prefix) for c in commands), prefix


@pytest.mark.slow
def test_the_own_data_commands_run_as_printed(tmp_path, mmcore_cache):
    write_manifest(tmp_path / "my_data")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MMCORE_CACHE": str(mmcore_cache)}
    for command in filter(_own_data, readme_commands()):
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr
    data = json.loads((tmp_path / "runs/mine/data.json").read_text())
    assert data["task_type"] == "multiclass"
    assert data["classes"] == ["animals", "buildings", "electronics"]
    assert "99 rows" in done.stdout  # 11 rates x 3 types x 3 seeds, from the saved sweep
    [example] = [b for b in _blocks("python") if "my_data/" in b]
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'missing_type'" in done.stdout  # the first sweep row, loaded from the run
