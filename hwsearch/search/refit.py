"""Refit a device's overhead term from a job's verified plans.

Whole-model latency is kernel predictions plus a per-device overhead term fitted on timed plans
(`predictors.model_latency.Overhead`). Verification times exactly the plans a search chose, so
those measurements are the most relevant ones to fit it on; the refit is stored as the device's
newest overhead row, which the next search (and `hwsearch predict`) uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.search.spec import SearchSpec
from hwsearch.search.verify import verifications
from hwsearch.spaces.plan import Plan


def refit_overhead(engine: Engine, job_id: int, spec: SearchSpec) -> dict[str, Any]:
    from hwsearch.predictors.metrics import mape
    from hwsearch.predictors.model_latency import ModelLatency, Overhead, device_overhead, store_overhead
    from hwsearch.predictors.registry import best_predictor

    rows = verifications(engine, job_id)
    if len(rows) < 2:
        raise HwsearchError(f"job {job_id} has {len(rows)} verified plan(s); refitting needs at least 2; "
                            "accepted: a job searched with verify_top_k >= 2")
    answer = best_predictor(engine, spec.device)
    model = spec.model_description()
    before, _ = device_overhead(engine, answer.device_id)
    ml = ModelLatency(model, answer, before)
    est = [ml.plan(Plan.parse(r["plan"])) for r in rows]
    k = np.array([e.kernel_ms for e in est])
    n = np.array([e.kernels for e in est], dtype=float)
    c = np.array([e.cast_melems for e in est])
    y = np.array([r["measured_ms"] for r in rows])
    after = Overhead.fit(k, n, c, y)
    metrics = {"mape_before": mape(before.apply(k, n, c), y), "mape_after_in_sample": mape(after.apply(k, n, c), y)}
    oid = store_overhead(engine, spec.device, after, metrics, {"job": job_id, "plans": len(rows),
                                                               "kernel_predictor": answer.describe()})
    return {"overhead_id": oid, "plans": len(rows), **metrics, "overhead": after.as_dict()}
