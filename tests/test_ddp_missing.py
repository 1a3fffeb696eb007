"""DDP when a rank's batches lack a modality: its encoder gets no gradient there, and training
goes on (``find_unused_parameters``) instead of stopping with a reduction error."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmcore.checkpoint import read_checkpoint

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_ddp_missing_worker.py")


def test_a_rank_without_images_trains(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _, meta = read_checkpoint(tmp_path / "run/checkpoints/last.safetensors", with_tensors=False)
    assert meta["world_size"] == 2 and meta["progress"]["epoch"] == 2
