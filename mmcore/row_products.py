"""The prompts' attention products with a batch's cached tokens, read where they lie in the
split's float32 blocks instead of gathered into a batch's own.

A cached training step attends K prompt queries to each sample's L cached keys and values
and to the prompts' own K: four products a layer (scores and mix forward, their two
gradients backward), each a (K, Dh) by (Dh, L + K) product per sample and head. Over the 12
layers of a ViT-S/14 at 224 px (batch 32, K = 6, 2 threads on an AVX2 EPYC), gathering the
rows and MKL's batched products took 224 ms; these loops, reading each sample's rows in
place, 72 ms (15 against 48 ms at 112 px). MKL spends most of its time per tiny product,
not on the data, and a gather writes and reads every row once more. Each loop keeps six
running sums (two rows by three queries) per pass over Dh, and takes the prompts' own rows
in the same call: against one sum a pass and a batched product for the prompts' rows,
84 -> 72 ms at 224 px (no gain there on one thread) and 24 -> 15 ms at 112 px.
Compiled by numba on first use and cached on disk; parallel over samples and heads on as
many threads as torch uses, serial on one.
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

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def dots(x, src, n, out, offset):  # out[k, offset + t] = x[k] . src[t], t < n
        queries, dim = x.shape
        for t in range(0, n, 2):  # a lone last row is read twice and stored once
            r0, r1 = src[t], src[min(t + 1, n - 1)]
            for k in range(0, queries, 3):  # so are the last queries of a short group
                x0, x1, x2 = x[k], x[min(k + 1, queries - 1)], x[min(k + 2, queries - 1)]
                a00 = a01 = a02 = a10 = a11 = a12 = np.float32(0.0)
                for d in range(dim):
                    a00 += x0[d] * r0[d]
                    a01 += x1[d] * r0[d]
                    a02 += x2[d] * r0[d]
                    a10 += x0[d] * r1[d]
                    a11 += x1[d] * r1[d]
                    a12 += x2[d] * r1[d]
                pair = t + 1 < n
                out[k, offset + t] = a00
                if pair:
                    out[k, offset + t + 1] = a10
                if k + 1 < queries:
                    out[k + 1, offset + t] = a01
                    if pair:
                        out[k + 1, offset + t + 1] = a11
                if k + 2 < queries:
                    out[k + 2, offset + t] = a02
                    if pair:
                        out[k + 2, offset + t + 1] = a12

    @numba.njit(fastmath=_FASTMATH, cache=True)
    def weigh(w, src, n, out, offset):  # out[k] += sum over t < n of w[k, offset + t] src[t]
        queries, dim = out.shape
        whole = queries - queries % 3
        for k in range(0, whole, 3):
            o0, o1, o2 = out[k], out[k + 1], out[k + 2]
            for t in range(0, n, 2):
                t1 = min(t + 1, n - 1)
                r0, r1 = src[t], src[t1]
                second = np.float32(t + 1 < n)  # a lone last row counts once
                w00, w01 = w[k, offset + t], w[k, offset + t1] * second
                w10, w11 = w[k + 1, offset + t], w[k + 1, offset + t1] * second
                w20, w21 = w[k + 2, offset + t], w[k + 2, offset + t1] * second
                for d in range(dim):
                    o0[d] += w00 * r0[d] + w01 * r1[d]
                    o1[d] += w10 * r0[d] + w11 * r1[d]
                    o2[d] += w20 * r0[d] + w21 * r1[d]
        # the last queries one at a time: a group that repeated a row of out would alias it
        # (a draft that did so summed wrong at K = 4, and ran 2.8x slower than one sum a pass)
        for k in range(whole, queries):
            o0 = out[k]
            for t in range(n):
                weight, r0 = w[k, offset + t], src[t]
                for d in range(dim):
                    o0[d] += weight * r0[d]

    @numba.njit(parallel=parallel, fastmath=_FASTMATH, cache=True)
    def times_rows_t(x, blocks, rows, length, own, out):
        batch, heads = x.shape[:2]
        for job in jobs(batch * heads):
            b, h = job // heads, job % heads
            dots(x[b, h], blocks[rows[b], h], length, out[b, h], 0)
            dots(x[b, h], own[b, h], own.shape[2], out[b, h], length)

    @numba.njit(parallel=parallel, fastmath=_FASTMATH, cache=True)
    def mix_rows(weights, blocks, rows, length, own, out):
        batch, heads = out.shape[:2]
        for job in jobs(batch * heads):
            b, h = job // heads, job % heads
            out[b, h] = 0.0
            weigh(weights[b, h], blocks[rows[b], h], length, out[b, h], 0)
            weigh(weights[b, h], own[b, h], own.shape[2], out[b, h], length)

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


def times_rows_t(x: Tensor, blocks: Tensor, rows: Tensor, length: int, own: Tensor) -> Tensor:
    """``x @ [blocks[rows, :, :length]; own]^T``: (B, H, K, length + K') float32.

    Args:
        x: (B, H, K, Dh) float32 queries (or output gradients).
        blocks: (N, H, L0, Dh) float32, contiguous: one layer's cached keys (or values) of a
            whole split; L0 >= ``length``.
        rows: (B,) the batch's samples in ``blocks``.
        length: how many cached tokens each sample of the batch has (after trimming).
        own: (B, H, K', Dh) the prompts' own keys (or values), after the cached ones.
    """
    out = x.new_empty(*x.shape[:3], length + own.shape[2])
    _loops()[0](_array(x), blocks.numpy(), rows.numpy(), length, _array(own), out.numpy())
    return out


def mix_rows(weights: Tensor, blocks: Tensor, rows: Tensor, length: int, own: Tensor) -> Tensor:
    """``weights @ [blocks[rows, :, :length]; own]``: (B, H, K, Dh) float32.

    Args:
        weights: (B, H, K, length + K') float32 attention weights (or score gradients).
        blocks, rows, length, own: as for ``times_rows_t``.
    """
    out = weights.new_empty(*weights.shape[:3], blocks.shape[3])
    _loops()[1](_array(weights), blocks.numpy(), rows.numpy(), length, _array(own),
                out.numpy())
    return out


__all__ = ["mix_rows", "times_rows_t"]
