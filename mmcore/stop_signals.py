"""Stopping a training run cleanly: SIGINT / SIGTERM end it after the current optimiser step.

``mmcore.train.fit`` runs inside ``StopSignals``: the first signal asks every process (a
collective under torchrun) to stop once the step is done; ``fit`` then saves ``last`` and
raises ``TrainingInterrupted``, and running the same command again resumes from there.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmcore.runtime import DistInfo

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # stop after the current optimiser step


class TrainingInterrupted(SystemExit):
    """``fit`` stopped on SIGINT / SIGTERM once ``last`` was saved. Uncaught, it ends the
    process with its message and no traceback; running the same call again resumes."""

    def __init__(self, signum: int, checkpoint: Path, step: int) -> None:
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} after optimiser step {step}; "
            f"saved {checkpoint}. To resume, run the same command again (python -m mmcore "
            "train ... and load_or_train resume automatically) or call fit(..., resume=True)")
        self.signum, self.checkpoint, self.step = signum, checkpoint, step


class StopSignals:
    """SIGINT / SIGTERM while ``fit`` runs: the first asks for a stop after the current
    optimiser step (``fit`` saves ``last``, then raises ``TrainingInterrupted``); a second
    aborts at once. Handlers are installed only in the main thread and restored on exit."""

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device = info, device
        self.signum = 0  # the first signal received (0: none)
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self.previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            self._restore()
            raise KeyboardInterrupt(f"second {name}: training aborted without saving")
        self.signum = signum
        # os.write, not print: the signal may interrupt a write to stderr (a progress bar)
        os.write(2, f"\n{name}: stopping after this optimiser step once the checkpoint is "
                    "saved (send it again to abort at once)\n".encode())

    def requested(self) -> int:
        """The signal that asked any process to stop (0: none); a collective under torchrun."""
        if self.info.world_size == 1:
            return self.signum
        comm = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([self.signum], device=comm)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingInterrupted"]
