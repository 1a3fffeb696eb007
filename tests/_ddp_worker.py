"""torchrun worker for tests/test_distributed.py: fit the toy model, save the gathered val logits.

Usage: torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py RUN_DIR [key=value ...]
"""
from __future__ import annotations

import sys

import torch.distributed as dist
from safetensors.torch import save_file
from test_train import _build  # tests/ is on sys.path: it is this script's folder

from mmcore.config import Config
from mmcore.evaluation import evaluate
from mmcore.runtime import distributed_env
from mmcore.train import fit


def main(run_dir: str, overrides: list[str]) -> None:
    cfg = Config().with_overrides(overrides)
    model, train, val = _build(cfg)
    fit(model, train, val, cfg, run_dir)
    _, logits, labels = evaluate(model, val, "multiclass")  # best weights, every rank's rows
    if distributed_env().is_main:
        save_file({"logits": logits, "labels": labels}, f"{run_dir}/val_logits.safetensors")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
