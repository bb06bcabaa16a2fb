"""Measure one kernel: build it with rotated weight copies and time it.

`measure` takes plain data (op name, params, implementation name) so the same function runs in
this process or in a Ray worker on another machine, and returns a plain dict ready to store.
"""

from __future__ import annotations

from typing import Any

import torch

from hwsearch.kernels import registry
from hwsearch.kernels.inputs import make_inputs
from hwsearch.kernels.specs import OpSpec, spec_from_params
from hwsearch.profilers.fingerprint import cache_bytes
from hwsearch.profilers.timing import rotation_copies, time_calls

MAX_COPIES = 8


def state_bytes(state: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def measure(
    op: str,
    params: dict[str, Any],
    implementation: str,
    *,
    threads: int,
    backend: str = "cpu",
    seed: int = 0,
    repeats: int = 20,
) -> dict[str, Any]:
    """Time `implementation` on the kernel (op, params); returns the measurement's fields."""
    torch.set_num_threads(threads)
    spec: OpSpec = spec_from_params(op, params)
    kernel = registry.get(implementation)
    device = "cuda" if backend == "cuda" else "cpu"
    with torch.inference_mode():
        p, acts = make_inputs(spec, seed=seed, device=device)
        state = kernel.prepare(spec, p)
        copies = rotation_copies(state_bytes(state), cache_bytes(), MAX_COPIES)
        calls = [lambda s=state, a=acts: kernel.run(spec, s, *a)]
        for i in range(1, copies):
            p_i, acts_i = make_inputs(spec, seed=seed + i, device=device)
            s_i = kernel.prepare(spec, p_i)
            calls.append(lambda s=s_i, a=acts_i: kernel.run(spec, s, *a))
        timing = time_calls(calls, repeats=repeats, threads=threads, device=device)
    environment: dict[str, Any] = {"torch": torch.__version__, "copies": copies, "seed": seed}
    config = kernel.describe_config(spec)
    if config:
        environment["config"] = config
    return {
        "implementation": kernel.name,
        "backend": backend,
        "native": bool(kernel.native(spec, registry.capabilities(backend))),
        "threads": threads,
        "environment": environment,
        **timing.as_dict(),
    }
