"""CONTRIBUTING.md stays true to the repository: every module is in its layout, every pytest
marker in its table, every make target it names exists, and it points only inside the clone."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()


def test_layout_names_every_module() -> None:
    modules = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "mmcore").glob("*.py"))
               if not p.name.startswith("_")]
    missing = [m for m in modules if m not in GUIDE]
    assert not missing, f"add these to CONTRIBUTING.md's layout: {missing}"
    for name in re.findall(r"^(mmcore/\w+\.py)", GUIDE, re.M):
        assert (ROOT / name).is_file(), f"CONTRIBUTING.md lists {name}, which does not exist"


def test_marker_table_matches_pyproject() -> None:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["markers"]
    names = {m.split(":")[0].strip() for m in markers}
    listed = set(re.findall(r"^\| `(\w+)` \|", GUIDE, re.M))
    assert listed == names


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", GUIDE))
    assert named and named <= targets, f"not in the Makefile: {named - targets}"


def test_points_only_inside_the_repository() -> None:
    assert "../" not in GUIDE
    for path in re.findall(r"`((?:mmcore|scripts|tests|book|notebooks|configs)/[\w./-]+\.\w+)`",
                           GUIDE):
        if "NN_name" in path or "<name>" in path:
            continue
        assert (ROOT / path).exists(), f"CONTRIBUTING.md names {path}, which does not exist"
    assert not (ROOT / "DEVELOPERS.md").exists(), "CONTRIBUTING.md replaces DEVELOPERS.md"
