"""Where and how a run executes: processes, devices, seeds, precision, data loaders, environment.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) ``init_distributed`` joins the process
group (gloo on CPU, nccl on CUDA); ``build_loader``'s ``ResumableSampler`` gives each rank
its share of a ``seed + epoch`` permutation and can start mid-epoch, so an interrupted run
resumes on the same samples. ``optim.batch_size`` is the global batch: each of W ranks
loads a W-th of it.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import itertools
import os
import platform
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mmcore.choice_lists import Precision, check_choice

# --- processes, devices, seeds, precision ------------------------------------------------------


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


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo) -> nn.Module:
    """What the forward pass runs: ``model``, or under torchrun its DDP wrapper."""
    if info.world_size == 1:
        return model
    # a step may leave trainable parameters without a gradient: a rank's batch can lack a
    # modality (real missingness or the missing table skip that encoder and the alignment),
    # and some never get one (a pooler's bias, the prompts under predict_from="cls"); DDP
    # must look for them in every step
    return DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                   else None, find_unused_parameters=True)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU that supports bf16,
    or a CPU with AVX-512 or AMX (where oneDNN has bf16 kernels). Elsewhere (an AVX2-only CPU)
    bf16 products are emulated: 1 GFLOP/s against 159 in float32 on the AVX2 EPYC measured."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def effective_precision(device: torch.device | str, precision: Precision) -> Precision:
    """The precision a run asking for ``precision`` computes in on ``device``: bf16 only where
    the hardware has it (``has_fast_bf16``), else float32, with a warning the first time."""
    check_choice("run.precision", precision, Precision)
    if precision == "bf16" and not has_fast_bf16(device):
        _warn_no_fast_bf16(torch.device(device).type)
        return "fp32"
    return precision


@functools.cache
def _warn_no_fast_bf16(device_type: str) -> None:
    where = (f"CPU ({torch.backends.cpu.get_cpu_capability()})" if device_type == "cpu"
             else f"GPU ({torch.cuda.get_device_name()})")
    warnings.warn(f"run.precision='bf16' computes in float32 on this {where}: it has no bf16 "
                  "matrix units, and emulated bf16 would be over 100x slower")


def precision_context(device: torch.device | str, precision: Precision
                      ) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when asked and fast there (``effective_precision``), else
    a no-op context."""
    if effective_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks of up to 32 MiB for the next ones (this process).

    A cached training step gathers its batch into fresh blocks of a few MiB a layer
    (``TokenCache.select``). Until glibc has raised its own thresholds (by freeing large
    enough blocks), it maps such blocks from the system and hands freed heap tops back, so
    each step faults its blocks in page by page again: 16,000-31,000 faults a batch at 224 px,
    seen in a process that had just recorded its cache. Raised and fixed, they let freed
    blocks serve the next step, as jemalloc or tcmalloc would; up to 1 GiB of freed memory
    then stays with the process. Returns whether it applied (glibc only).
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)
                and libc.mallopt(m_mmap_threshold, 32 << 20))  # glibc's largest


# --- data ----------------------------------------------------------------------------------------


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


def start_epoch(loader: DataLoader, epoch: int, batches_done: int, seed: int, rank: int
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


# --- the environment a run records ---------------------------------------------------------------


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
        "cpu_bf16": has_fast_bf16("cpu"),
        "cpu_bf16_flags": sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")}),
        "threads": torch.get_num_threads(),
    }


__all__ = [
    "DistInfo",
    "ResumableSampler",
    "build_loader",
    "distributed_env",
    "effective_precision",
    "environment",
    "has_fast_bf16",
    "init_distributed",
    "keep_freed_memory",
    "precision_context",
    "resolve_device",
    "seed_everything",
    "start_epoch",
    "wrap_ddp",
]
