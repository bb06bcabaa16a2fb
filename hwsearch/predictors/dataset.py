"""A device's measurements as a training set: (specs, X, y_ms, cov, native).

One row per kernel: the measurement of the implementation the device's dispatch table picks for
that spec (`hwsearch.kernels.dispatch`: the one measured fastest there), because that is what
compressed modules run (an int8 GEMM measured with fbgemm and with `_int_mm` is one kernel to a
model: the dispatched one). When the dispatch cannot be determined in this process (a CUDA
device's data read on a CPU-only machine) or its pick was not measured, the fastest native
measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.dispatch import Dispatch, Measured
from hwsearch.kernels.specs import OpSpec, spec_from_params
from hwsearch.predictors.features import Roofline, featurize, roofline_from_measurements
from hwsearch.profilers.coverage import device_id as find_device
from hwsearch.profilers.sampling import reference_set


@dataclass
class Row:
    spec: OpSpec
    implementation: str
    native: bool
    ms: float
    cov: float
    unstable: bool = False  # rounds disagreed, or the kernel beat the machine's limits even colder


@dataclass
class Dataset:
    """Featurised measurements of one device."""

    device: str
    backend: str
    specs: list[OpSpec]
    X: np.ndarray
    y_ms: np.ndarray
    cov: np.ndarray
    native: np.ndarray
    implementations: list[str]
    roofline: Roofline
    dropped_unstable: int = 0

    def __len__(self) -> int:
        return len(self.specs)

    @property
    def ops(self) -> np.ndarray:
        return np.array([s.op for s in self.specs])

    def subset(self, idx: np.ndarray) -> Dataset:
        idx = np.asarray(idx, dtype=int)
        return Dataset(self.device, self.backend, [self.specs[i] for i in idx], self.X[idx], self.y_ms[idx],
                       self.cov[idx], self.native[idx], [self.implementations[i] for i in idx], self.roofline,
                       self.dropped_unstable)

    def summary(self) -> dict[str, Any]:
        ops: dict[str, int] = {}
        for s in self.specs:
            ops[s.op] = ops.get(s.op, 0) + 1
        return {"rows": len(self), "by_op": ops, "native": int(self.native.sum()),
                "median_cov": float(np.median(self.cov)) if len(self) else None,
                "dropped_unstable": self.dropped_unstable}


def no_measurements(name: str) -> HwsearchError:
    return HwsearchError(
        f"device {name!r} has no measurements; profile it first: `hwsearch profile --local --name {name}` "
        f"(this machine) or `hwsearch profile --device {name}` (a Ray node)"
    )


def device_backend(engine: Engine, name: str) -> tuple[int, str]:
    """(device id, backend); unknown names fail with the list of stored devices."""
    dev = find_device(engine, name)
    with session_scope(engine) as session:
        device = session.get(Device, dev)
        assert device is not None
        backend = (device.fingerprint or {}).get("backend") or device.kind
    return dev, backend if backend in registry.backends() else "cpu"


def _measured(engine: Engine, dev: int) -> list[Any]:
    with session_scope(engine) as session:
        return list(session.execute(
            select(KernelConfig.op, KernelConfig.params, KernelConfig.id, Measurement.implementation,
                   Measurement.native, Measurement.median_us, Measurement.cov, Measurement.unstable,
                   Measurement.environment)
            .join(Measurement, Measurement.kernel_id == KernelConfig.id)
            .where(Measurement.device_id == dev)
            .order_by(KernelConfig.id, Measurement.implementation)
        ).all())


def _dispatch(found: list[Any], backend: str) -> Dispatch:
    specs: dict[int, OpSpec] = {}
    rows = []
    for r in found:
        spec = specs.get(r.id) or specs.setdefault(r.id, spec_from_params(r.op, dict(r.params)))
        rows.append(Measured(spec, r.implementation, bool(r.native), r.median_us / 1e3))
    return Dispatch.learn(rows, backend)


def device_dispatch(engine: Engine, name: str) -> Dispatch:
    """The device's dispatch table, learned from its stored measurements."""
    dev, backend = device_backend(engine, name)
    return _dispatch(_measured(engine, dev), backend)


def load_rows(engine: Engine, name: str) -> tuple[str, list[Row]]:
    """(backend, one Row per measured kernel of the device, with the dispatched implementation)."""
    backend, rows, _ = measured_rows(engine, name)
    return backend, rows


def measured_rows(engine: Engine, name: str) -> tuple[str, list[Row], Dispatch]:
    """`load_rows` and the dispatch table they were picked with, from one read of the measurements."""
    dev, backend = device_backend(engine, name)
    found = _measured(engine, dev)
    dispatch = _dispatch(found, backend)
    by_kernel: dict[int, list[Any]] = {}
    for r in found:
        by_kernel.setdefault(r.id, []).append(r)
    rows = []
    for measured in by_kernel.values():
        first = measured[0]
        spec = spec_from_params(first.op, dict(first.params))
        impls = {m.implementation: m for m in measured}
        pick = next((impls[n] for n in dispatch.order(spec) if n in impls), None)
        if pick is None:
            pick = min(measured, key=lambda m: (not m.native, m.median_us))
        flags = (pick.environment or {}).get("flags", [])
        suspect = bool(pick.unstable) or any(str(f).startswith("beyond_") for f in flags)
        rows.append(Row(spec, pick.implementation, bool(pick.native), pick.median_us / 1e3, float(pick.cov), suspect))
    return backend, rows, dispatch


def reference_pairs(rows: list[Row]) -> tuple[list[tuple[OpSpec, float]], list[OpSpec]]:
    """(spec, ms) of the reference set in its fixed order, and the reference kernels not measured."""
    by_spec = {r.spec: r.ms for r in rows}
    ref = reference_set()
    return [(s, by_spec[s]) for s in ref if s in by_spec], [s for s in ref if s not in by_spec]


def hardware_embedding(rows: list[Row], name: str) -> np.ndarray:
    """The device's latencies (ms) on the reference set: the meta-predictor's hardware input."""
    pairs, missing = reference_pairs(rows)
    if missing:
        raise HwsearchError(
            f"device {name!r} lacks {len(missing)} of the {len(reference_set())} reference kernels "
            f"(e.g. {missing[0].describe()}); accepted: a device profiled with any budget (the reference set is measured first)"
        )
    return np.array([ms for _, ms in pairs])


def load_dataset(engine: Engine, name: str, roofline: Roofline | None = None, keep_unstable: bool = False) -> Dataset:
    """The device's featurised measurements; the roofline comes from its reference kernels.

    Measurements flagged unstable (their rounds never agreed, or they beat the machine's
    memory bandwidth even when re-measured colder) are left out of training unless
    `keep_unstable`; how many is in `dropped_unstable`. The reference kernels stay either way:
    they are the device's embedding and roofline.
    """
    backend, rows = load_rows(engine, name)
    if not rows:
        raise no_measurements(name)
    reference = set(reference_set())
    dropped = 0 if keep_unstable else sum(1 for r in rows if r.unstable and r.spec not in reference)
    if not keep_unstable:
        rows = [r for r in rows if not r.unstable or r.spec in reference]
    if roofline is None:
        pairs, missing = reference_pairs(rows)
        roofline = roofline_from_measurements(pairs if not missing else [(r.spec, r.ms) for r in rows])
    specs = [r.spec for r in rows]
    return Dataset(
        device=name, backend=backend, specs=specs, X=featurize(specs, roofline),
        y_ms=np.array([r.ms for r in rows]), cov=np.array([r.cov for r in rows]),
        native=np.array([r.native for r in rows], dtype=bool), implementations=[r.implementation for r in rows],
        roofline=roofline, dropped_unstable=dropped,
    )
