"""Accuracy metrics for latency predictors (rank and absolute)."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


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
