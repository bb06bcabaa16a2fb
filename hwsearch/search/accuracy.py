"""Predicted vs measured: the one definition of a prediction's error, for the CLI, API and dashboard.

    error % = 100 · (predicted − measured) / measured

The base is the measured value, as for MAPE and "within ±10 %" (`hwsearch.predictors.metrics`),
so |error| ≤ 10 is exactly "within ±10 %" and the mean of |error| is the MAPE. Below zero the
plan (or kernel) ran slower than predicted: a latency budget checked on the prediction may be
broken on the device. Above zero it ran faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ERROR_LABEL = "error %"
ERROR_HELP = ("(predicted − measured) / measured, in %: below 0 the device was slower than predicted, "
              "above 0 faster; |error| ≤ 10 is within ±10 %.")


def error_pct(predicted: Any, measured: Any) -> Any:
    """100 · (predicted − measured) / measured, for scalars, arrays or pandas Series (None gives NaN)."""
    if predicted is None or measured is None:
        return float("nan")
    return 100.0 * (predicted - measured) / measured


def stood_behind(row: Mapping[str, Any]) -> Any:
    """The estimate a job stood behind when a verified row's plan was timed: after any refit's
    correction (`corrected_ms`), else the search's (`predicted_ms`); what its error is of."""
    return row.get("corrected_ms", row.get("predicted_ms"))


def describe(error: float) -> str:
    """An error in words, for a plan card: `+4.1 % (faster than predicted)`."""
    if not np.isfinite(error):
        return "no prediction to compare"
    way = "slower" if error < 0 else "faster"
    return f"{error:+.1f} % ({way} than predicted)"
