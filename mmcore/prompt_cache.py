"""Exact caching for read-only prompts on frozen encoders: encode each sample once, train for free.

No original token attends to a read-only prompt, so with frozen weights every layer's
keys and values of the original tokens are the same whatever the prompts are. A
``SplitCache`` holds them for every sample of a split (``TokenCache`` per modality,
bf16 under bf16 precision), computed in one evaluation pass; a training step then runs
only the K prompt tokens through the layers (``ImageEncoder.forward_cached``), which is
exact and costs about K / (L + K) of the full forward.

Frozen means frozen: the encoders run in evaluation mode (no dropout) and the images
get no augmentation, since an augmented view would need its own cache. The cache is
saved under ``$MMCORE_CACHE/tokens/<key>``, where the key hashes everything the
original tokens depend on (weights, image size, text length, dataset, split, the
samples' ids and precision), so a stale cache is never read; a cache larger than
``run.cache_memory_gb`` stays memory-mapped on disk instead of being loaded. A
``data.limit_samples`` subset is cut from its whole split's cache when that one is on disk.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmcore.cached_forward import TokenCache
from mmcore.checkpoint import write_json
from mmcore.config import Config
from mmcore.data import load_dataset
from mmcore.data.base import Batch, MultimodalDataset
from mmcore.missing import MissingTable
from mmcore.model import FusionModel
from mmcore.runtime import keep_freed_memory, precision_context
from mmcore.weights import cache_dir

FORMAT = 2  # 2: keys and values layer-major, split into heads
_PARTS = {"keys": (0, 2), "values": (0, 2), "padding": (0, 1), "embedding": (0, None)}
"""A ``TokenCache``'s parts, each with the sample axis and the token axis (the one a longer
text batch widens) of its tensors (of each layer's, for keys and values). On disk, keys and
values are one (layers, N, H, L, Dh) array each."""


def uses_token_cache(cfg: Config) -> bool:
    """Whether runs of ``cfg`` train and evaluate from cached tokens (frozen encoders only)."""
    return cfg.model.peft == "frozen" and cfg.run.token_cache


@dataclass
class SplitCache:
    """A split's cached tokens per modality, its real availability and its labels."""

    image: TokenCache | None  # N samples; those without an image hold zeros
    text: TokenCache | None
    has_image: Tensor  # (N,) bool
    has_text: Tensor  # (N,) bool
    labels: Tensor  # (N,) long or (N, C) float
    split: str

    def __len__(self) -> int:
        return self.has_image.shape[0]

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in (self.image, self.text) if c is not None)

    def select(self, rows: Tensor) -> "SplitCache":
        """The cache of the samples at ``rows``, in that order."""
        image, text = (None if c is None else c.select(rows) for c in (self.image, self.text))
        return SplitCache(image, text, self.has_image[rows], self.has_text[rows],
                          self.labels[rows], self.split)


def cache_key(cfg: Config, dataset: MultimodalDataset) -> str:
    """A digest of everything the original tokens' keys and values depend on."""
    m, d = cfg.model, cfg.data
    ids = hashlib.sha256("\n".join(s.id for s in dataset.samples).encode()).hexdigest()
    facts = {"format": FORMAT, "preset": m.preset, "image_encoder": m.image_encoder,
             "text_encoder": m.text_encoder, "image_size": m.image_size,
             "modalities": m.modalities, "max_text_length": d.max_text_length,
             "dataset": d.dataset, "data_root": str(Path(d.data_root).resolve()),
             "task": d.task, "split": dataset.split, "ids": ids,
             "bad_sample_policy": d.bad_sample_policy, "precision": cfg.run.precision}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def build_split_cache(model: FusionModel, loader: DataLoader, device: torch.device,
                      precision: str, progress: bool = True) -> SplitCache:
    """Run each encoder once over a split (in order, real availability) and keep its tokens.

    Args:
        model: the fusion model with frozen encoders.
        loader: an evaluation loader over the split without a missing table.
        device: where the encoders run.
        precision: "bf16" stores bf16 keys and values (as a bf16 forward computes them).
        progress: show a progress bar.
    """
    model.eval()
    n = len(loader.dataset)
    chunks: dict[str, dict[str, list[Tensor]]] = {}
    has = {"image": torch.zeros(n, dtype=torch.bool), "text": torch.zeros(n, dtype=torch.bool)}
    labels: Tensor | None = None
    for batch in tqdm(loader, desc=f"cache {loader.dataset.split}", disable=not progress,
                      leave=False):
        if len(batch) == 0:
            continue
        batch = batch.to(device)
        if labels is None:
            labels = torch.zeros((n, *batch.labels.shape[1:]), dtype=batch.labels.dtype)
        labels[batch.index.cpu()] = batch.labels.cpu()
        for name, encoder, present in (("image", model.image_encoder, batch.has_image),
                                       ("text", model.text_encoder, batch.has_text)):
            rows = present.nonzero().squeeze(1)
            if encoder is None or rows.numel() == 0:
                continue
            with precision_context(device, precision):
                if name == "image":
                    _, tokens = encoder.forward_recording(batch.pixel_values[rows])
                else:
                    _, tokens = encoder.forward_recording(batch.input_ids[rows],
                                                          batch.attention_mask[rows])
            _store(chunks.setdefault(name, {}), tokens, batch.index[rows].cpu(), n)
            has[name][batch.index[rows].cpu()] = True
    caches = {name: TokenCache(tuple(parts["keys"]), tuple(parts["values"]), parts["padding"][0],
                               parts["embedding"][0]) for name, parts in chunks.items()}
    return SplitCache(caches.get("image"), caches.get("text"), has["image"], has["text"],
                      labels if labels is not None else torch.zeros(n, dtype=torch.long),
                      loader.dataset.split)


def _store(parts: dict[str, list[Tensor]], tokens: TokenCache, rows: Tensor, n: int) -> None:
    """Write a batch's tokens at ``rows`` of split-sized tensors (allocated, or widened, here):
    one per part, one per layer for the keys and values."""
    for part, (sample_axis, token_axis) in _PARTS.items():
        batch_values = getattr(tokens, part)
        fulls = parts.setdefault(part, [])
        for i, value in enumerate(batch_values if isinstance(batch_values, tuple)
                                  else (batch_values,)):
            value = value.cpu().float() if part == "embedding" else value.cpu()
            if i == len(fulls):
                shape = list(value.shape)
                shape[sample_axis] = n
                fulls.append(value.new_zeros(shape))
            index: list[slice | Tensor] = [slice(None)] * value.dim()
            index[sample_axis] = rows
            if token_axis is not None:  # texts: a longer batch widens the token axis
                grow = value.shape[token_axis] - fulls[i].shape[token_axis]
                if grow > 0:
                    shape = list(fulls[i].shape)
                    shape[token_axis] = grow
                    fulls[i] = torch.cat([fulls[i], fulls[i].new_zeros(shape)], dim=token_axis)
                index[token_axis] = slice(0, value.shape[token_axis])
            fulls[i][tuple(index)] = value


# --- on disk -----------------------------------------------------------------------------------


def save_split_cache(cache: SplitCache, folder: Path) -> None:
    """Write the arrays, then ``meta.json`` last: a folder without it is incomplete.

    Written in a folder of this process's own beside ``folder``, then renamed to it, so
    two processes building the same cache at once (two book chapters) never mix their
    files: the first to finish keeps its folder, the other drops its copy. Each array is
    written with plain file writes, layer by layer (never stacked in memory): a
    memory-mapped file took 3x as long, a page fault for every 4 KiB.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)  # as a plain folder would be: mkdtemp's is private
    try:
        arrays: dict[str, Tensor | tuple[Tensor, ...]] = {
            "has_image": cache.has_image, "has_text": cache.has_text, "labels": cache.labels}
        for name in ("image", "text"):
            tokens = getattr(cache, name)
            if tokens is not None:
                arrays.update({f"{name}_{part}": getattr(tokens, part) for part in _PARTS})
        dtypes = {}
        for name, value in arrays.items():
            layers = value if isinstance(value, tuple) else (value,)
            dtypes[name] = str(layers[0].dtype).removeprefix("torch.")
            shape = (len(layers), *layers[0].shape) if isinstance(value, tuple) else value.shape
            with open(tmp / f"{name}.npy", "wb") as f:
                np.lib.format.write_array_header_1_0(f, {
                    "descr": np.lib.format.dtype_to_descr(_numpy(layers[0]).dtype),
                    "fortran_order": False, "shape": tuple(shape)})
                for layer in layers:
                    f.write(memoryview(np.ascontiguousarray(_numpy(layer))).cast("B"))
        write_json(tmp / "meta.json", {"format": FORMAT, "split": cache.split, "dtypes": dtypes})
        if folder.exists() and not _is_complete(folder):
            shutil.rmtree(folder, ignore_errors=True)  # unfinished, or of another format
        try:
            tmp.rename(folder)
        except OSError:
            if not _is_complete(folder):
                raise
            # another process saved the same cache first: the same numbers, keep its copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole cache of this format (``meta.json`` comes last)."""
    try:
        return json.loads((folder / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def _numpy(tensor: Tensor) -> np.ndarray:
    """The tensor's numbers as numpy holds them: bf16 as its bits (numpy has no bfloat16)."""
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def load_split_cache(folder: Path, memory_budget_bytes: float) -> SplitCache | None:
    """The cache in ``folder``, in memory if it fits the budget, else memory-mapped; None if absent.

    The last few caches read stay loaded for the process (a notebook or a script trains
    several models on the same split); they are read-only, so sharing them is safe.
    """
    return _load_split_cache(folder.resolve(), memory_budget_bytes,
                             (folder / "meta.json").stat().st_mtime_ns
                             if (folder / "meta.json").exists() else 0)


@functools.lru_cache(maxsize=6)
def _load_split_cache(folder: Path, memory_budget_bytes: float, stamp: int) -> SplitCache | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        return None
    size = sum(f.stat().st_size for f in folder.glob("*.npy"))
    mode = None if size <= memory_budget_bytes else "c"  # copy-on-write map: never written

    def read(name: str) -> Tensor:
        tensor = torch.from_numpy(np.load(folder / f"{name}.npy", mmap_mode=mode))
        dtype = meta["dtypes"][name]
        return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor

    tokens = {name: TokenCache(tuple(read(f"{name}_keys").unbind(0)),
                               tuple(read(f"{name}_values").unbind(0)),
                               read(f"{name}_padding"), read(f"{name}_embedding"))
              for name in ("image", "text") if f"{name}_keys" in meta["dtypes"]}
    return SplitCache(tokens.get("image"), tokens.get("text"), read("has_image"),
                      read("has_text"), read("labels"), meta["split"])


def load_or_build_split_cache(model: FusionModel, cfg: Config, dataset: MultimodalDataset,
                              loader: DataLoader, device: torch.device) -> SplitCache:
    """The split's cache from ``$MMCORE_CACHE/tokens`` if there is one, else built and saved.

    Random-weight encoders (``model.pretrained=False``) are cached in memory only: their
    weights depend on the seed, which the key does not hold.
    """
    budget = cfg.run.cache_memory_gb * 2**30
    folder = cache_dir() / "tokens" / cache_key(cfg, dataset)
    if cfg.model.pretrained and (cached := load_split_cache(folder, budget)) is not None:
        return cached
    cache = _rows_of_whole_split(cfg, dataset) if cfg.model.pretrained else None
    if cache is None:
        cache = build_split_cache(model, loader, device, cfg.run.precision, cfg.run.progress)
    if cfg.model.pretrained:
        save_split_cache(cache, folder)
        return load_split_cache(folder, budget)  # memory-mapped when over the budget
    return cache


def _rows_of_whole_split(cfg: Config, dataset: MultimodalDataset) -> SplitCache | None:
    """A ``limit_samples`` subset's cache taken from its whole split's cache, if that is on
    disk (a book chapter's small ablation runs reuse what an earlier chapter encoded); else None.

    The whole split is read memory-mapped, so only the subset's rows are read.
    """
    if not cfg.data.limit_samples:
        return None
    whole_cfg = cfg.replace(limit_samples=0)
    whole = load_dataset(whole_cfg.data, dataset.split)
    cached = load_split_cache(cache_dir() / "tokens" / cache_key(whole_cfg, whole), 0)
    if cached is None:
        return None
    position = {sample.id: row for row, sample in enumerate(whole.samples)}
    return cached.select(torch.tensor([position[sample.id] for sample in dataset.samples]))


# --- batches from the cache --------------------------------------------------------------------


class CachedSplit(Dataset):
    """A map-style dataset over a ``SplitCache``: items are sample positions."""

    def __init__(self, cache: SplitCache, dataset: MultimodalDataset) -> None:
        self.cache = cache
        self.split = dataset.split
        self.task_type = dataset.task_type

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> int:
        return index


class CachedCollator:
    """Positions -> a ``Batch`` carrying cached tokens (and no pixels or token ids), as a step
    reads them (``TokenCache.batch``): in place, or gathered with ``room`` free rows in every
    block for the model's prompts.

    Gathered blocks are fresh, a few MiB a layer: the collator has this process's malloc keep
    freed blocks for reuse (``mmcore.runtime.keep_freed_memory``), so that a step reuses the
    last one's memory instead of faulting in new pages.
    """

    def __init__(self, cache: SplitCache, missing_table: MissingTable | None = None,
                 room: int = 0) -> None:
        keep_freed_memory()
        self.cache = cache
        self.missing_table = missing_table
        self.room = room

    def __call__(self, positions: Sequence[int]) -> Batch:
        index = torch.tensor(list(positions), dtype=torch.long)
        has_image, has_text = self.cache.has_image[index], self.cache.has_text[index]
        if self.missing_table is not None:
            has_image, has_text = self.missing_table.apply(index, has_image, has_text)
        empty = torch.zeros(len(index), 0)
        return Batch(index=index, pixel_values=empty, input_ids=empty.long(),
                     attention_mask=empty.long(), has_image=has_image, has_text=has_text,
                     labels=self.cache.labels[index],
                     image_tokens=self._rows(self.cache.image, index),
                     text_tokens=self._rows(self.cache.text, index))

    def _rows(self, tokens: TokenCache | None, index: Tensor) -> TokenCache | None:
        return None if tokens is None else tokens.batch(index, self.room)


__all__ = [
    "CachedCollator",
    "CachedSplit",
    "SplitCache",
    "build_split_cache",
    "cache_key",
    "load_or_build_split_cache",
    "load_split_cache",
    "save_split_cache",
    "uses_token_cache",
]
