"""The machine's physical limits, and every measurement checked against them.

Once per profile a STREAM-like probe reads buffers of growing size (the read rate falls from the
cache's to memory's as the buffer outgrows the cache) and large GEMMs give the peak FLOP/s each
format reaches. Both go into the device's fingerprint (`limits`). A kernel timed faster than the
memory can feed it was served from cache: its weight copies did not span enough memory. The
probe also says how much memory that takes (`cold_bytes`: the smallest buffer read at memory
speed), which sizes the weight rotation, rather than the last-level cache size the OS reports
(a VM may report 32 MiB while its host's cache holds twice that and more).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hwsearch.kernels import registry
from hwsearch.kernels.inputs import make_inputs
from hwsearch.kernels.specs import LinearSpec, OpSpec
from hwsearch.kernels.traffic import bytes_moved
from hwsearch.profilers.timing import Protocol, time_items

PROBE_MB: tuple[int, ...] = (4, 16, 64, 128, 256, 512)
# A read rate within this factor of memory's counts as "from memory" (sizes the rotation).
COLD_FACTOR = 1.25
# A kernel beating memory (or the cache) by more than this was served from somewhere faster.
BANDWIDTH_TOLERANCE = 1.3
COMPUTE_TOLERANCE = 1.5  # peak probes are one GEMM shape: a tuned shape may beat them a little
PEAK_SHAPE = (512, 2048, 2048)
PEAK_FORMATS = ("fp32", "bf16", "fp16", "int8", "int4")
PROBE_PROTOCOL = Protocol(rounds=3, min_blocks=3, max_blocks=10, round_seconds=0.05)


@dataclass(frozen=True)
class Limits:
    """Measured limits of a device: memory and cache read rates (GB/s), cold span, peaks (GFLOP/s)."""

    memory_gbs: float
    cache_gbs: float
    cold_bytes: int
    peak_gflops: dict[str, float] = field(default_factory=dict)
    curve: tuple[tuple[int, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["curve"] = [list(p) for p in self.curve]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> Limits | None:
        if not doc or "memory_gbs" not in doc:
            return None
        return cls(float(doc["memory_gbs"]), float(doc["cache_gbs"]), int(doc["cold_bytes"]),
                   {k: float(v) for k, v in (doc.get("peak_gflops") or {}).items()},
                   tuple((int(b), float(g)) for b, g in doc.get("curve", ())))

    def peak(self, fmt: str) -> float | None:
        return self.peak_gflops.get(fmt)


def read_curve(threads: int, sizes_mb: tuple[int, ...] = PROBE_MB, device: str = "cpu") -> list[tuple[int, float]]:
    """(bytes, GB/s) of reading fp32 buffers of each size (a sum: one read per element)."""
    buffers = [torch.ones(mb * (1 << 20) // 4, device=device) for mb in sizes_mb]
    timings = time_items([[lambda b=b: b.sum()] for b in buffers], threads=threads, device=device,
                         protocol=PROBE_PROTOCOL)
    return [(b.numel() * 4, b.numel() * 4 / (t.median_us * 1e-6) / 1e9) for b, t in zip(buffers, timings, strict=True)]


def limits_from_curve(curve: list[tuple[int, float]], peaks: dict[str, float] | None = None) -> Limits:
    """Memory rate = the largest buffer's; cold span = the smallest buffer read near that rate."""
    curve = sorted(curve)
    memory = curve[-1][1]
    cold = next((b for b, g in curve if g <= COLD_FACTOR * memory), curve[-1][0])
    return Limits(memory_gbs=memory, cache_gbs=max(g for _, g in curve), cold_bytes=int(cold),
                  peak_gflops=dict(peaks or {}), curve=tuple(curve))


def peak_flops(threads: int, backend: str = "cpu", shape: tuple[int, int, int] = PEAK_SHAPE) -> dict[str, float]:
    """Best GFLOP/s of each natively supported format's implementations on one large GEMM."""
    device = registry.torch_device(backend)
    peaks: dict[str, float] = {}
    caps = registry.capabilities(backend)
    with torch.inference_mode():
        for fmt in PEAK_FORMATS:
            if not caps.get(fmt):  # an emulated format has no peak worth checking against
                continue
            spec = LinearSpec(*shape, fmt, 128 if fmt == "int4" else None)
            try:
                kernels = registry.implementations(spec, backend)
            except Exception:  # noqa: BLE001 - a format this backend has no kernel for has no peak
                continue
            items = []
            for kernel in kernels:
                params, acts = make_inputs(spec, seed=0, device=device)
                state = kernel.prepare(spec, params)
                items.append([lambda k=kernel, sp=spec, s=state, a=acts: k.run(sp, s, *a)])
            if not items:
                continue
            timings = time_items(items, threads=threads, device=device, protocol=PROBE_PROTOCOL)
            peaks[fmt] = max(spec.flops / (t.median_us * 1e-6) / 1e9 for t in timings)
    return peaks


def probe(threads: int, backend: str = "cpu") -> Limits:
    """Measure this machine's limits (a few seconds)."""
    device = registry.torch_device(backend)
    sizes = PROBE_MB if device != "cuda" else tuple(mb * 4 for mb in PROBE_MB)
    return limits_from_curve(read_curve(threads, sizes, device), peak_flops(threads, backend))


def achieved(spec: OpSpec, median_us: float) -> dict[str, float]:
    """GB/s and GFLOP/s a kernel reached at `median_us` (from the bytes it must move at least)."""
    seconds = max(median_us, 1e-9) * 1e-6
    return {"gbs": bytes_moved(spec)["total"] / seconds / 1e9, "gflops": spec.flops / seconds / 1e9}


def beyond(spec: OpSpec, median_us: float, limits: Limits, span_bytes: int) -> str | None:
    """Which limit the measurement breaks ("bandwidth" or "compute"), if any.

    A kernel whose copies span at least the cold size must be fed from memory; one whose copies
    cannot (too small to fill it) may run from cache, but not faster than the cache reads.
    """
    got = achieved(spec, median_us)
    ceiling = limits.memory_gbs if span_bytes >= limits.cold_bytes else limits.cache_gbs
    if got["gbs"] > BANDWIDTH_TOLERANCE * ceiling:
        return "bandwidth"
    peak = limits.peak(spec.format) if isinstance(spec, LinearSpec) else None
    if peak and spec.flops >= 1e8 and got["gflops"] > COMPUTE_TOLERANCE * peak:
        return "compute"
    return None


def copies_for(state_bytes: int, cold_bytes: int, max_copies: int = 64, memory_cap: int = 1 << 30) -> int:
    """How many weight copies to rotate so the copies together span `cold_bytes` (when they fit)."""
    if state_bytes <= 0:
        return 1
    wanted = math.ceil(cold_bytes / state_bytes)
    fits = max(1, memory_cap // state_bytes)
    return int(max(1, min(wanted, max_copies, fits)))
