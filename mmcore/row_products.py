"""The prompts' attention products with a batch's cached tokens, read where they lie in the
split's float32 blocks instead of gathered into a batch's own.

A cached training step attends K prompt queries to each sample's L cached keys and values:
four products a layer (scores and mix forward, their two gradients backward), each a
(K, Dh) by (Dh, L) product per sample and head. Gathered into a fresh block and multiplied
by MKL's batched product, that took 2 gathers and 4 products, 206 ms over the 12 layers of
a ViT-S/14 at 224 px (batch 32, K = 6, 2 threads on an AVX2 EPYC); these loops, reading each
sample's rows in place, 54 ms. MKL spends most of its time per tiny product, not on the
data, and a gather writes and reads every row once more. Compiled by numba on first use and
cached on disk; parallel over samples and heads on as many threads as torch uses, serial
on one.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

# Reassociation lets the loops over Dh run in SIMD lanes; no finite-math assumptions, as
# masked scores are -inf.
_FASTMATH = {"reassoc", "contract"}


@functools.cache
def _kernels(parallel: bool) -> tuple[Callable, Callable]:
    """The two loops compiled for this host, parallel over samples and heads or serial.

    Imported here: numba takes a second to load. Serial loops never start numba's OpenMP
    team, whose threads spin while they wait for work: on two cores shared with one other
    busy process, the parallel loops on one thread made chapter 05's small run take 418 s,
    the serial ones 91 s.
    """
    import numba

    # Also what tells the two apart in numba's disk cache, which keys on closure contents.
    jobs = numba.prange if parallel else range

    @numba.njit(parallel=parallel, fastmath=_FASTMATH, cache=True)
    def times_rows_t(x, blocks, rows, length, out):
        batch, heads, queries, dim = x.shape
        for job in jobs(batch * heads):
            b, h = job // heads, job % heads
            cached = blocks[rows[b], h]
            for t in range(length):
                row = cached[t]
                for k in range(queries):
                    total = np.float32(0.0)
                    for d in range(dim):
                        total += x[b, h, k, d] * row[d]
                    out[b, h, k, t] = total

    @numba.njit(parallel=parallel, fastmath=_FASTMATH, cache=True)
    def mix_rows(weights, blocks, rows, length, out):
        batch, heads, queries, dim = out.shape
        for job in jobs(batch * heads):
            b, h = job // heads, job % heads
            cached, acc = blocks[rows[b], h], out[b, h]
            acc[:] = 0.0
            for t in range(length):
                row = cached[t]
                for k in range(queries):
                    weight = weights[b, h, k, t]
                    for d in range(dim):
                        acc[k, d] += weight * row[d]

    return times_rows_t, mix_rows


def _array(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _loops() -> tuple[Callable, Callable]:
    """The loops for as many threads as torch uses: serial on one."""
    threads = torch.get_num_threads()
    if threads == 1:
        return _kernels(parallel=False)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return _kernels(parallel=True)


def times_rows_t(x: Tensor, blocks: Tensor, rows: Tensor, length: int, out: Tensor) -> None:
    """``out[..., :length] = x @ blocks[rows, :, :length]^T``, written in place.

    Args:
        x: (B, H, K, Dh) float32 queries (or output gradients).
        blocks: (N, H, L0, Dh) float32, contiguous: one layer's cached keys (or values) of a
            whole split; L0 >= ``length``.
        rows: (B,) the batch's samples in ``blocks``.
        length: how many cached tokens each sample of the batch has (after trimming).
        out: (B, H, K, >= length) float32, contiguous; its later columns are left alone.
    """
    _loops()[0](_array(x), blocks.numpy(), rows.numpy(), length, out.numpy())


def mix_rows(weights: Tensor, blocks: Tensor, rows: Tensor, length: int) -> Tensor:
    """``weights[..., :length] @ blocks[rows, :, :length]``: (B, H, K, Dh) float32.

    Args:
        weights: (B, H, K, >= length) float32 attention weights (or score gradients).
        blocks, rows, length: as for ``times_rows_t``.
    """
    out = weights.new_empty(*weights.shape[:3], blocks.shape[3])
    _loops()[1](_array(weights), blocks.numpy(), rows.numpy(), length, out.numpy())
    return out


__all__ = ["mix_rows", "times_rows_t"]
