"""IPython startup file for `make lab`: run each kernel in the repository root.

JupyterLab starts a kernel in its notebook's folder (``notebooks/``), but the notebooks use
paths relative to the repository root (``data/openclipart``, ``runs/default``), as
``make book`` runs them. `make lab` copies this file into the IPython profile its kernels
use (``$IPYTHONDIR/profile_default/startup/``) and sets ``MMCORE_ROOT``; kernels started any
other way never read it.
"""
import os

if os.environ.get("MMCORE_ROOT"):
    os.chdir(os.environ["MMCORE_ROOT"])
