"""`hwsearch bench kernels`: measured speed-ups over bf16 dense at two reference shapes.

Shapes: a ViT-B MLP GEMM (197×768×3072) and an LLM decode GEMM (1×4096×4096), each in int8,
int4, fp8, 2:4 and low rank (rank = min(K, N)/4), each on the implementation the device's
dispatch runs (`kernels.dispatch`: the one measured fastest there). Numbers come from the
device's stored measurements; on the machine the device was profiled on, missing ones are
measured first.
Emulated kernels are marked native = false: their "speed-up" is not a real one.
"""

from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import LinearSpec
from hwsearch.predictors.dataset import device_dispatch
from hwsearch.profilers import store
from hwsearch.profilers.coverage import device_id as find_device
from hwsearch.profilers.limits import Limits, achieved
from hwsearch.profilers.measure import measure
from hwsearch.profilers.sampling import bench_set


def _stored(engine: Engine, dev: int, spec: LinearSpec, implementation: str) -> Measurement | None:
    with session_scope(engine) as session:
        return session.scalar(
            select(Measurement)
            .join(KernelConfig, KernelConfig.id == Measurement.kernel_id)
            .where(Measurement.device_id == dev, KernelConfig.key == store.kernel_key(spec),
                   Measurement.implementation == implementation)
        )


def run(engine: Engine, device: str, threads: int | None = None) -> dict[str, Any]:
    dev = find_device(engine, device)
    with session_scope(engine) as session:
        fp = session.get(Device, dev).fingerprint or {}
    backend = fp.get("backend", "cpu")
    local = fp.get("host") == socket.gethostname()
    rows = []
    dispatch = device_dispatch(engine, device)  # what this device runs: the implementation measured fastest
    for spec in bench_set():
        impl = dispatch.choose(spec).name
        found = _stored(engine, dev, spec, impl)
        if found is None:
            if not local:
                raise HwsearchError(
                    f"device {device!r} has no measurement of {spec.describe()}; accepted: a device profiled with "
                    f"`hwsearch profile --device {device}` (any budget), or run this on the machine itself"
                )
            fields = measure(spec.op, spec.params(), impl, threads=threads or fp.get("threads") or 1, backend=backend,
                             limits=Limits.from_dict(fp.get("limits")))
            store.write_chunk(engine, dev, None, [(spec, fields)])
            found = _stored(engine, dev, spec, impl)
        rows.append((spec, found))
    base = {(s.M, s.K, s.N): m.median_us for s, m in rows if s.format == "bf16" and s.sparsity == "dense" and s.rank is None}
    limits = Limits.from_dict(fp.get("limits"))
    return {
        "device": device,
        "limits": limits.as_dict() if limits else None,
        "rows": [
            {
                "op": spec.op,
                "shape": [spec.M, spec.K, spec.N],
                "format": spec.format,
                "sparsity": spec.sparsity,
                "rank": spec.rank,
                "native": bool(m.native),
                "implementation": m.implementation,
                "median_us": round(m.median_us, 2),
                "p10_us": round(m.p10_us, 2),
                "p90_us": round(m.p90_us, 2),
                "speedup_vs_bf16": round(base[(spec.M, spec.K, spec.N)] / m.median_us, 3),
                "achieved_gbs": round(got["gbs"], 2),
                "achieved_tflops": round(got["gflops"] / 1e3, 4),
                "rounds": m.rounds,
                "spread": None if m.spread is None else round(m.spread, 4),
                "unstable": bool(m.unstable),
                "flags": (m.environment or {}).get("flags", []),
            }
            for spec, m, got in ((s, m, achieved(s, m.median_us)) for s, m in rows)
        ],
    }
