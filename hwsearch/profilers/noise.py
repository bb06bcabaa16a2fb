"""How well a device's measurements repeat: the noise floor every accuracy figure sits on.

Two views: `agreement` compares the same kernels measured at two times (what `hwsearch bench
repeat` does by re-timing stored kernels now); `stored_noise` reads what the stored rounds
already say (how far each kernel's two fastest rounds were apart, how many were flagged).
A predictor cannot be expected to land closer to a measurement than the measurement lands to
itself, so predictor benchmarks print these beside their accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Measurement
from hwsearch.profilers.coverage import device_id
from hwsearch.profilers.timing import confirmation_gap


def agreement(before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    """Share of pairs within ±5 % / ±10 % (of the earlier value) and the median |log ratio|."""
    a, b = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if a.size == 0:
        return {"n": 0, "within_5pct": None, "within_10pct": None, "median_abs_log_ratio": None}
    ratio = b / a
    return {
        "n": int(a.size),
        "within_5pct": float(np.mean(np.abs(ratio - 1) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(ratio - 1) <= 0.10)),
        "median_abs_log_ratio": float(np.median(np.abs(np.log(ratio)))),
        "ratio_p10": float(np.percentile(ratio, 10)),
        "ratio_p90": float(np.percentile(ratio, 90)),
    }


def stored_noise(engine: Engine, device: str) -> dict[str, Any]:
    """What the device's stored rounds say about its noise (no re-timing)."""
    dev = device_id(engine, device)
    with session_scope(engine) as session:
        rows = session.execute(
            select(Measurement.rounds, Measurement.unstable, Measurement.environment).where(Measurement.device_id == dev)
        ).all()
    gaps = []
    for rounds, _, env in rows:
        floors = (env or {}).get("round_floors_us")
        if rounds and floors and len(floors) > 1:
            gaps.append(confirmation_gap(floors))
    g = np.asarray(gaps)
    return {
        "source": "each kernel's two fastest rounds, as stored",
        "kernels": len(rows),
        "with_rounds": len(gaps),
        "legacy": sum(1 for r in rows if not r[0]),
        "unstable": sum(1 for r in rows if r[1]),
        "rounds_within_5pct": float(np.mean(g <= 0.05)) if g.size else None,
        "rounds_within_10pct": float(np.mean(g <= 0.10)) if g.size else None,
        "median_round_gap": float(np.median(g)) if g.size else None,
    }
