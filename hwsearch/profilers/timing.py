"""The timing harness: warm up, time ≥ 20 repeats, report the median and the spread.

Two things make CPU kernel timings lie, and both are handled here:
- the thread pool: the caller sets the thread count explicitly (`threads`), every task, because
  Ray reuses worker processes and torch keeps whatever the last task set;
- the cache: a decode-size weight timed in a loop is served from the last-level cache, which a
  real model (many layers, each touched once per token) never sees. The caller passes several
  copies of the kernel, each with its own weights, and the harness rotates through them.
CUDA timings use CUDA events around each call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

MIN_REPEATS = 20


@dataclass(frozen=True)
class Timing:
    """Per-call latency statistics in microseconds."""

    median_us: float
    p10_us: float
    p90_us: float
    mean_us: float
    cov: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_us: Sequence[float]) -> Timing:
    arr = np.asarray(samples_us, dtype=float)
    mean = float(arr.mean())
    return Timing(
        median_us=float(np.median(arr)),
        p10_us=float(np.percentile(arr, 10)),
        p90_us=float(np.percentile(arr, 90)),
        mean_us=mean,
        cov=float(arr.std() / mean) if mean > 0 else 0.0,
        repeats=int(arr.size),
    )


def time_calls(
    calls: Sequence[Callable[[], object]],
    *,
    repeats: int = MIN_REPEATS,
    warmup: int = 3,
    min_seconds: float = 0.05,
    max_seconds: float = 2.0,
    threads: int | None = None,
    device: str = "cpu",
) -> Timing:
    """Time calls (rotating through the copies) and summarise per-call latency.

    At least `repeats` timed calls; more for fast kernels until `min_seconds` of samples are
    gathered, and no more once `max_seconds` is spent (never fewer than `repeats`).
    """
    if not calls:
        raise ValueError("time_calls needs at least one callable")
    repeats = max(repeats, MIN_REPEATS)
    if threads is not None:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        return _time_cuda(calls, repeats=repeats, warmup=warmup, min_seconds=min_seconds, max_seconds=max_seconds)
    for i in range(max(warmup, 1) * len(calls)):
        calls[i % len(calls)]()
    samples: list[float] = []
    started = time.perf_counter()
    i = 0
    while True:
        fn = calls[i % len(calls)]
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
        i += 1
        spent = time.perf_counter() - started
        if i >= repeats and (spent >= min_seconds or spent >= max_seconds):
            break
        if i >= 100_000:
            break
    return summarize(samples)


def _time_cuda(
    calls: Sequence[Callable[[], object]], *, repeats: int, warmup: int, min_seconds: float, max_seconds: float
) -> Timing:
    for i in range(max(warmup, 1) * len(calls)):
        calls[i % len(calls)]()
    torch.cuda.synchronize()
    samples: list[float] = []
    started = time.perf_counter()
    i = 0
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls[i % len(calls)]()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1e3)
        i += 1
        spent = time.perf_counter() - started
        if i >= repeats and (spent >= min_seconds or spent >= max_seconds):
            break
    return summarize(samples)


def rotation_copies(weight_bytes: int, cache_bytes: int, max_copies: int = 8, memory_cap: int = 2 << 30) -> int:
    """How many weight copies to rotate so each call finds its weights out of cache."""
    if weight_bytes <= 0:
        return 1
    wanted = -(-2 * cache_bytes // weight_bytes)  # the copies together span twice the cache
    fits = max(1, memory_cap // weight_bytes)
    return int(max(1, min(wanted, max_copies, fits)))
