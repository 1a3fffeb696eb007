"""Checkpoints without pickle: tensors in safetensors, everything else as JSON in its header.

A checkpoint is one ``.safetensors`` file. Its tensors are the model's trainable parameters
(``model.<name>``), the optimiser's state (``optim.<index>.<key>``) and RNG states
(``rng.<rank>.<source>``, uint8). The header's metadata holds one JSON document with the
rest: epoch, step, scheduler, history, config, the optimiser's hyper-parameters, and the
model's architecture (name, shape, dtype and trainable flag of every state entry, with
their hash). Frozen pretrained weights are not stored: they are reloaded from their
source, and the architecture check makes loading into a different model fail with the
names that differ. One file means one atomic ``os.replace``: a crash leaves the old
checkpoint or the new one, never half of each. Nothing is ever unpickled, and a
``.pt`` / ``.pkl`` path is refused before it is opened.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

META_KEY = "mmcore"  # the header metadata entry that holds the JSON document
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model or run it is loaded into."""


# --- files -----------------------------------------------------------------------------------


def atomic_write(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over ``path``.

    A failed write (a full disk, an interrupt) removes the temporary file and leaves the
    previous ``path`` as it was; an ``OSError`` keeps its errno and names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        full = " (the disk is full)" if err.errno == errno.ENOSPC else ""
        raise OSError(err.errno, f"could not write {path}{full}: {err.strerror or err}; "
                      "the previous version of the file is unchanged") from err
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON, written with ``atomic_write``."""
    return atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def _check_suffix(path: Path) -> None:
    if path.suffix != ".safetensors":
        raise CheckpointError(
            f"refusing to load {path}: only .safetensors checkpoints are read "
            "(.pt / .pkl / .bin files are pickles, and unpickling can execute code)")


# --- model state -----------------------------------------------------------------------------


def architecture(model: nn.Module) -> dict[str, Any]:
    """Name -> [shape, dtype, trainable] of every state entry, and the hash of that list."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    entries = {name: [list(t.shape), str(t.dtype).removeprefix("torch."), name in trainable]
               for name, t in model.state_dict(keep_vars=True).items()}
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "entries": entries}


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that train (what a checkpoint stores), detached, on the CPU."""
    return {name: p.detach().cpu().contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def _check_architecture(saved: dict[str, Any], model: nn.Module, path: Path) -> None:
    current = architecture(model)
    if current["sha256"] == saved["sha256"]:
        return
    old, new = saved["entries"], current["entries"]
    problems = [f"missing from this model: {n}" for n in old if n not in new]
    problems += [f"not in the checkpoint: {n}" for n in new if n not in old]
    problems += [f"{n}: checkpoint [shape, dtype, trainable] {old[n]} vs model {new[n]}"
                 for n in old if n in new and old[n] != new[n]]
    shown = "; ".join(problems[:5]) + (f"; ... {len(problems) - 5} more" if len(problems) > 5
                                       else "")
    raise CheckpointError(f"{path} was saved from a different model architecture or PEFT "
                          f"mode: {shown}")


# --- optimiser state -------------------------------------------------------------------------


def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor],
                       meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v)  # JSON lists
               for k, v in group.items()} for group in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- RNG state -------------------------------------------------------------------------------


def _as_bytes(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array).view(np.uint8).copy())


def rng_state() -> dict[str, Tensor]:
    """Python, NumPy, torch (and CUDA) generator states, each as a uint8 tensor."""
    version, words, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    states = {
        "python": _as_bytes(np.array([version, *words], dtype=np.uint32)),
        "python_gauss": _as_bytes(np.array([gauss is not None, gauss or 0.0], np.float64)),
        "numpy": _as_bytes(np.append(np_state["state"]["key"], np_state["state"]["pos"])
                           .astype(np.uint32)),
        "numpy_gauss": _as_bytes(np.array([np_state["has_gauss"], np_state["gauss"]],
                                          np.float64)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def set_rng_state(states: dict[str, Tensor]) -> None:
    """Restore the generators from ``rng_state()``'s output."""
    words = states["python"].numpy().view(np.uint32)
    has_gauss, gauss = states["python_gauss"].numpy().view(np.float64)
    random.setstate((int(words[0]), tuple(int(w) for w in words[1:]),
                     float(gauss) if has_gauss else None))
    key = states["numpy"].numpy().view(np.uint32)
    np_has_gauss, np_gauss = states["numpy_gauss"].numpy().view(np.float64)
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": key[:-1].copy(), "pos": int(key[-1])},
                         "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)})
    torch.set_rng_state(states["torch"])
    cuda = sorted(k for k in states if k.startswith("cuda"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([states[k] for k in cuda])


# --- save / load -----------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[int, dict[str, Tensor]] | None = None,
) -> Path:
    """Atomically write the model's trainable weights, optimiser and RNG states, and ``meta``.

    Args:
        path: a ``.safetensors`` file.
        model: the unwrapped model (not its DistributedDataParallel wrapper).
        meta: JSON-serialisable run state (epoch, step, scheduler, history, config, ...).
        optimizer: its state is stored too (for resuming), or None (weights only).
        rng: rank -> ``rng_state()`` of that process, or None.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint path {path} must end in .safetensors")
    tensors = {f"model.{n}": t for n, t in trainable_state(model).items()}
    document = {"format": FORMAT_VERSION, "architecture": architecture(model), **meta}
    if optimizer is not None:
        optim_tensors, document["optimizer"] = _optimizer_parts(optimizer)
        tensors.update(optim_tensors)
    for rank, states in (rng or {}).items():
        tensors.update({f"rng.{rank}.{k}": v.contiguous() for k, v in states.items()})
    data = safetensors_bytes(tensors, metadata={META_KEY: json.dumps(document)})
    return atomic_write(path, data)


def read_checkpoint(path: str | Path, with_tensors: bool = True
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and the JSON document of a checkpoint, without applying them.

    Args:
        path: a ``.safetensors`` checkpoint.
        with_tensors: False reads the header alone (the tensors come back empty).

    Raises:
        CheckpointError: the path is not a ``.safetensors`` file, does not exist, or was
            not written by ``save_checkpoint``.
    """
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
    if META_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not an mmcore checkpoint "
                              f"(no '{META_KEY}' entry in its metadata)")
    try:
        document = json.loads(metadata[META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} has a corrupt '{META_KEY}' metadata entry ({err})"
                              ) from None
    if document.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {document.get('format')}; "
                              f"this mmcore reads format {FORMAT_VERSION}")
    return tensors, document


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    rank: int | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``, and this process's RNGs).

    Args:
        path: a ``.safetensors`` checkpoint written by ``save_checkpoint``.
        model: the unwrapped model, built the same way as the saved one (frozen pretrained
            weights come from their source; only trainable weights are replaced).
        optimizer: restored too when given (the checkpoint must hold optimiser state).
        rank: restore the RNG states saved for this rank, if given.

    Returns:
        The checkpoint's JSON document.

    Raises:
        CheckpointError: unreadable file, a different architecture, or missing state.
    """
    path = Path(path)
    tensors, document = read_checkpoint(path)
    _check_architecture(document["architecture"], model, path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name.startswith("model."):
                params[name.removeprefix("model.")].copy_(value)
    if optimizer is not None:
        if "optimizer" not in document:
            raise CheckpointError(f"{path} holds weights only; it cannot resume an optimiser")
        _restore_optimizer(optimizer, {k: v for k, v in tensors.items()
                                       if k.startswith("optim.")}, document["optimizer"])
    if rank is not None:
        prefix = f"rng.{rank}."
        states = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        if not states:
            raise CheckpointError(f"{path} holds no RNG state for rank {rank} (saved with a "
                                  "different number of processes?)")
        set_rng_state(states)
    return document


__all__ = [
    "CheckpointError",
    "architecture",
    "atomic_write",
    "load_checkpoint",
    "read_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "trainable_state",
    "write_json",
]
