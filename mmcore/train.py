"""The training engine: ``fit``, ``evaluate`` and ``load_or_train``; resumable and distributed.

``fit`` trains any module whose ``forward(batch)`` returns an object with ``logits``,
``loss`` and ``terms`` (``FusionModel``'s ``ModelOutput``): AdamW with the encoder
parameters PEFT leaves trainable at ``optim.encoder_lr`` and everything else at
``optim.lr``, linear warm-up then cosine decay per optimiser step, gradient accumulation,
bf16 autocast, gradient clipping, a validation metric per epoch and the best checkpoint
by the headline metric.

Reproducibility: every generator is seeded and checkpointed (``mmcore.checkpoint``), and
the training order comes from ``ResumableSampler`` (a permutation per ``seed + epoch``), so
a run interrupted at an optimiser step and resumed ends with the same weights and metrics
as one that was never interrupted (exactly, with ``num_workers=0``; with workers, random
augmentations are exact when resuming at epoch boundaries).

Interrupts: checkpoints are written atomically, so a crash or a hard kill at any point
leaves the previous ``last`` whole. The first SIGINT / SIGTERM lets the optimiser step under
way finish, saves ``last`` and raises ``TrainingInterrupted`` (resume=True continues from
there); a second one aborts at once.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) ``fit`` joins the process group (gloo
on CPU, nccl on CUDA), wraps the model in DistributedDataParallel, and ``evaluate``
gathers every rank's logits and drops the samples DistributedSampler repeats, so metrics
equal the single-process ones. ``optim.batch_size`` is the global batch: each of W ranks
loads a W-th of it. Only rank 0 writes the run folder and shows progress bars.

Run folder (``run.out_dir``): ``config.yaml``, ``env.json`` (versions, device, seed),
``metrics.jsonl`` (one line per epoch), ``final.json`` (written last: the run finished),
``checkpoints/{last,best}.safetensors``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from mmcore.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    write_json,
)
from mmcore.config import Config, OptimConfig
from mmcore.data.base import TaskType
from mmcore.metrics import compute_metrics, metric_for
from mmcore.model import precision_context
from mmcore.prompts import prompt_parameters

EvaluateFn = Callable[[nn.Module, DataLoader], dict[str, float]]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # stop after the current optimiser step
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


# --- processes, devices, seeds ----------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_env() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (1 process without it)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """``run.device`` as a torch device: "auto" picks CUDA when present (this rank's GPU)."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device='cuda' but CUDA is not available; use 'auto' or 'cpu'")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1 (the caller destroys it)."""
    info = distributed_env()
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- data --------------------------------------------------------------------------------------


class ResumableSampler(DistributedSampler):
    """DistributedSampler (this rank's share of a ``seed + epoch`` permutation) that can start
    mid-epoch. It needs no process group: rank and world size come from the environment."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int) -> None:
        info = distributed_env()
        super().__init__(dataset, info.world_size, info.rank, shuffle=shuffle, seed=seed)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Use epoch ``epoch``'s order, skipping this rank's first ``start`` samples."""
        super().set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


def _seed_worker(worker_id: int) -> None:
    np.random.seed(torch.initial_seed() % 2**32)  # torch seeds workers' torch and random


def build_loader(dataset: Dataset, batch_size: int, collate_fn: Callable, *, train: bool,
                 seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A seeded, resumable DataLoader that splits each batch over torchrun's processes.

    Args:
        dataset: a map-style dataset (``MultimodalDataset``).
        batch_size: the global batch (``optim.batch_size`` / ``run.eval_batch_size``); each
            of W processes loads ``batch_size / W`` samples.
        collate_fn: e.g. ``mmcore.data.Collator``.
        train: shuffle (a new permutation per epoch) or keep the dataset's order.
        seed: the run seed.
        num_workers: DataLoader worker processes.
    """
    world = distributed_env().world_size
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} (optim.batch_size / run.eval_batch_size) "
                         f"is not divisible by the {world} processes")
    return DataLoader(dataset, batch_size=batch_size // world, collate_fn=collate_fn,
                      sampler=ResumableSampler(dataset, shuffle=train, seed=seed),
                      num_workers=num_workers, worker_init_fn=_seed_worker,
                      generator=torch.Generator().manual_seed(seed))


def _start_epoch(loader: DataLoader, epoch: int, batches_done: int, seed: int, rank: int
                 ) -> Iterator:
    """Iterate ``loader`` for ``epoch`` from micro-batch ``batches_done`` on."""
    if loader.generator is not None:  # worker seeds: a function of (seed, rank, epoch) alone
        loader.generator.manual_seed((seed * 1_000_003 + rank) * 1_000_003 + epoch)
    sampler = loader.sampler
    if isinstance(sampler, ResumableSampler):
        sampler.set_epoch(epoch, start=batches_done * loader.batch_size)
        return iter(loader)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return itertools.islice(loader, batches_done, None)  # any other loader: skip by loading


# --- optimisation ------------------------------------------------------------------------------


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups: (encoder | rest) x (decay | no decay), empty groups left out.

    Encoder parameters are the trainable ones under a top-level module whose name ends in
    "encoder" (``image_encoder``, ``text_encoder``), except read-only prompts; they train at
    ``optim.encoder_lr``, everything else at ``optim.lr``. Biases, norm weights (every
    parameter of fewer than 2 dimensions) and prompts get no weight decay.
    """
    prompts = {id(p) for p in prompt_parameters(model)}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {
        (enc, decay): [] for enc in (True, False) for decay in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            encoder = name.split(".", 1)[0].endswith("encoder") and id(p) not in prompts
            groups[encoder, p.ndim >= 2 and id(p) not in prompts].append(p)
    return [{"name": f"{'encoder' if enc else 'rest'}_{'decay' if decay else 'no_decay'}",
             "params": ps, "lr": optim.encoder_lr if enc else optim.lr,
             "weight_decay": optim.weight_decay if decay else 0.0}
            for (enc, decay), ps in groups.items() if ps]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based): linear
    warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# --- evaluation --------------------------------------------------------------------------------


def _gather_rows(x: Tensor) -> Tensor:
    """Concatenate every rank's rows (ranks may hold different numbers of rows)."""
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    padded = x.new_zeros((int(max(sizes)), *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, task_type: TaskType,
             precision: str = "fp32", progress: bool = False
             ) -> tuple[dict[str, float], Tensor, Tensor]:
    """Score a model on a loader; under torchrun, over every rank's share.

    Args:
        model: returns ``.logits`` for a ``Batch`` (a DDP wrapper is unwrapped).
        loader: batches carrying ``index`` (the sample's position in its split).
        task_type: "multiclass", "multilabel" or "binary" (picks the metrics).
        precision: "bf16" (autocast where supported) or "fp32".
        progress: show a progress bar (rank 0 only).

    Returns:
        ``compute_metrics``'s dict, and the (N, C) float32 logits and labels on the CPU,
        one row per sample in split order (DistributedSampler's repeats removed).
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    index, logits, labels = [], [], []
    shown = progress and distributed_env().is_main
    for batch in tqdm(loader, desc="eval", disable=not shown, leave=False):
        if len(batch) == 0:  # every row skipped by bad_sample_policy="skip"
            continue
        batch = batch.to(device)
        with precision_context(device, precision):
            out = net(batch)
        index.append(batch.index)
        logits.append(out.logits.float())
        labels.append(batch.labels)
    net.train(was_training)
    index, logits, labels = torch.cat(index), torch.cat(logits), torch.cat(labels)
    if dist.is_initialized() and dist.get_world_size() > 1:
        index, logits, labels = (_gather_rows(t) for t in (index, logits, labels))
    index, order = torch.sort(index, stable=True)
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]  # DistributedSampler pads with repeated samples
    logits, labels = logits[order][first].cpu(), labels[order][first].cpu()
    return compute_metrics(logits, labels, task_type), logits, labels


# --- run folder and checkpoints -----------------------------------------------------------------


def _config_diff(saved: dict[str, dict[str, Any]], cfg: Config) -> list[str]:
    flat = {k: v for section in saved.values() for k, v in section.items()}
    return [f"{k}: {flat.get(k)!r} -> {v!r}" for k, v in cfg.to_flat().items()
            if k not in RESUMABLE_CHANGES and flat.get(k) != v]


def _gather_rng(info: DistInfo, device: torch.device) -> dict[int, dict[str, Tensor]]:
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


def environment(device: torch.device, seed: int, world_size: int) -> dict[str, Any]:
    """Versions and hardware facts that decide speed and numerics (``env.json``)."""
    def version(package: str) -> str | None:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split() if cpuinfo.is_file() else []
    return {
        "seed": seed, "world_size": world_size, "device": str(device),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__,
        **{p: version(p) for p in ("timm", "transformers", "mmcore")},
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_bf16_flags": sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")}),
        "threads": torch.get_num_threads(),
    }


# --- training ----------------------------------------------------------------------------------


class TrainingInterrupted(SystemExit):
    """``fit`` stopped on SIGINT / SIGTERM once ``last`` was saved. Uncaught, it ends the
    process with its message and no traceback; running the same call again resumes."""

    def __init__(self, signum: int, checkpoint: Path, step: int) -> None:
        super().__init__(
            f"training stopped by {signal.Signals(signum).name} after optimiser step {step}; "
            f"saved {checkpoint}. To resume, run the same command again (python -m mmcore "
            "train ... and load_or_train resume automatically) or call fit(..., resume=True)")
        self.signum, self.checkpoint, self.step = signum, checkpoint, step


class _StopSignals:
    """SIGINT / SIGTERM while ``fit`` runs: the first asks for a stop after the current
    optimiser step (``fit`` saves ``last``, then raises ``TrainingInterrupted``); a second
    aborts at once. Handlers are installed only in the main thread and restored on exit."""

    def __init__(self, info: DistInfo, device: torch.device) -> None:
        self.info, self.device = info, device
        self.signum = 0  # the first signal received (0: none)
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
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


@dataclass
class _Progress:
    """Where a run is; stored in the ``last`` checkpoint."""

    epoch: int = 0  # epochs finished
    batches: int = 0  # micro-batches done in the current epoch
    step: int = 0  # optimiser steps done
    sums: dict[str, float] = field(default_factory=dict)  # this epoch's running sums
    history: list[dict[str, float]] = field(default_factory=list)
    metric: str = ""  # headline validation metric
    best_value: float = float("nan")
    best_epoch: int = 0


@dataclass
class _Trainer:
    """One run's fixed parts: what ``fit`` sets up, shared by its epochs."""

    model: nn.Module  # unwrapped
    net: nn.Module  # what the forward pass runs: the model or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    cfg: Config
    info: DistInfo
    device: torch.device
    run_dir: Path
    stop: _StopSignals

    def save_last(self, state: _Progress) -> None:
        rng = _gather_rng(self.info, self.device)  # a collective: every rank takes part
        if self.info.is_main:
            save_checkpoint(self.run_dir / LAST, self.model, {
                "kind": "last", "finished": state.epoch == self.cfg.optim.epochs,
                "config": self.cfg.to_dict(), "world_size": self.info.world_size,
                "scheduler": self.scheduler.state_dict(), "progress": vars(state)},
                self.optimizer, rng)

    def train_epoch(self, loader: DataLoader, state: _Progress) -> None:
        """Run (the rest of) epoch ``state.epoch``, stepping every ``grad_accum`` micro-batches."""
        o, n, ddp = self.cfg.optim, len(loader), isinstance(self.net, DistributedDataParallel)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        bar = tqdm(total=n, initial=state.batches, desc=f"epoch {state.epoch + 1}/{o.epochs}",
                   disable=not (self.cfg.run.progress and self.info.is_main))
        sums, tic = state.sums, time.perf_counter()
        for i, batch in enumerate(_start_epoch(loader, state.epoch, state.batches,
                                               self.cfg.run.seed, self.info.rank),
                                  start=state.batches):
            window = min(o.grad_accum, n - i // o.grad_accum * o.grad_accum)
            steps_now = (i + 1) % o.grad_accum == 0 or i + 1 == n
            if len(batch):
                with self.net.no_sync() if ddp and not steps_now else contextlib.nullcontext():
                    with precision_context(self.device, self.cfg.run.precision):
                        out = self.net(batch.to(self.device))
                    (out.loss / window).backward()  # the mean over the window's micro-batches
                for key, value in {"loss": float(out.loss.detach()), **out.terms,
                                   "batches": 1, "samples": len(batch)}.items():
                    sums[key] = sums.get(key, 0.0) + value
            elif ddp:
                raise RuntimeError("an empty batch (every row skipped by data.bad_sample_policy="
                                   "'skip') would stall the other processes; use 'missing'")
            bar.update(1)
            if not steps_now:
                continue
            if o.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(trainable, o.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            state.step, state.batches = state.step + 1, i + 1
            sums["time_s"] = sums.get("time_s", 0.0) + time.perf_counter() - tic
            tic = time.perf_counter()
            if sums.get("batches"):
                bar.set_postfix(loss=f"{sums['loss'] / sums['batches']:.4f}", samples_s=(
                    f"{sums['samples'] * self.info.world_size / sums['time_s']:.1f}"))
            every = self.cfg.run.checkpoint_every
            signum = self.stop.requested()
            if signum or (every and state.step % every == 0 and i + 1 < n):
                self.save_last(state)
            if signum:
                bar.close()
                raise TrainingInterrupted(signum, self.run_dir / LAST, state.step)
        bar.close()

    def epoch_row(self, state: _Progress) -> dict[str, float]:
        """The epoch's training means over every rank, learning rates and speed."""
        keys = sorted(k for k in state.sums if k != "time_s")
        comm = self.device if self.info.world_size > 1 and dist.get_backend() == "nccl" else "cpu"
        totals = torch.tensor([state.sums[k] for k in keys], dtype=torch.float64, device=comm)
        if self.info.world_size > 1:
            dist.all_reduce(totals)
        sums = dict(zip(keys, totals.tolist()))
        batches, samples = sums.pop("batches", 0.0), sums.pop("samples", 0.0)
        seconds = state.sums.get("time_s", 0.0)
        return {"epoch": state.epoch + 1, "step": state.step,
                **{f"train_{k}": v / max(batches, 1.0) for k, v in sums.items()},
                **{f"lr_{g['name']}": g["lr"] for g in self.optimizer.param_groups},
                "samples": samples, "time_s": seconds,
                "samples_per_s": samples / seconds if seconds else float("nan")}


LAST, BEST = "checkpoints/last.safetensors", "checkpoints/best.safetensors"


def _better(value: float, best: float) -> bool:
    """Higher is better; the first score always counts; a NaN never displaces a number."""
    return math.isnan(best) or value > best


def _write_history(run_dir: Path, state: _Progress, info: DistInfo) -> None:
    """``metrics.jsonl``: one row per epoch, epoch 0 being the model before training."""
    if info.is_main:
        atomic_write(run_dir / "metrics.jsonl",
                     "".join(json.dumps(r) + "\n" for r in state.history).encode())


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: Config,
    run_dir: str | Path | None = None,
    evaluate_fn: EvaluateFn | None = None,
    resume: bool = False,
    on_run_dir: Callable[[Path], None] | None = None,
) -> FitResult:
    """Train ``model``, validating each epoch and keeping the best checkpoint.

    Args:
        model: ``forward(batch)`` returns ``.logits``, ``.loss`` (the training loss) and
            ``.terms`` (a dict of floats to log); ``model.task_type`` or the validation
            dataset's ``task_type`` picks the metrics. Seed before building it.
        train_loader: training batches; ``build_loader`` makes one that is seeded,
            resumable mid-epoch and split over processes.
        val_loader: validation batches, or None (no best checkpoint: the last one is kept).
        cfg: ``optim`` and ``run`` are used; all of it is saved, and checked on resume.
        run_dir: the run folder (default ``run.out_dir``).
        evaluate_fn: ``(model, val_loader) -> metrics`` in place of ``evaluate``; its
            first key is the headline (higher is better).
        resume: continue the run saved in ``run_dir`` (or just load it, if it finished);
            start afresh when there is none. False refuses a folder that holds a run.
        on_run_dir: called once with the new run folder on rank 0 (e.g. to save the
            missing tables there).

    Returns:
        ``FitResult``; ``model`` ends with the best checkpoint's weights.

    Raises:
        FileExistsError: ``resume=False`` and ``run_dir`` holds a run.
        CheckpointError: resuming a run of another config, model or process count.
    """
    run_dir = Path(run_dir or cfg.run.out_dir)
    device = resolve_device(cfg.run.device, distributed_env().local_rank)
    info = init_distributed(device)
    task_type = getattr(model, "task_type", None) or getattr(
        getattr(val_loader, "dataset", None), "task_type", None)
    if val_loader is not None and evaluate_fn is None and task_type is None:
        raise ValueError("fit cannot tell the task type: give the model or the validation "
                         "dataset a task_type attribute, or pass evaluate_fn")
    seed_everything(cfg.run.seed + info.rank)
    model.to(device)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, o), lr=o.lr, weight_decay=o.weight_decay)
    total = math.ceil(len(train_loader) / o.grad_accum) * o.epochs
    scheduler = LambdaLR(optimizer, partial(lr_factor, total=total,
                                            warmup=round(o.warmup_ratio * total)))
    state = _Progress(metric=metric_for(task_type).name if evaluate_fn is None and task_type
                      else "")
    if (run_dir / LAST).exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run ({run_dir / LAST}); pass "
                                  "resume=True to continue it (load_or_train does) or choose "
                                  "another run.out_dir")
        _, meta = read_checkpoint(run_dir / LAST, with_tensors=False)
        if diff := _config_diff(meta["config"], cfg):
            raise CheckpointError(f"{run_dir / LAST} was trained with a different config; "
                                  f"changed: {'; '.join(diff)}")
        if meta["world_size"] != info.world_size:
            raise CheckpointError(f"{run_dir / LAST} was saved by {meta['world_size']} "
                                  f"processes; resume it with as many (now {info.world_size})")
        load_checkpoint(run_dir / LAST, model, optimizer, rank=info.rank)
        scheduler.load_state_dict(meta["scheduler"])
        state = _Progress(**meta["progress"])
        if info.is_main:  # left by writes that a hard kill cut short (atomic_write's names)
            for stale in (run_dir / LAST).parent.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", cfg.to_yaml().encode())
        write_json(run_dir / "env.json", environment(device, cfg.run.seed, info.world_size))
        if on_run_dir is not None:
            on_run_dir(run_dir)

    net = model
    if info.world_size > 1:
        # a step may leave trainable parameters without a gradient: a rank's batch can lack
        # a modality (real missingness or the missing table skip that encoder and the
        # alignment), and some never get one (a pooler's bias, the prompts under
        # predict_from="cls"); DDP must look for them in every step
        net = DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                      else None, find_unused_parameters=True)
    def validate(row: dict[str, float]) -> None:
        """Score the model on validation into ``row``; keep it as ``best`` if it is."""
        if val_loader is None:
            return
        show = cfg.run.progress and info.is_main
        scores = (evaluate_fn(model, val_loader) if evaluate_fn is not None
                  else evaluate(model, val_loader, task_type, cfg.run.precision, show)[0])
        state.metric = state.metric or next(iter(scores))
        row.update({f"val_{k}": v for k, v in scores.items()})
        if _better(scores[state.metric], state.best_value):
            state.best_value, state.best_epoch = scores[state.metric], row["epoch"]
            if info.is_main:
                save_checkpoint(run_dir / BEST, model, {
                    "kind": "best", "config": cfg.to_dict(), "epoch": row["epoch"],
                    "metrics": scores})

    with _StopSignals(info, device) as stop:
        trainer = _Trainer(model, net, optimizer, scheduler, cfg, info, device, run_dir, stop)
        if not state.history:  # epoch 0: the model as built (closed-form fits, if any)
            start = {"epoch": 0, "step": 0}
            validate(start)
            state.history.append(start)
            _write_history(run_dir, state, info)
            trainer.save_last(state)
        while state.epoch < o.epochs:
            trainer.train_epoch(train_loader, state)
            row = trainer.epoch_row(state)
            validate(row)
            state.history.append(row)
            state.epoch, state.batches, state.sums = state.epoch + 1, 0, {}
            _write_history(run_dir, state, info)  # before `last`: a kill in between redoes
            trainer.save_last(state)  # the epoch
            if state.epoch < o.epochs and (signum := stop.requested()):
                raise TrainingInterrupted(signum, run_dir / LAST, state.step)  # saved above
    return _finish(model, run_dir, state, cfg, info)


def _finish(model: nn.Module, run_dir: Path, state: _Progress, cfg: Config, info: DistInfo
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


def load_or_train(
    cfg: Config,
    build: Callable[[Config], tuple[nn.Module, DataLoader, DataLoader | None]],
    run_dir: str | Path | None = None,
    evaluate_fn: EvaluateFn | None = None,
    on_run_dir: Callable[[Path], None] | None = None,
) -> tuple[nn.Module, FitResult]:
    """Load the run in ``run_dir`` if it finished with this config, else train (or resume) it.

    A reader re-running a notebook gets the trained model back without retraining; a run
    saved with another config is an error naming the changed keys, never overwritten.

    Args:
        cfg: the run's configuration.
        build: ``cfg -> (model, train_loader, val_loader)``; called first (seed set to
            ``run.seed``), so the frozen pretrained weights come from their source.
        run_dir: the run folder (default ``run.out_dir``).
        evaluate_fn: as in ``fit``.
        on_run_dir: as in ``fit``.

    Returns:
        The model with its best weights, and the run's ``FitResult``.
    """
    seed_everything(cfg.run.seed)
    model, train_loader, val_loader = build(cfg)
    result = fit(model, train_loader, val_loader, cfg, run_dir, evaluate_fn, resume=True,
                 on_run_dir=on_run_dir)
    return model, result


__all__ = [
    "DistInfo",
    "FitResult",
    "ResumableSampler",
    "TrainingInterrupted",
    "build_loader",
    "distributed_env",
    "environment",
    "evaluate",
    "fit",
    "init_distributed",
    "load_or_train",
    "lr_factor",
    "param_groups",
    "resolve_device",
    "seed_everything",
]
