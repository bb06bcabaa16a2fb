"""Cross-GPU transfer on Vidur's measured fp16 GEMMs: learn on source GPUs, adapt to a target.

What the target may see (and nothing else): ``shots`` labelled shapes. The first
``min(reference, shots)`` of them are a fixed reference set (the same shapes for every seed,
spread evenly over log-FLOPs) whose latencies are the target's hardware embedding; the rest are
drawn at random per seed. The predictor is scored on every other target shape.
Source GPUs contribute all their shapes measured on every source (identical rows, so episodes
can also interpolate between the sources).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwsearch.bench.external import gemm_features, load_vidur
from hwsearch.errors import HwsearchError, unknown
from hwsearch.predictors.meta import MetaPredictor, MetaTask
from hwsearch.predictors.metrics import mape, spearman, within_pct

DEFAULT_PARAMS: dict[str, Any] = {}
REFERENCE = 4


def reference_shapes(keys: np.ndarray, flops: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` shapes evenly spaced in log-FLOPs (deterministic, latency-blind)."""
    if n <= 0:
        return np.zeros(0, dtype=int)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0], flops))
    pos = np.linspace(0, len(order) - 1, n + 2)[1:-1].round().astype(int)
    return order[pos]


def run_gemm_transfer(
    data_file: Path | str,
    source: Sequence[str],
    target: str,
    shots: int = 10,
    seeds: int = 5,
    reference: int = REFERENCE,
    params: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Meta-train on ``source`` GPUs, adapt to ``target`` from ``shots`` shapes, score the rest."""
    df = load_vidur(data_file)
    gpus = sorted(df["gpu"].unique())
    source = [s.strip() for s in source if s.strip()]
    if not source:
        raise HwsearchError(f"no source GPUs given; accepted: {', '.join(gpus)}")
    for g in [*source, target]:
        if g not in gpus:
            raise unknown("GPU", g, gpus)
    if target in source:
        raise HwsearchError(f"target {target!r} is also a source; accepted: a target not in --source")
    if seeds < 1:
        raise HwsearchError(f"seeds {seeds} out of range; accepted: 1 or more")

    key = ["M", "K", "N"]
    tables = {g: df[df["gpu"] == g].set_index(key)["median_ms"] for g in [*source, target]}
    common = tables[source[0]].index
    for g in source[1:]:
        common = common.intersection(tables[g].index)
    common = common.sort_values()
    tgt = tables[target].sort_index()
    n_tgt = len(tgt)
    if not 1 <= shots < n_tgt:
        raise HwsearchError(f"shots {shots} out of range; accepted: 1..{n_tgt - 1}")

    ck = np.asarray(common.tolist(), dtype=np.float64)
    Xs = gemm_features(ck[:, 0], ck[:, 1], ck[:, 2])
    tk = np.asarray(tgt.index.tolist(), dtype=np.float64)
    Xt = gemm_features(tk[:, 0], tk[:, 1], tk[:, 2])
    yt = tgt.to_numpy()

    # reference shapes: measured on every source and on the target, spread over log-FLOPs
    both = np.isin(np.arange(n_tgt), np.flatnonzero(tgt.index.isin(common)))
    cand = np.flatnonzero(both)
    n_ref = min(reference, shots)
    ref_t = cand[reference_shapes(tk[cand], np.log(tk[cand]).sum(1), n_ref)]
    ref_keys = tgt.index[ref_t]
    tasks = [
        MetaTask(g, Xs, tables[g].loc[common].to_numpy(), tables[g].loc[ref_keys].to_numpy())
        for g in source
    ]
    model = MetaPredictor(**{**DEFAULT_PARAMS, **(params or {})})
    model.meta_fit(tasks, progress=(lambda i, n: progress("meta-train", i, n)) if progress else None)

    rest = np.setdiff1d(np.arange(n_tgt), ref_t)
    rho, w10, err = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        extra = rng.choice(rest, size=shots - n_ref, replace=False)
        seen = np.concatenate([ref_t, extra])
        adapted = model.adapt(yt[ref_t], Xt[seen], yt[seen])
        test = np.setdiff1d(np.arange(n_tgt), seen)
        pred = adapted.predict(Xt[test])
        rho.append(spearman(pred, yt[test]))
        w10.append(within_pct(pred, yt[test], 10.0))
        err.append(mape(pred, yt[test]))
        if progress:
            progress("adapt", seed + 1, seeds)
    return {"spearman": float(np.mean(rho)), "within_10pct": float(np.mean(w10)), "mape": float(np.mean(err))}
