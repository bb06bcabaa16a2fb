"""Launching one Triton kernel on either a GPU (autotuned) or CPU tensors (the interpreter).

Why both: CI has no GPU, yet every Triton kernel must be checked there against the fp64
reference. `triton.jit` decides between compiling and interpreting once, at decoration time, from
`TRITON_INTERPRET`; that makes correctness depend on import order. Instead each kernel body is a
plain function and a `Launcher` wraps it twice: `triton.autotune(triton.jit(fn))` for CUDA
tensors and the interpreter for anything else (or for everything when `TRITON_INTERPRET=1`).
The config that ran is returned so the profiler can store it next to the measurement.

Kernel bodies use only `triton.language` builtins (`tl.full`, not `tl.zeros`): the standard-library
helpers are themselves `@triton.jit` functions, fixed as compiled or interpreted when triton is
imported, and a compiled one cannot be called from an interpreted kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import triton
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction

Grid = Callable[[dict[str, Any]], tuple[int, ...]]
Launched = triton.Config | dict[str, int]  # the autotuner's pick, or the interpreter's fixed config

# What a recorded config holds besides the kernel's own block sizes.
LAUNCH_KEYS = ("num_warps", "num_stages")


def config(num_warps: int = 4, num_stages: int = 3, **blocks: int) -> triton.Config:
    return triton.Config(dict(blocks), num_warps=num_warps, num_stages=num_stages)


def interpreting(device: torch.device) -> bool:
    """Whether a launch on `device` runs in Triton's interpreter rather than compiled."""
    return device.type != "cuda" or bool(knobs.runtime.interpret)


def dot_in_fp32(x: torch.Tensor) -> bool:
    """Whether a kernel must do its bf16 `tl.dot` on fp32 operands (rounded to bf16 first).

    Triton 3.9's interpreter multiplies the raw bf16 bit patterns in numpy (which has no
    bfloat16), giving garbage; compiled kernels use the bf16 tensor-core dot.
    """
    return x.dtype == torch.bfloat16 and interpreting(x.device)


class Launcher:
    """One kernel body, compiled+autotuned for CUDA tensors and interpreted for CPU tensors."""

    def __init__(
        self,
        fn: Callable[..., None],
        configs: Sequence[triton.Config],
        key: Sequence[str],
        interpreter_config: dict[str, int],
        prune: Callable[[list[triton.Config], dict[str, Any]], list[triton.Config]] | None = None,
    ):
        self.fn = fn
        self.configs = list(configs)
        self.key = list(key)
        self.interpreter_config = dict(interpreter_config)
        self.prune = prune

    @functools.cached_property
    def compiled(self) -> Any:
        prune_by = None
        if self.prune is not None:
            prune = self.prune
            prune_by = {"early_config_prune": lambda configs, named_args, **kw: prune(configs, {**named_args, **kw})}
        return triton.autotune(configs=self.configs, key=self.key, prune_configs_by=prune_by)(triton.jit(self.fn))

    @functools.cached_property
    def interpreted(self) -> InterpretedFunction:
        return InterpretedFunction(self.fn)

    def __call__(
        self,
        grid: Grid,
        device: torch.device,
        *args: Any,
        _interpreter_overrides: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> Launched:
        """Launch; returns what ran, kept raw (the hot path) — `describe` turns it into a dict."""
        if interpreting(device):
            fixed = {**self.interpreter_config, **(_interpreter_overrides or {})}
            meta = {**kwargs, **fixed}
            self.interpreted[grid(meta)](*args, **meta)
            return fixed
        kernel = self.compiled
        kernel[grid](*args, **kwargs)
        return kernel.best_config

    def describe(self, launched: Launched) -> dict[str, Any]:
        """The config that ran: block sizes, warps and stages, and how it was chosen."""
        if isinstance(launched, dict):
            return {**launched, "interpreted": True}
        described: dict[str, Any] = dict(launched.kwargs)
        described.update({k: getattr(launched, k) for k in LAUNCH_KEYS})
        described.update(interpreted=False, autotuned_from=len(self.configs))
        return described
