"""A database with a synthetic device and its trained XGBoost predictor, for search tests.

Latencies are a roofline-shaped function of each kernel (FLOPs and bytes, a per-format factor,
a launch cost), written with the profiler's store, so searches run in seconds and do not depend
on this machine's speed. The device's host is this machine, so verification times real plans.
"""

from __future__ import annotations

import socket

from hwsearch.db.engine import open_db
from hwsearch.kernels import registry as kernel_registry
from hwsearch.predictors.features import bytes_moved
from hwsearch.predictors.xgb import train_xgboost
from hwsearch.profilers import store
from hwsearch.profilers.sampling import random_set, reference_set

FORMAT = {"fp32": 1.0, "bf16": 0.6, "fp16": 1.4, "int8": 0.5, "int4": 0.8, "fp8": 2.5}
OP = {"linear": 1.0, "attention": 1.6, "norm": 1.2, "elementwise": 1.1, "tome_merge": 3.0}


def synthetic_ms(spec) -> float:
    fmt = getattr(spec, "format", None) or getattr(spec, "dtype", "bf16")
    compute = spec.flops / 80e9 * 1e3
    memory = bytes_moved(spec)["total"] / 20e9 * 1e3
    return max(compute, memory) * OP[spec.op] * FORMAT[fmt] + 0.004


def _fields(spec) -> dict:
    us = synthetic_ms(spec) * 1e3
    return {"implementation": kernel_registry.select(spec, "cpu").name, "backend": "cpu", "native": True,
            "median_us": us, "p10_us": 0.95 * us, "p90_us": 1.05 * us, "mean_us": us, "repeats": 20, "cov": 0.03,
            "threads": 1, "environment": {}}


def make_world(url: str, device: str = "syn") -> None:
    """`device` (this host, 1 thread) with ~260 kernels and an XGBoost predictor; `bare` without a predictor."""
    engine = open_db(url)
    ref = reference_set()
    specs = ref + [s for s in dict.fromkeys(random_set(260, seed=0, max_flops=2e9)) if s not in set(ref)]
    dev = store.ensure_device(engine, device, "cpu", {"backend": "cpu", "host": socket.gethostname(), "threads": 1})
    rows = [(s, _fields(s)) for s in specs]
    for i in range(0, len(rows), 200):
        store.write_chunk(engine, dev, None, rows[i : i + 200])
    train_xgboost(engine, device, params={"n_estimators": 200, "learning_rate": 0.1})
    bare = store.ensure_device(engine, "bare", "cpu", {"backend": "cpu", "host": "elsewhere", "threads": 1})
    store.write_chunk(engine, bare, None, rows[:5])
    engine.dispose()
