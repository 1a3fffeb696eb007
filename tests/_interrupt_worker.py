"""Trains the toy model for tests/test_interrupt.py in processes a test signals or kills.

Importing torch takes seconds, so by default this is a fork server: it imports once
(computing nothing) and forks one run per request. Protocol, one JSON object per line:
stdin ``{"run_dir": str, "pause_write": int}``; stdout ``{"pid": int}`` once the run
started, then ``{"status": int}`` when it ended (its exit code, or minus the signal that
killed it). With a run folder as its argument (under torchrun) it trains once instead.

A run appends events to ``<run_dir>.events`` (``.events.<rank>`` under torchrun):
``P <pid>`` first, ``F <n>`` before its n-th training forward, ``W <k>`` when it pauses
(for a minute) between writing the temporary file of its k-th ``last`` checkpoint and
renaming it (k = ``pause_write``, 0: never), and ``I <message>`` when ``fit`` stopped on
a signal (exit code 3).
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import TextIO

import torch
import torch._dynamo  # noqa: F401  (the first optimiser imports it: once here, not per child)
from _toy import ToyData, ToyModel

from mmcore.config import Config
from mmcore.data.base import Batch
from mmcore.runtime import build_loader, seed_everything
from mmcore.train import TrainingInterrupted, fit

INTERRUPTED = 3  # exit code of a run that fit stopped cleanly


def config() -> Config:
    """3 epochs of 8 steps with a checkpoint after every step, dropout drawing from the RNG."""
    return Config.from_params(epochs=3, batch_size=8, eval_batch_size=16, lr=1e-2,
                              encoder_lr=1e-3, precision="fp32", progress=False,
                              warmup_ratio=0.2, seed=3, checkpoint_every=1, device="cpu")


class AnnouncedModel(ToyModel):
    """ToyModel that logs each training forward, so a test can strike at a known point."""

    def __init__(self, events: TextIO) -> None:
        super().__init__(dropout=0.2)
        self.events, self.calls = events, 0

    def forward(self, batch: Batch):
        if self.training:
            self.calls += 1
            self.events.write(f"F {self.calls}\n")
        return super().forward(batch)


def pause_in_write(events: TextIO, at: int) -> None:
    """Make the ``at``-th rename of a ``last`` checkpoint wait a minute after logging ``W``."""
    replace, writes = os.replace, 0

    def paused_replace(src: str | Path, dst: str | Path) -> None:
        nonlocal writes
        if str(dst).endswith("last.safetensors"):
            writes += 1
            if writes == at:
                events.write(f"W {writes}\n")
                time.sleep(60)
        replace(src, dst)

    os.replace = paused_replace


def train(run_dir: Path, pause_write: int) -> int:
    """One run (resuming what ``run_dir`` holds); returns the exit code."""
    rank = f".{os.environ['RANK']}" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""
    with open(f"{run_dir}.events{rank}", "a", buffering=1) as events:
        events.write(f"P {os.getpid()}\n")
        if pause_write:
            pause_in_write(events, pause_write)
        cfg = config()
        seed_everything(cfg.run.seed)
        model = AnnouncedModel(events)
        train_set, val_set = ToyData(64, seed=0), ToyData(31, seed=1)
        try:
            fit(model, build_loader(train_set, cfg.optim.batch_size, train_set.collate,
                                    train=True, seed=cfg.run.seed),
                build_loader(val_set, cfg.run.eval_batch_size, val_set.collate, train=False),
                cfg, run_dir, resume=True)
        except TrainingInterrupted as err:
            events.write(f"I {err.code}\n")
            return INTERRUPTED
    return 0


def main() -> None:
    torch.set_num_threads(1)  # the same arithmetic in every child
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = train(Path(request["run_dir"]), request.get("pause_write", 0))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        torch.set_num_threads(1)
        sys.exit(train(Path(sys.argv[1]), 0))
    main()
