"""Two CPU processes under torchrun train the toy model like one process of the same batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import TIMING, _build, _cfg

from mmcore.checkpoint import read_checkpoint
from mmcore.evaluation import evaluate
from mmcore.train import fit

pytestmark = pytest.mark.distributed
WORKER = Path(__file__).with_name("_ddp_worker.py")
# Each global batch of 8 is the same 8 samples in both runs (DistributedSampler hands rank r
# every W-th sample of the same permutation), so the only difference is float summation
# order: DDP averages two half-batch gradients, one process takes one mean over 8. That is
# a relative 1e-7 per step, which 24 Adam steps leave at about 3e-8 here (measured), so
# weights and losses must agree to 1e-5 (a wrong sampler, a missing gradient average or a
# wrong loss scale gives differences of 1e-3 or more).
ATOL = RTOL = 1e-5


def test_two_processes_match_one(tmp_path):
    overrides = dict(epochs=3, batch_size=8, eval_batch_size=16, lr=1e-2, encoder_lr=1e-3,
                     head_lr=1e-2, precision="fp32", progress=False, warmup_ratio=0.2, seed=3)
    cfg = _cfg(**overrides)
    model, train, val = _build(cfg)
    single = fit(model, train, val, cfg, tmp_path / "one")
    _, logits, labels = evaluate(model, val, "multiclass")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(tmp_path / "two"), *(f"{k}={v}" for k, v in overrides.items())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    one, _ = read_checkpoint(tmp_path / "one/checkpoints/last.safetensors")
    two, meta = read_checkpoint(tmp_path / "two/checkpoints/last.safetensors")
    assert meta["world_size"] == 2 and {k for k in two if k.startswith("rng.1.")}
    weights = [k for k in one if k.startswith(("model.", "optim."))]
    assert weights and set(weights) <= set(two)
    diff = max((one[k] - two[k]).abs().max().item() for k in weights)
    print(f"max |1-process - 2-process| over weights and Adam moments: {diff:.2e}")
    for key in weights:
        torch.testing.assert_close(two[key], one[key], atol=ATOL, rtol=RTOL, msg=key)
    for a, b in zip(single.history, meta["progress"]["history"]):
        assert a.keys() == b.keys()
        for key in a.keys() - set(TIMING):
            assert b[key] == pytest.approx(a[key], rel=RTOL, abs=ATOL), key
    # the validation set (31 rows) is padded to 2 x 16 by DistributedSampler: the repeat
    # must be dropped so every metric is computed on exactly the 31 samples
    gathered = load_file(tmp_path / "two/val_logits.safetensors")
    assert torch.equal(gathered["labels"], labels)
    torch.testing.assert_close(gathered["logits"], logits, atol=ATOL, rtol=RTOL)
