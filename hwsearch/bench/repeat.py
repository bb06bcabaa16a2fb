"""`hwsearch bench repeat`: do a device's stored measurements hold when taken again?

Re-times a random sample of the device's stored kernels now, on its own machine, with the stored
implementation and thread count and the profiler's own protocol (groups timed in interleaved
rounds, the floor statistic, the machine's limits), and compares with what was stored. This is
the noise floor: no predictor can be expected to land closer to a measurement than that.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.profilers import machine
from hwsearch.profilers.coverage import device_id, local_fingerprint
from hwsearch.profilers.limits import Limits
from hwsearch.profilers.measure import measure_many
from hwsearch.profilers.noise import agreement
from hwsearch.profilers.runner import CHUNK

REFERENCES = (
    "torch.utils.benchmark adaptive_autorange: stops when IQR/median < 0.1 (pytorch.org/docs, torch.utils.benchmark)",
    "pyperf: flags results whose stdev >= 10 % of the mean, or raw values under 1 ms (pyperf.readthedocs.io, 'Analyze benchmark results')",
    "Google Benchmark random interleaving: about 40 % less run-to-run variance (github.com/google/benchmark, docs/random_interleaving.md)",
)


def run(engine: Engine, device: str, sample: int = 100, seed: int = 0,
        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Re-time `sample` stored kernels of `device` now and compare with the stored values."""
    if sample < 1:
        raise HwsearchError(f"--sample {sample} is out of range; accepted: 1 or more")
    fp = local_fingerprint(engine, device, "hwsearch bench repeat")
    dev = device_id(engine, device)
    with session_scope(engine) as session:
        rows = session.execute(
            select(KernelConfig.op, KernelConfig.params, Measurement.implementation, Measurement.threads,
                   Measurement.median_us, Measurement.unstable, Measurement.rounds)
            .join(KernelConfig, KernelConfig.id == Measurement.kernel_id)
            .where(Measurement.device_id == dev)
            .order_by(Measurement.id)
        ).all()
    if not rows:
        raise HwsearchError(f"device {device!r} has no measurements; profile it first: `hwsearch profile --local --name {device}`")
    picked = random.Random(seed).sample(list(rows), min(sample, len(rows)))
    backend = fp.get("backend", "cpu")
    limits = Limits.from_dict(fp.get("limits"))
    monitor = machine.LoadMonitor()
    before = monitor.idle_share()
    monitor.start()
    by_threads: dict[int, list[int]] = {}
    for i, r in enumerate(picked):
        by_threads.setdefault(int(r.threads or fp.get("threads") or 1), []).append(i)
    results: dict[int, dict[str, Any]] = {}
    for threads, idx in by_threads.items():
        for start in range(0, len(idx), CHUNK):
            group = idx[start : start + CHUNK]
            fields = measure_many([(picked[i].op, dict(picked[i].params), picked[i].implementation) for i in group],
                                  threads=threads, backend=backend, seed=seed + 1, limits=limits)
            results.update(zip(group, fields, strict=True))
            monitor.sample()
            if progress:
                progress(len(results), len(picked))
    now: list[dict[str, Any]] = []
    for i, r in enumerate(picked):
        f = results[i]
        now.append({"op": r.op, "params": dict(r.params), "implementation": r.implementation,
                    "stored_us": r.median_us, "now_us": f["median_us"], "ratio": f["median_us"] / r.median_us,
                    "stored_unstable": bool(r.unstable), "now_unstable": bool(f["unstable"]), "legacy": not r.rounds})
    stats = agreement([r["stored_us"] for r in now], [r["now_us"] for r in now])
    ops: dict[str, list[dict[str, Any]]] = {}
    for r in now:
        ops.setdefault(r["op"], []).append(r)
    return {
        "device": device,
        **stats,
        "unstable": sum(r["stored_unstable"] for r in now),
        "unstable_now": sum(r["now_unstable"] for r in now),
        "legacy": sum(r["legacy"] for r in now),
        "stable_only": agreement([r["stored_us"] for r in now if not r["stored_unstable"]],
                                 [r["now_us"] for r in now if not r["stored_unstable"]]),
        "per_op": {op: agreement([r["stored_us"] for r in rs], [r["now_us"] for r in rs]) for op, rs in sorted(ops.items())},
        "machine": {"other_share_before": before, "other_share_peak": monitor.peak, **machine.snapshot()},
        "statistic": "floor: the fastest 1 ms block of >= 3 interleaved rounds, confirmed by a second round within 5 %",
        "references": list(REFERENCES),
        "rows": now,
    }
