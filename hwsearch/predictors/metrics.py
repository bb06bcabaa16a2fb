"""Accuracy metrics for latency predictors (rank and absolute)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import spearmanr

if TYPE_CHECKING:
    from hwsearch.predictors.dataset import Dataset


def spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged, as scipy does)."""
    return float(spearmanr(np.asarray(pred), np.asarray(true)).statistic)


def within_pct(pred: np.ndarray, true: np.ndarray, pct: float = 10.0) -> float:
    """Share of predictions within ±pct % of the measured latency."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(np.mean(np.abs(pred - true) <= pct / 100.0 * np.abs(true)))


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute percentage error, in percent."""
    pred, true = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    return float(100.0 * np.mean(np.abs(pred - true) / np.abs(true)))


def score(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """within ±10 % / ±5 %, MAPE and Spearman of predictions against measured latencies."""
    n = int(len(true))
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "within_10pct": within_pct(pred, true, 10.0),
        "within_5pct": within_pct(pred, true, 5.0),
        "mape": mape(pred, true),
        "spearman": spearman(pred, true) if n > 2 else None,
    }


def score_by_op(pred: np.ndarray, ds: Dataset) -> dict[str, Any]:
    """Scores overall ("all") and per op family."""
    out = {"all": score(pred, ds.y_ms)}
    ops = ds.ops
    for op in sorted(set(ops.tolist())):
        mask = ops == op
        out[op] = score(pred[mask], ds.y_ms[mask])
    return out
