"""Warm start: the uniform plans and the Lagrangian (knapsack) solutions of the additive tables.

Uniform plans (every layer int8, every layer int4, ...) are what a person would try first.
The knapsack points come from the tables: minimising a weighted sum of additive objectives
decomposes per layer, so for each weight vector and merge schedule the best plan is one argmin
per layer. These are exactly the supported points of the Pareto front (its convex hull); with
a constraint, the best feasible one is the greedy/knapsack answer. The sampler starts from them
and fills in the non-convex parts of the front.

With two objectives the supported points are found exactly rather than by a grid of weights
(64 evenly spaced weights found only ~8 distinct plans on vit_tiny): as the weight turns from
the first objective to the second, each variable walks its own lower convex chain, so sorting
every variable's break angles gives the whole hull path, one layer change per step.
"""

from __future__ import annotations

import numpy as np

from hwsearch.search.objectives import Tables
from hwsearch.search.pareto import pareto_mask, signs, spread

N_WEIGHTS = 64


def uniform_plans(tables: Tables) -> list[tuple[np.ndarray, int]]:
    """Every layer the same dense full-rank choice, for each choice all variables share."""
    labels = None
    for var in tables.variables:
        mine = {c.label() for c in var.choices if c.rank is None and c.sparsity == "dense"}
        labels = mine if labels is None else labels & mine
    out = []
    for label in sorted(labels or ()):
        idx = np.array([v.labels.index(label) for v in tables.variables], dtype=np.int64)
        out.append((idx, 0))
    return out


def weight_vectors(k: int, n: int, seed: int = 0) -> np.ndarray:
    """`n` weight vectors over `k` objectives: evenly spread for 2, Dirichlet draws beyond."""
    if k == 1:
        return np.ones((1, 1))
    if k == 2:
        t = np.linspace(0.0, np.pi / 2, n)
        return np.stack([np.cos(t), np.sin(t)], 1)
    rng = np.random.default_rng(seed)
    return np.vstack([np.eye(k), rng.dirichlet(np.ones(k), n - k)])


def _normalised_terms(tables: Tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed terms (k, n_merge, n_var, width) and base (k, n_merge) scaled by each objective's
    range, to minimise; and the padding mask of choices a variable does not have."""
    names = tables.objectives
    span = []
    for name in names:
        lo, hi = tables.extreme(name, True, additive=True), tables.extreme(name, False, additive=True)
        span.append(max(abs(hi - lo), 1e-12))
    terms = np.stack([tables.objective(o).sign * tables.terms[o] / s for o, s in zip(names, span, strict=True)])
    base = np.stack([tables.objective(o).sign * tables.base[o] / s for o, s in zip(names, span, strict=True)])
    return np.nan_to_num(terms), base, np.isnan(terms[0])


def _chain(a: np.ndarray, b: np.ndarray) -> list[tuple[float, int]]:
    """One variable's lower convex chain from its best-`a` choice to its best-`b` choice.

    Returns (break angle, choice) pairs: the choice minimises cos(t)*a + sin(t)*b from that angle
    on. The first pair (angle 0) is the lexicographic best on (a, b).
    """
    cur = int(np.lexsort((b, a))[0])
    out = [(0.0, cur)]
    while True:
        lower = np.flatnonzero(b < b[cur] - 1e-15)
        if len(lower) == 0:
            return out
        angles = np.arctan2(a[lower] - a[cur], b[cur] - b[lower])
        best = angles.min()
        ties = lower[angles <= best + 1e-12]
        cur = int(ties[np.argmin(b[ties])])  # the far end of a collinear run
        out.append((float(max(best, out[-1][0])), cur))


def coarse_to_fine(n: int) -> list[int]:
    """0..n-1 ordered ends first, then midpoints of ever smaller gaps (so any prefix spreads)."""
    if n <= 2:
        return list(range(n))
    order, gaps = [0, n - 1], [(0, n - 1)]
    while gaps:
        nxt = []
        for lo, hi in gaps:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                order.append(mid)
                nxt += [(lo, mid), (mid, hi)]
        gaps = nxt
    return order


def hull_path(tables: Tables) -> list[tuple[np.ndarray, int]]:
    """Every supported (convex-hull) point of a two-objective front, per merge schedule."""
    terms, _, padding = _normalised_terms(tables)
    out = []
    for m in range(len(tables.merges)):
        idx = np.zeros(len(tables.variables), dtype=np.int64)
        events = []
        for j in range(len(tables.variables)):
            valid = np.flatnonzero(~padding[m, j])
            chain = _chain(terms[0, m, j, valid], terms[1, m, j, valid])
            idx[j] = valid[chain[0][1]]
            events += [(angle, j, int(valid[c])) for angle, c in chain[1:]]
        out.append((idx.copy(), m))
        for _, j, c in sorted(events):
            idx[j] = c
            out.append((idx.copy(), m))
    return out


def knapsack_plans(tables: Tables, n: int = N_WEIGHTS) -> list[tuple[np.ndarray, int]]:
    """Supported points of the front: at most `n`, spread along it.

    Two objectives: the exact hull path of every merge schedule, its non-dominated points, `n`
    of them evenly spaced. More: per-layer argmin of normalised weighted objectives for `n`
    weight vectors, per merge; the best merge per weight.
    """
    if len(tables.objectives) == 2:
        path = hull_path(tables)
        scores = tables.score(np.stack([i for i, _ in path]), np.array([m for _, m in path]))
        signed = np.stack([scores[o] for o in tables.objectives], 1) * signs(tables.objectives, tables.metric)
        keep = np.flatnonzero(pareto_mask(signed))
        keep = keep[np.argsort(signed[keep, 0], kind="stable")]
        keep = keep[spread(keep, n)]
        return [path[keep[i]] for i in coarse_to_fine(len(keep))]
    names = tables.objectives
    terms, base, padding = _normalised_terms(tables)
    out: list[tuple[np.ndarray, int]] = []
    seen: set[bytes] = set()
    for w in weight_vectors(len(names), n):
        weighted = np.where(padding, np.inf, np.tensordot(w, terms, axes=1))  # (n_merge, n_var, width)
        idx = weighted.argmin(axis=2)
        totals = np.tensordot(w, base, axes=1) + weighted.min(axis=2).sum(1)
        m = int(totals.argmin())
        key = idx[m].tobytes() + bytes([m % 256])
        if key not in seen:
            seen.add(key)
            out.append((idx[m].astype(np.int64), m))
    return out


def warm_start(tables: Tables) -> list[tuple[np.ndarray, int]]:
    """Uniform plans then knapsack points, without duplicates."""
    out, seen = [], set()
    for idx, m in uniform_plans(tables) + knapsack_plans(tables):
        key = (idx.tobytes(), m)
        if key not in seen:
            seen.add(key)
            out.append((idx, m))
    return out
