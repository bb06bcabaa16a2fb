"""`hwsearch bench kernels`: measured speed-ups over bf16 dense at two reference shapes.

Shapes: a ViT-B MLP GEMM (197×768×3072) and an LLM decode GEMM (1×4096×4096), each in int8,
int4, fp8, 2:4 and low rank (rank = min(K, N)/4), each on the implementation the device's
dispatch runs (`kernels.dispatch`: the one measured fastest there; on the machine itself every
implementation at these shapes is measured first, so that is the fastest at the shape); and Llama-3-8B decode
attention (32 heads, 8 kv heads, head dim 128) over a KV cache of 512, 2048 and 8192 tokens in
bf16, int8 and int4, each quantised cache on every implementation (the fused one reading the
codes and the emulated dequantise-then-SDPA), against bf16 SDPA at the same context. Numbers
come from the device's stored measurements; on the machine the device was profiled on, missing
ones are measured first, and then every shape's rows are timed again together with their bf16
baseline in interleaved rounds (`measure_many`): on a machine whose speed drifts from minute to
minute (a shared VM), only a ratio timed side by side is a speed-up; measurements taken apart
are not. The stored figure is kept beside it (`stored_us`).
Emulated kernels are marked native = false: their "speed-up" is not a real one.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.specs import AttentionSpec, LinearSpec, OpSpec
from hwsearch.predictors.dataset import device_dispatch
from hwsearch.profilers import store
from hwsearch.profilers.coverage import device_id as find_device
from hwsearch.profilers.limits import Limits, achieved
from hwsearch.profilers.measure import measure, measure_many
from hwsearch.profilers.sampling import bench_set


def _stored(engine: Engine, dev: int, spec: OpSpec, implementation: str) -> Measurement | None:
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
    seen: dict[tuple[OpSpec, str], Measurement] = {}

    def stored(spec: OpSpec, impl: str) -> Measurement:
        if (spec, impl) in seen:
            return seen[spec, impl]
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
        seen[spec, impl] = found  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    if local:  # every implementation at these shapes, so each row runs the one measured fastest here
        for spec in bench_set():
            for kernel in registry.implementations(spec, backend):
                stored(spec, kernel.name)
    dispatch = device_dispatch(engine, device)  # what this device runs: the implementation measured fastest
    rows = [(spec, stored(spec, impl)) for spec in bench_set() for impl in _implementations(spec, dispatch, backend)]
    limits = Limits.from_dict(fp.get("limits"))
    timed = _side_by_side(rows, threads or fp.get("threads") or 1, backend, limits) if local else {}
    base = {tuple(_shape(s)): timed.get((s, m.implementation), m).median_us for s, m in rows if _baseline(s)}
    return {
        "device": device,
        "limits": limits.as_dict() if limits else None,
        "rows": [
            {
                "op": spec.op,
                "shape": _shape(spec),
                "format": spec.format if isinstance(spec, LinearSpec) else spec.kv_store,  # type: ignore[attr-defined]
                "sparsity": getattr(spec, "sparsity", "dense"),
                "rank": getattr(spec, "rank", None),
                "native": bool(m.native),
                "implementation": m.implementation,
                "timed": "side by side" if (spec, m.implementation) in timed else "stored",
                "median_us": round(t.median_us, 2),
                "stored_us": round(m.median_us, 2),
                "p10_us": round(t.p10_us, 2),
                "p90_us": round(t.p90_us, 2),
                "speedup_vs_bf16": round(base[tuple(_shape(spec))] / t.median_us, 3),
                "achieved_gbs": round(got["gbs"], 2),
                "achieved_tflops": round(got["gflops"] / 1e3, 4),
                "rounds": t.rounds,
                "spread": None if t.spread is None else round(t.spread, 4),
                "unstable": bool(t.unstable),
                "flags": (m.environment or {}).get("flags", []),
            }
            for spec, m, t, got in ((s, m, t, achieved(s, t.median_us))
                                    for s, m in rows for t in [timed.get((s, m.implementation), m)])
        ],
    }


def _side_by_side(rows: list[tuple[OpSpec, Any]], threads: int, backend: str, limits: Limits | None) -> dict[tuple[OpSpec, str], Any]:
    """Every shape's rows (its bf16 baseline first) timed together in interleaved rounds, here and now."""
    from hwsearch.profilers.progress import progress_bar

    shapes: dict[tuple[int, ...], list[tuple[OpSpec, str]]] = {}
    for spec, m in sorted(rows, key=lambda r: not _baseline(r[0])):
        shapes.setdefault(tuple(_shape(spec)), []).append((spec, m.implementation))
    out: dict[tuple[OpSpec, str], Any] = {}
    with progress_bar(True) as bar:
        task = bar.add_task("timing each shape's kernels side by side", total=len(shapes))
        for group in shapes.values():
            fields = measure_many([(spec.op, spec.params(), impl) for spec, impl in group], threads=threads,
                                  backend=backend, limits=limits)
            out.update({key: SimpleNamespace(**f) for key, f in zip(group, fields, strict=True)})
            bar.advance(task)
    return out


def _implementations(spec: OpSpec, dispatch: object, backend: str) -> list[str]:
    """The dispatched implementation; for a quantised KV cache every one (fused and emulated side by side)."""
    first = dispatch.choose(spec).name  # type: ignore[attr-defined]
    if not isinstance(spec, AttentionSpec) or spec.kv_format is None:
        return [first]
    return [first, *(k.name for k in registry.implementations(spec, backend) if k.name != first)]


def _shape(spec: OpSpec) -> list[int]:
    """A row's shape: M×K×N of a GEMM; tokens×heads×head_dim×kv_tokens×kv_heads of an attention."""
    if isinstance(spec, LinearSpec):
        return [spec.M, spec.K, spec.N]
    a: AttentionSpec = spec  # type: ignore[assignment]
    return [a.tokens, a.heads, a.head_dim, a.kv_len, a.kv_heads or a.heads]


def _baseline(spec: OpSpec) -> bool:
    """Whether a row is its shape's bf16 baseline (dense full-rank GEMM; attention over a bf16 cache)."""
    if isinstance(spec, LinearSpec):
        return spec.format == "bf16" and spec.sparsity == "dense" and spec.rank is None
    return spec.kv_format is None and spec.dtype == "bf16"  # type: ignore[attr-defined]
