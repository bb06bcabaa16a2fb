"""Pareto fronts and hypervolume, normalised to the space's own bounds.

Hypervolume is computed with Optuna's exact `compute_hypervolume` (through `optuna_compat`) on points rescaled so the
space's ideal point (every objective at its best, which the additive tables give exactly) is 0
and its nadir (every objective at its worst) is 1; the reference point is (1, ..., 1). The
number is therefore the share of the [ideal, nadir] box a front dominates, comparable between
samplers, runs and the exact reference front.

`front_mask` is the one definition of a job's front and `best_under` the one answer to "the best
plan under a budget": the CLI, the Python API and the dashboard all call them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import Any

import numpy as np
import pandas as pd

from hwsearch.errors import HwsearchError, unknown
from hwsearch.search.objectives import CONSTRAINTS, OBJECTIVES, Tables, constraint, objective
from hwsearch.search.optuna_compat import hypervolume as exact_hypervolume
from hwsearch.search.optuna_compat import is_pareto_front


def signs(objectives: Sequence[str], metric: str | None = None) -> np.ndarray:
    """+1 for an objective to minimise, -1 for one to maximise (quality: in its `metric`'s direction)."""
    return np.array([objective(o, metric).sign for o in objectives])


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of `points` (all objectives minimised); equal points all stay."""
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return is_pareto_front(pts)


def front_mask(values: np.ndarray, directions: Sequence[str], feasible: np.ndarray | None = None) -> np.ndarray:
    """The front: feasible, non-dominated rows of `values` (n, k), one row per distinct point.

    Rows with equal objective values are one point of the trade-off (NSGA-II proposes a plan
    again, and layers of equal shape make different plans score alike), so only the first of
    them (rows in trial order: the earliest trial) is on the front: a front's size counts
    trade-offs, not repeats. Rows with a missing value are never on it.
    """
    vals = np.asarray(values, dtype=float).reshape(len(values), len(directions))
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    ok = np.all(np.isfinite(vals), axis=1)
    if feasible is not None:
        ok &= np.asarray(feasible, dtype=bool)
    mask = np.zeros(len(vals), dtype=bool)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return mask
    loss = vals[idx] * sign
    _, first = np.unique(loss, axis=0, return_index=True)
    first = np.sort(first)
    mask[idx[first[pareto_mask(loss[first])]]] = True
    return mask


def best_under(front: pd.DataFrame, objectives: Sequence[str], budget: Mapping[str, float | None],
               band_pct: float | None = None, metric: str | None = None) -> pd.Series:
    """The front's row within `budget` that is best on the first objective the budget leaves free.

    `front` has the objectives' columns (`latency_ms`, `size_mb`, `quality`); `budget` uses the
    constraint keys of a SearchSpec (`latency_ms`, `size_mb`: upper bounds; `min_quality`: "no
    worse than", a lower bound, or an upper one for a lower-is-better `metric` such as
    perplexity); None means no bound. The values compared are the predicted ones, as the
    search scored them; with `band_pct` (the job's calibrated latency band) a latency budget
    holds for the upper bound, latency × (1 + band/100). Raises HwsearchError naming the range
    the front reaches.
    """
    if front.empty:
        raise HwsearchError("the job has no feasible Pareto plan yet; accepted: a job with completed feasible trials")
    keep = pd.Series(True, index=front.index)
    bounded = set()
    for key, bound in budget.items():
        if bound is None:
            continue
        if key not in CONSTRAINTS:
            raise unknown("budget", key, CONSTRAINTS)
        name, kind = constraint(key, metric)
        col = OBJECTIVES[name].column
        if col not in front:
            have = [k for k, (n, _) in CONSTRAINTS.items() if OBJECTIVES[n].column in front]
            raise HwsearchError(f"this job has no {col} column to bound; accepted: bounds on {', '.join(have)}")
        banded = name == "latency" and bool(band_pct)
        values = front[col] * (1.0 + (band_pct or 0.0) / 100.0) if banded else front[col]
        within = values <= bound if kind == "max" else values >= bound
        if not (within & keep).any():
            op, reach = ("<=", values.min()) if kind == "max" else (">=", values.max())
            what = f"{col} (upper bound, band +{band_pct:.1f} %)" if banded else col
            raise HwsearchError(
                f"no Pareto plan has {what} {op} {bound:g} (the front spans {values.min():.4g} to "
                f"{values.max():.4g}); accepted: a bound {'>=' if kind == 'max' else '<='} {reach:.4g}"
            )
        keep &= within
        bounded.add(name)
    order = [o for o in objectives if o not in bounded] or list(objectives)
    obj = objective(order[0], metric)
    rows = front[keep]
    pick = rows[obj.column].idxmin() if obj.direction == "minimize" else rows[obj.column].idxmax()
    return rows.loc[pick]


def bounds(tables: Tables, objectives: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ideal, nadir) of the space for `objectives`, in their own directions."""
    ideal = np.array([tables.extreme(o, True) for o in objectives])
    nadir = np.array([tables.extreme(o, False) for o in objectives])
    return ideal, nadir


def normalise(values: np.ndarray, objectives: Sequence[str], ideal: Sequence[float], nadir: Sequence[float],
              metric: str | None = None) -> np.ndarray:
    """Rescale to minimisation in [0, 1]: 0 at the ideal, 1 at the nadir."""
    s = signs(objectives, metric)
    lo, hi = np.asarray(ideal) * s, np.asarray(nadir) * s
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return (np.asarray(values, dtype=float).reshape(-1, len(objectives)) * s - lo) / span


def hypervolume(values: np.ndarray, objectives: Sequence[str], ideal: Sequence[float], nadir: Sequence[float],
                metric: str | None = None) -> float:
    """Normalised hypervolume of `values` (n, k) in the objectives' own directions."""
    z = normalise(values, objectives, ideal, nadir, metric)
    z = z[np.all(z <= 1.0, axis=1)]
    if len(z) == 0:
        return 0.0
    return exact_hypervolume(z, np.ones(z.shape[1]))


def hv_curve(values: np.ndarray, feasible: np.ndarray, objectives: Sequence[str], ideal: Sequence[float],
             nadir: Sequence[float], metric: str | None = None) -> np.ndarray:
    """Hypervolume of the feasible points among the first t trials, for t = 1..n."""
    z = normalise(values, objectives, ideal, nadir, metric)
    out = np.zeros(len(z))
    front = np.zeros((0, z.shape[1]))
    hv = 0.0
    for t in range(len(z)):
        p = z[t]
        if feasible[t] and np.all(p <= 1.0) and not np.any(np.all(front <= p, axis=1)):
            front = np.vstack([front[~np.all(p <= front, axis=1)], p])
            hv = exact_hypervolume(front, np.ones(z.shape[1]), assume_pareto=True)
        out[t] = hv
    return out


def trials_to(curve: np.ndarray, target: float) -> int | None:
    """First trial count at which `curve` reaches `target` (None if never)."""
    hit = np.flatnonzero(curve >= target)
    return int(hit[0]) + 1 if len(hit) else None


def front_frame(trials: Sequence[Any], objectives: Sequence[str], job_id: int | None = None,
                columns: Sequence[str] = (), dtype: str = "fp32", metric: str | None = None) -> pd.DataFrame:
    """Feasible, non-dominated trials as a table: trial, plan_id, objective columns, what they compress.

    `trials` are Optuna FrozenTrials written by a search worker (values in user attributes);
    which of them are on the front is `front_mask`'s answer.
    """
    cols = [OBJECTIVES[o].column for o in objectives]
    extra = [c for c in columns if c not in cols]
    rows = sorted((t for t in trials if t.values is not None), key=lambda t: t.number)
    if not rows:
        return pd.DataFrame(columns=["trial", "plan_id", *cols, *extra, "compressed", "merge"])
    values = np.array([t.values for t in rows], dtype=float)
    feasible = np.array([not any(v > 0 for v in t.constraints.values()) for t in rows])
    keep = front_mask(values, [objective(o, metric).direction for o in objectives], feasible)
    out = []
    for t in (t for t, k in zip(rows, keep, strict=True) if k):
        merge = t.params.get("merge", "none")
        changed = sum(1 for n, v in t.params.items() if n != "merge" and v != dtype)
        out.append({"trial": t.number, "plan_id": f"{job_id}:{t.number}" if job_id is not None else str(t.number),
                    **{c: t.user_attrs.get(c) for c in [*cols, *extra]}, "compressed": changed, "merge": merge})
    if not out:
        return pd.DataFrame(columns=["trial", "plan_id", *cols, *extra, "compressed", "merge"])
    return pd.DataFrame(out).sort_values([*cols[:1], "trial"]).reset_index(drop=True)


def spread(frame: Sized, k: int) -> list[int]:
    """Row positions of `k` points spread along a front sorted by its first objective (ends included)."""
    n = len(frame)
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})
