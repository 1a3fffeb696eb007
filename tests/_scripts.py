"""Import a script that is not part of the package (``scripts/``, ``benchmarks/``) by its path."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str) -> ModuleType:
    """The module at ``ROOT / relative``, registered in ``sys.modules`` under its file stem.

    Registered because ``@dataclass`` resolves string annotations through ``sys.modules``.
    """
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
