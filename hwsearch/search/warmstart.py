"""Warm start: the uniform plans and the Lagrangian (knapsack) solutions of the additive tables.

Uniform plans (every layer int8, every layer int4, ...) are what a person would try first.
The knapsack points come from the tables: minimising a weighted sum of additive objectives
decomposes per layer, so for each weight vector and merge schedule the best plan is one argmin
per layer. These are exactly the supported points of the Pareto front (its convex hull); with
a constraint, the best feasible one is the greedy/knapsack answer. The sampler starts from them
and fills in the non-convex parts of the front.
"""

from __future__ import annotations

import numpy as np

from hwsearch.search.objectives import OBJECTIVES, Tables

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


def knapsack_plans(tables: Tables, n: int = N_WEIGHTS) -> list[tuple[np.ndarray, int]]:
    """Per-layer argmin of normalised weighted objectives, per merge; the best merge per weight."""
    names = tables.objectives
    span = []
    for name in names:
        lo, hi = tables.extreme(name, True), tables.extreme(name, False)
        span.append(max(abs(hi - lo), 1e-12))
    # signed, normalised terms: (k, n_merge, n_var, width), to minimise
    terms = np.stack([OBJECTIVES[o].sign * tables.terms[o] / s for o, s in zip(names, span, strict=True)])
    base = np.stack([OBJECTIVES[o].sign * tables.base[o] / s for o, s in zip(names, span, strict=True)])
    padding = np.isnan(terms[0])  # choices a variable does not have
    terms = np.nan_to_num(terms)
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
