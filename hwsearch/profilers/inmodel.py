"""Layers timed where they run: inside the compressed model, not alone.

A kernel measured alone does not cost what it costs inside a model: the layer casts its input
to the kernel's activation dtype and back, reshapes, finds its activations warm (or evicted) in
cache, and wakes the thread pool. Forward hooks on the named layers time each call in place; the
floor over several forward passes (the same statistic the profiler stores for a kernel) is the
layer's in-model latency, which `hwsearch.predictors.calibration` sets against the isolated one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class DecodeStep:
    """A decoder's inputs for one decode step at a fixed context: `inputs` (the new tokens) attend
    to `context` cached tokens.

    Each module gets its own KV caches (`module.new_caches()`, in the formats its plan chose),
    filled once with seeded random keys and values (a step costs what the cache's length and
    format make it cost, whatever the values) and entered through shallow copies on every call:
    caches append by building new tensors, so the filled ones stay as they are and every timed
    step runs at exactly `context` tokens, however many steps the harness takes.
    """

    inputs: torch.Tensor
    context: int
    seed: int = 0
    _filled: dict[int, tuple[nn.Module, list[Any]]] = field(default_factory=dict, repr=False)

    def caches(self, module: nn.Module) -> list[Any]:
        if id(module) not in self._filled:
            caches = module.new_caches()
            attention = [m for m in module.modules() if hasattr(m, "new_cache") and hasattr(m, "num_key_value_heads")]
            gen = torch.Generator().manual_seed(self.seed)
            dtype = next(module.parameters()).dtype
            for attn, cache in zip(attention, caches, strict=True):
                shape = (self.inputs.shape[0], attn.num_key_value_heads, self.context, attn.head_dim)
                if self.context:
                    cache.append(torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype))
            self._filled[id(module)] = (module, caches)  # the module kept: its id is not reused meanwhile
        return self._filled[id(module)][1]

    def run(self, module: nn.Module) -> Any:
        return module(self.inputs, [copy.copy(c) for c in self.caches(module)])


def forward(module: nn.Module, inputs: Any) -> Any:
    """One forward pass on `inputs`: a tensor, a tuple of positional inputs, a dict of keyword ones
    (a Hugging Face model's tokenised batch) or a `DecodeStep` (a decoder's step over its cache)."""
    if isinstance(inputs, DecodeStep):
        return inputs.run(module)
    if isinstance(inputs, dict):
        return module(**inputs)
    return module(*inputs) if isinstance(inputs, tuple) else module(inputs)


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
