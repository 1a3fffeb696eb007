"""The run folder: what a training run leaves on disk, and how a run is resumed from it.

A run folder (``run.out_dir``) holds ``config.yaml``, ``env.json`` (versions, device, seed),
``metrics.jsonl`` (one line per epoch), ``final.json`` (written last: the run finished) and
``checkpoints/{last,best}.safetensors``. ``last`` carries the run's ``Progress``, its
config, the optimiser, the schedule and every process's RNG states, so ``mmcore.train.fit``
can continue it; it refuses to continue a run of another config or process count.
Only rank 0 writes.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from mmcore.checkpoint import (CheckpointError, atomic_write, load_checkpoint, read_checkpoint,
                               rng_state, save_checkpoint, write_json)
from mmcore.config import Config
from mmcore.runtime import DistInfo, environment

LAST, BEST = "checkpoints/last.safetensors", "checkpoints/best.safetensors"
# Leaves that do not change what a run computes: a run may resume with them changed.
RESUMABLE_CHANGES = ("out_dir", "device", "progress", "num_workers", "eval_batch_size",
                     "checkpoint_every")


@dataclass
class FitResult:
    """What ``fit`` returns; the model it trained holds the best checkpoint's weights."""

    run_dir: Path
    metric: str  # headline validation metric, e.g. "accuracy"
    best_value: float  # its best value (NaN without validation)
    best_epoch: int  # epoch of the best checkpoint (0: the model before training)
    history: list[dict[str, float]]  # one row per epoch, as in metrics.jsonl


@dataclass
class Progress:
    """Where a run is; stored in the ``last`` checkpoint."""

    epoch: int = 0  # epochs finished
    batches: int = 0  # micro-batches done in the current epoch
    step: int = 0  # optimiser steps done
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's running sums
    history: list[dict[str, float]] = field(default_factory=list)
    metric: str = ""  # headline validation metric
    best_value: float = float("nan")
    best_epoch: int = 0

    def improves(self, value: float) -> bool:
        """Higher is better; the first score always counts; a NaN never displaces a number."""
        return math.isnan(self.best_value) or value > self.best_value


def config_diff(saved: dict[str, dict[str, Any]], cfg: Config) -> list[str]:
    """The leaves that differ between a saved config and ``cfg``, but for those a run may
    change on resuming (``RESUMABLE_CHANGES``), as ``"name: old -> new"``."""
    flat = {k: v for section in saved.values() for k, v in section.items()}
    return [f"{k}: {flat.get(k)!r} -> {v!r}" for k, v in cfg.to_flat().items()
            if k not in RESUMABLE_CHANGES and flat.get(k) != v]


def gather_rng(info: DistInfo, device: torch.device) -> dict[int, dict[str, Tensor]]:
    """Every rank's RNG states, collected on every rank (rank 0 saves them)."""
    mine = rng_state()
    if info.world_size == 1:
        return {0: mine}
    out: dict[int, dict[str, Tensor]] = {r: {} for r in range(info.world_size)}
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    for key, value in mine.items():
        parts = [torch.empty_like(value, device=comm) for _ in range(info.world_size)]
        dist.all_gather(parts, value.to(comm))
        for r, part in enumerate(parts):
            out[r][key] = part.cpu()
    return out


def save_last(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: LambdaLR, state: Progress, cfg: Config, info: DistInfo,
              device: torch.device) -> None:
    """The ``last`` checkpoint: what ``resume_run`` reads back. A collective under torchrun
    (every rank's RNG states are gathered); rank 0 writes it."""
    rng = gather_rng(info, device)
    if info.is_main:
        save_checkpoint(run_dir / LAST, model, {
            "kind": "last", "finished": state.epoch == cfg.optim.epochs,
            "config": cfg.to_dict(), "world_size": info.world_size,
            "scheduler": scheduler.state_dict(), "progress": vars(state)},
            optimizer, rng)


def save_best(run_dir: Path, model: nn.Module, cfg: Config, epoch: int,
              scores: dict[str, float]) -> None:
    """The ``best`` checkpoint: the weights of the epoch with the best validation score."""
    save_checkpoint(run_dir / BEST, model, {
        "kind": "best", "config": cfg.to_dict(), "epoch": epoch, "metrics": scores})


def start_run_dir(run_dir: Path, cfg: Config, device: torch.device, info: DistInfo,
                  on_run_dir: Callable[[Path], None] | None) -> None:
    """A new run folder: its config, its environment, and whatever ``on_run_dir`` adds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", cfg.to_yaml().encode())
    write_json(run_dir / "env.json", environment(device, cfg.run.seed, info.world_size))
    if on_run_dir is not None:
        on_run_dir(run_dir)


def resume_run(run_dir: Path, cfg: Config, info: DistInfo, model: nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: LambdaLR, resume: bool) -> Progress:
    """Load the run saved in ``run_dir`` after checking it is the same run; its progress."""
    if not resume:
        raise FileExistsError(f"{run_dir} already holds a run ({run_dir / LAST}); pass "
                              "resume=True to continue it (load_or_train does) or choose "
                              "another run.out_dir")
    _, meta = read_checkpoint(run_dir / LAST, with_tensors=False)
    if diff := config_diff(meta["config"], cfg):
        raise CheckpointError(f"{run_dir / LAST} was trained with a different config; "
                              f"changed: {'; '.join(diff)}")
    if meta["world_size"] != info.world_size:
        raise CheckpointError(f"{run_dir / LAST} was saved by {meta['world_size']} "
                              f"processes; resume it with as many (now {info.world_size})")
    load_checkpoint(run_dir / LAST, model, optimizer, rank=info.rank)
    scheduler.load_state_dict(meta["scheduler"])
    if info.is_main:  # left by writes that a hard kill cut short (atomic_write's names)
        for stale in (run_dir / LAST).parent.glob(".*.tmp*"):
            stale.unlink(missing_ok=True)
    return Progress(**meta["progress"])


def write_history(run_dir: Path, state: Progress, info: DistInfo) -> None:
    """``metrics.jsonl``: one row per epoch, epoch 0 being the model before training."""
    if info.is_main:
        atomic_write(run_dir / "metrics.jsonl",
                     "".join(json.dumps(r) + "\n" for r in state.history).encode())


def finish_run(model: nn.Module, run_dir: Path, state: Progress, cfg: Config, info: DistInfo
               ) -> FitResult:
    """Load the best weights and write ``final.json`` (the mark of a finished run)."""
    if info.world_size > 1:
        dist.barrier()  # rank 0 has written the checkpoints
    if (run_dir / BEST).exists():
        load_checkpoint(run_dir / BEST, model)
    best_epoch = state.best_epoch if (run_dir / BEST).exists() else state.epoch
    result = FitResult(run_dir, state.metric, state.best_value, best_epoch, state.history)
    if info.is_main:
        write_json(run_dir / "final.json", {
            "metric": state.metric, "best_value": state.best_value, "best_epoch": best_epoch,
            "best": state.history[best_epoch], "epochs": state.epoch, "steps": state.step,
            "seed": cfg.run.seed})
    return result


__all__ = [
    "BEST",
    "LAST",
    "RESUMABLE_CHANGES",
    "FitResult",
    "Progress",
    "config_diff",
    "finish_run",
    "gather_rng",
    "resume_run",
    "save_best",
    "save_last",
    "start_run_dir",
    "write_history",
]
