"""Pareto fronts and hypervolume, normalised to the space's own bounds.

Hypervolume is computed with Optuna's exact `compute_hypervolume` on points rescaled so the
space's ideal point (every objective at its best, which the additive tables give exactly) is 0
and its nadir (every objective at its worst) is 1; the reference point is (1, ..., 1). The
number is therefore the share of the [ideal, nadir] box a front dominates, comparable between
samplers, runs and the exact reference front.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Any

import numpy as np
import pandas as pd
from optuna._hypervolume import compute_hypervolume
from optuna.study._multi_objective import _is_pareto_front

from hwsearch.search.objectives import OBJECTIVES, Tables


def signs(objectives: Sequence[str]) -> np.ndarray:
    return np.array([OBJECTIVES[o].sign for o in objectives])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of `points` (all objectives minimised); equal points all stay."""
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return _is_pareto_front(pts, assume_unique_lexsorted=False)


def bounds(tables: Tables, objectives: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ideal, nadir) of the space for `objectives`, in their own directions."""
    ideal = np.array([tables.extreme(o, True) for o in objectives])
    nadir = np.array([tables.extreme(o, False) for o in objectives])
    return ideal, nadir


def normalise(values: np.ndarray, objectives: Sequence[str], ideal: Sequence[float], nadir: Sequence[float]) -> np.ndarray:
    """Rescale to minimisation in [0, 1]: 0 at the ideal, 1 at the nadir."""
    s = signs(objectives)
    lo, hi = np.asarray(ideal) * s, np.asarray(nadir) * s
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (np.asarray(values, dtype=float).reshape(-1, len(objectives)) * s - lo) / span


def hypervolume(values: np.ndarray, objectives: Sequence[str], ideal: Sequence[float], nadir: Sequence[float]) -> float:
    """Normalised hypervolume of `values` (n, k) in the objectives' own directions."""
    z = normalise(values, objectives, ideal, nadir)
    z = z[np.all(z <= 1.0, axis=1)]
    if len(z) == 0:
        return 0.0
    return float(compute_hypervolume(z, np.ones(z.shape[1])))


def hv_curve(values: np.ndarray, feasible: np.ndarray, objectives: Sequence[str], ideal: Sequence[float],
             nadir: Sequence[float]) -> np.ndarray:
    """Hypervolume of the feasible points among the first t trials, for t = 1..n."""
    z = normalise(values, objectives, ideal, nadir)
    out = np.zeros(len(z))
    front = np.zeros((0, z.shape[1]))
    hv = 0.0
    for t in range(len(z)):
        p = z[t]
        if feasible[t] and np.all(p <= 1.0) and not np.any(np.all(front <= p, axis=1)):
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
            hv = float(compute_hypervolume(front, np.ones(z.shape[1]), assume_pareto=True))
        out[t] = hv
    return out


def trials_to(curve: np.ndarray, target: float) -> int | None:
    """First trial count at which `curve` reaches `target` (None if never)."""
    hit = np.flatnonzero(curve >= target)
    return int(hit[0]) + 1 if len(hit) else None


def front_frame(trials: Sequence[Any], objectives: Sequence[str], job_id: int | None = None,
                columns: Sequence[str] = (), dtype: str = "fp32") -> pd.DataFrame:
    """Feasible, non-dominated trials as a table: trial, plan_id, objective columns, what they compress.

    `trials` are Optuna FrozenTrials written by a search worker (values in user attributes).
    """
    cols = [OBJECTIVES[o].column for o in objectives]
    extra = [c for c in columns if c not in cols]
    rows = []
    for t in trials:
        if t.values is None or any(v > 0 for v in t.constraints.values()):
            continue
        rows.append(t)
    if not rows:
        return pd.DataFrame(columns=["trial", "plan_id", *cols, *extra, "compressed", "merge"])
    values = np.array([t.values for t in rows], dtype=float)
    keep = pareto_mask(values * signs(objectives))
    out = []
    for t, k in zip(rows, keep, strict=True):
        if not k:
            continue
        merge = t.params.get("merge", "none")
        changed = sum(1 for n, v in t.params.items() if n != "merge" and v != dtype)
        out.append({"trial": t.number, "plan_id": f"{job_id}:{t.number}" if job_id is not None else str(t.number),
                    **{c: t.user_attrs.get(c) for c in [*cols, *extra]}, "compressed": changed, "merge": merge})
    frame = pd.DataFrame(out)
    frame = frame.drop_duplicates(subset=cols).sort_values(cols[0]).reset_index(drop=True)
    return frame


def spread(frame: Sized, k: int) -> list[int]:
    """Row positions of `k` points spread along a front sorted by its first objective (ends included)."""
    n = len(frame)
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})
