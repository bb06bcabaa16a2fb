"""The exact Pareto front of two additive objectives, by dynamic programming over layers.

With the merge schedule fixed, a plan's objectives are sums of per-variable entries, so the
front of the first j variables is the non-dominated part of (front of j-1) + (choices of j):
a Minkowski sum filtered in 2-D after each step. The union over merge schedules, filtered once
more, is the exact front of the space. Exponential in nothing, but the front can hold thousands
of points on a large space; the benchmark runs it on a reduced space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.search.objectives import Tables


def front_2d(points: np.ndarray) -> np.ndarray:
    """Non-dominated points of an (n, 2) array (both minimised), sorted by the first, unique."""
    if len(points) == 0:
        return points
    order = np.lexsort((points[:, 1], points[:, 0]))
    pts = points[order]
    best = np.minimum.accumulate(pts[:, 1])
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = pts[1:, 1] < best[:-1]
    return pts[keep]


def exact_front(tables: Tables, objectives: Sequence[str], max_points: int = 2_000_000) -> np.ndarray:
    """The exact front (n, 2) of `objectives` over the whole space, in their own directions."""
    if len(objectives) != 2:
        raise HwsearchError(f"the exact reference front takes 2 objectives; got {len(objectives)}: {list(objectives)}")
    s = np.array([tables.objective(o).sign for o in objectives])
    fronts = []
    for m in range(len(tables.merges)):
        front = np.array([[tables.base[o][m] * s[k] for k, o in enumerate(objectives)]])
        for j, var in enumerate(tables.variables):
            n = len(var.choices)
            step = np.stack([tables.terms[o][m, j, :n] * s[k] for k, o in enumerate(objectives)], 1)
            cand = (front[:, None, :] + step[None, :, :]).reshape(-1, 2)
            if len(cand) > max_points:
                raise HwsearchError(
                    f"the exact front grew past {max_points} candidates at layer {j}; accepted: a smaller space "
                    "(fewer formats, ranks or merge schedules)"
                )
            front = front_2d(cand)
        fronts.append(front)
    sums = front_2d(np.vstack(fronts)) * s
    # the value maps are increasing, so the front of the sums is the front of the values
    return np.stack([tables.finish(o, sums[:, k]) for k, o in enumerate(objectives)], 1)
