"""Measure kernels: build each with rotated weight copies, time them together, check the result.

`measure_many` takes plain data (op name, params, implementation name) so the same function runs
in this process or in a Ray worker on another machine, and returns plain dicts ready to store.
The kernels of one call are built once (prepared weights, rotated copies) and timed together in
interleaved rounds (see `timing`). They are not rebuilt per round: on a VM, freeing hundreds of
MB wakes kernel work (free-page reporting, zeroing) that takes a vCPU for up to a second and
halves a 2-thread kernel's speed in that time (seen on this project's 2-core VM: 3–6 of 40
half-second windows at half speed while buffers were allocated and freed, 0–1 of 60 without).
Each result is checked against the machine's limits, and one that beats memory bandwidth is
re-measured colder (four times the copies) and flagged when that does not help.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hwsearch.kernels import registry
from hwsearch.kernels.inputs import make_inputs
from hwsearch.kernels.registry import Kernel
from hwsearch.kernels.specs import OpSpec, spec_from_params
from hwsearch.kernels.traffic import bytes_moved
from hwsearch.profilers import machine
from hwsearch.profilers.fingerprint import cache_bytes
from hwsearch.profilers.limits import Limits, achieved, beyond, copies_for
from hwsearch.profilers.timing import Protocol, Timing, time_items

# Without a probe, rotate copies spanning this many times the reported last-level cache.
COLD_LLC_FACTOR = 4
COLDER = 4  # a kernel that beat memory is re-measured with this many times the copies

Task = tuple[str, dict[str, Any], str]  # (op, params, implementation)


def state_bytes(state: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))


def _opaque(state: dict[str, Any]) -> bool:
    """Whether the state holds objects that are not tensors (fbgemm's packed weights)."""
    return any(not isinstance(v, torch.Tensor) and v is not None for v in state.values())


def _clone(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a state of tensors in new memory."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}


@dataclass
class Built:
    spec: OpSpec
    kernel: Kernel
    calls: list[Callable[[], object]]
    copies: int
    span_bytes: int


def build(spec: OpSpec, kernel: Kernel, copies: int | None, cold_bytes: int, device: str, seed: int) -> Built:
    """The kernel with `copies` copies of its state and inputs (sized to span `cold_bytes` when None).

    Copies are clones of one prepared state (new memory, same values); a state holding opaque
    objects (fbgemm's packed weights) is prepared again per copy from the same parameters (drawing
    new random weights for each copy took 8 % of `profile --for`'s time).
    """
    params, acts = make_inputs(spec, seed=seed, device=device)
    state = kernel.prepare(spec, params)
    opaque = _opaque(state)
    weights = int(bytes_moved(spec)["weights"]) if opaque else state_bytes(state)
    size = weights + sum(a.numel() * a.element_size() for a in acts)
    n = copies or copies_for(size, cold_bytes)
    calls: list[Callable[[], object]] = [lambda s=state, a=acts: kernel.run(spec, s, *a)]
    for _ in range(n - 1):
        s_i = kernel.prepare(spec, params) if opaque else _clone(state)
        a_i = tuple(a.clone() for a in acts)
        calls.append(lambda s=s_i, a=a_i: kernel.run(spec, s, *a))
    return Built(spec, kernel, calls, n, n * size)


def _fields(b: Built, timing: Timing, backend: str, threads: int, seed: int, flags: list[str]) -> dict[str, Any]:
    environment: dict[str, Any] = {"torch": torch.__version__, "copies": b.copies, "span_bytes": b.span_bytes,
                                   "seed": seed, **timing.details()}
    got = achieved(b.spec, timing.median_us)
    environment["achieved"] = {"gbs": round(got["gbs"], 3), "gflops": round(got["gflops"], 3)}
    if flags:
        environment["flags"] = flags
    config = b.kernel.describe_config(b.spec)
    if config:
        environment["config"] = config
    return {
        "implementation": b.kernel.name,
        "backend": backend,
        "native": bool(b.kernel.native(b.spec, registry.capabilities(backend))),
        "threads": threads,
        "environment": environment,
        **timing.fields(),
    }


def measure_many(
    tasks: Sequence[Task],
    *,
    threads: int,
    backend: str = "cpu",
    seed: int = 0,
    limits: Limits | None = None,
    protocol: Protocol = Protocol(),
) -> list[dict[str, Any]]:
    """Build every task once, then time them together in interleaved rounds; fields in task order."""
    torch.set_num_threads(threads)
    device = registry.torch_device(backend)
    cold = limits.cold_bytes if limits else COLD_LLC_FACTOR * cache_bytes()
    with torch.inference_mode():
        built = [build(spec_from_params(op, params), registry.get(impl), None, cold, device, seed)
                 for op, params, impl in tasks]
        machine.settle()  # building freed and touched memory: let the kernel's work on it finish
        timings = time_items([b.calls for b in built], threads=threads, device=device, protocol=protocol, seed=seed)
        flags: list[list[str]] = [[] for _ in built]
        if limits is not None:
            over = [i for i, (b, t) in enumerate(zip(built, timings, strict=True))
                    if beyond(b.spec, t.median_us, limits, b.span_bytes)]
            if over:
                for i in over:  # colder: the rotation spans COLDER times as much memory
                    b = built[i]
                    built[i] = build(b.spec, b.kernel, b.copies * COLDER, cold, device, seed)
                machine.settle()
                again = time_items([built[i].calls for i in over], threads=threads, device=device,
                                   protocol=protocol, seed=seed + 1)
                for i, t in zip(over, again, strict=True):
                    timings[i] = t
                    broken = beyond(built[i].spec, t.median_us, limits, built[i].span_bytes)
                    flags[i] = ["recooled"] + ([f"beyond_{broken}"] if broken else [])
    return [_fields(b, t, backend, threads, seed, f) for b, t, f in zip(built, timings, flags, strict=True)]


def measure(op: str, params: dict[str, Any], implementation: str, *, threads: int, backend: str = "cpu",
            seed: int = 0, limits: Limits | None = None) -> dict[str, Any]:
    """One kernel under the same protocol (its rounds run back to back)."""
    return measure_many([(op, params, implementation)], threads=threads, backend=backend, seed=seed, limits=limits)[0]
