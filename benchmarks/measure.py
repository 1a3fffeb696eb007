"""Measuring primitives for the benchmark suite: interleaved timing, FLOPs, peak memory, profiles.

Every number the suite reports is a ratio of two things measured in the same process with
their repetitions interleaved (A, B, A, B, ...), so a neighbour's load that slows one
repetition slows the other's next one too, and the median ratio stays put while the
absolute times wander.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

Step = Callable[[], object]


def seconds(fn: Step) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Step], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, their calls taken in turn.

    Args:
        fns: name -> a zero-argument callable (one step).
        repeats: timed rounds; each round calls every function once.
        warmup: untimed rounds first (allocator, autotuning, lazy initialisation).

    Returns:
        name -> median seconds.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            elapsed = seconds(fn)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul(n: int = 2048, dtype: torch.dtype = torch.bfloat16) -> tuple[Step, float]:
    """A square ``n``^3 matrix product and its FLOPs: the machine's peak for ``dtype``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def _packed_linear_flops(x_shape: torch.Size, w_shape: torch.Size, *args: Any,
                         **kwargs: Any) -> int:
    """oneDNN's linear on a prepacked (N, K) weight: 2 N K FLOPs per input row."""
    return 2 * math.prod(x_shape) * w_shape[0]


def count_flops(fn: Step) -> int:
    """FLOPs of one call as ``torch.utils.flop_counter`` counts them.

    The counter has no formula for the CPU flash-attention kernel, so attention runs on the
    math kernel while counting: its batched matrix products are then counted, and the
    model's FLOPs do not depend on which kernel a timed run takes. Nor has it one for the
    prepacked linear layers of the cached path (``mmcore.cached_forward.PackedLinear``):
    that one is given here.
    """
    packed = {torch.ops.mkldnn._linear_pointwise: _packed_linear_flops}
    with (FlopCounterMode(display=False, custom_mapping=packed) as counter,
          sdpa_kernel(SDPBackend.MATH)):
        fn()
    return counter.get_total_flops()


def peak_memory(fn: Step) -> int:
    """Peak bytes of tensor memory allocated above the starting point during one call.

    The CPU allocator keeps no peak statistic, so this replays the profiler's memory
    record in time order: each operator's own net allocation and each free outside an
    operator, taking the running maximum. An operator's transient workspace (allocated
    and freed inside it) is not seen, so this is a lower bound, the same for both variants.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def top_ops(fn: Step, rows: int = 10) -> str:
    """torch.profiler's table of the ``rows`` operators with the most self CPU time in one call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def attention_kernels(fn: Step) -> dict[str, int]:
    """Which scaled-dot-product-attention kernels one call runs: op name -> calls."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()
            if e.key.startswith("aten::_scaled_dot_product") and not e.key.endswith("backward")}
