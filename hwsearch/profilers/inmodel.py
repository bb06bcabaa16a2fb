"""Layers timed where they run: inside the compressed model, not alone.

A kernel measured alone does not cost what it costs inside a model: the layer casts its input
to the kernel's activation dtype and back, reshapes, finds its activations warm (or evicted) in
cache, and wakes the thread pool. Forward hooks on the named layers time each call in place; the
floor over several forward passes (the same statistic the profiler stores for a kernel) is the
layer's in-model latency, which `hwsearch.predictors.calibration` sets against the isolated one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hwsearch.kernels.apply import forward


def layer_times(module: nn.Module, args: Any, names: Sequence[str], threads: int | None = None,
                passes: int = 15, warmup: int = 3) -> dict[str, float]:
    """Floor (ms) over `passes` forward passes (on `args`, as `forward` takes them) of each named
    submodule's call, timed in place.

    A layer called several times in one pass is timed per call (the floor is per call).
    """
    from hwsearch.profilers.timing import steady_allocator

    steady_allocator()  # the allocator state the end-to-end timings see
    if threads is not None:
        torch.set_num_threads(threads)
    modules = dict(module.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        from hwsearch.errors import HwsearchError

        raise HwsearchError(f"no submodule {missing[0]!r} to time in {type(module).__name__}; accepted: its module names")
    best = {n: float("inf") for n in names}
    started: dict[str, int] = {}
    handles = []
    for name in names:
        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            started[name] = time.perf_counter_ns()

        def post(_m: nn.Module, _a: Any, _o: Any, name: str = name) -> None:
            ms = (time.perf_counter_ns() - started[name]) / 1e6
            if ms < best[name]:
                best[name] = ms

        handles += [modules[name].register_forward_pre_hook(pre), modules[name].register_forward_hook(post)]
    try:
        with torch.inference_mode():
            for i in range(warmup + passes):
                if i == warmup:
                    best.update(dict.fromkeys(names, float("inf")))
                forward(module, args)
    finally:
        for h in handles:
            h.remove()
    return best
