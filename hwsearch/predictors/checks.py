"""Conformance checks for predictors (in the spirit of scikit-learn's `check_estimator`).

What every trainable predictor (an `Estimator`) and every stored kind must do:

* **params**: `get_params` gives the ``__init__`` arguments, a clone from them has the same
  params, `set_params` returns the estimator and refuses an unknown name in one line;
* **unfitted**: predicting or storing before fitting is one line, not a traceback;
* **fit / predict**: `fit` returns the estimator, adds only attributes ending in ``_``, and
  predictions are one positive finite float64 per row; a wrong feature count or a NaN is one line;
* **storage**: the stored form read back through the kind's registered loader
  (`hwsearch.predictors.kinds`) predicts exactly the same, and names its kind.

`check_estimator` runs them for an estimator and data; the tests run it for every registered
kind. Each failure is a one-line `HwsearchError` naming the check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.predictors.base import Estimator, LatencyPredictor, unpack
from hwsearch.predictors.kinds import get_kind


def _fail(check: str, what: str) -> HwsearchError:
    return HwsearchError(f"predictor check {check!r} failed: {what}")


def _raises_one_line(call: Callable[[], Any]) -> str | None:
    """None when `call` raises a one-line HwsearchError; else what it did instead."""
    try:
        call()
    except HwsearchError as err:
        return None if "\n" not in str(err) else f"a multi-line error: {err}"
    except Exception as err:  # noqa: BLE001 - what the check reports
        return f"{type(err).__name__}: {err}"
    return "no error"


def check_params(est: Estimator) -> None:
    """Params come from ``__init__``, round-trip through a clone, and `set_params` checks names."""
    params = est.get_params()
    if tuple(params) != est.param_names():
        raise _fail("params", f"get_params gives {sorted(params)}, __init__ takes {sorted(est.param_names())}")
    clone = type(est)(**params)
    if clone.get_params() != params:
        raise _fail("params", f"a clone from get_params has {clone.get_params()}, not {params}")
    if clone.set_params(**params) is not clone:
        raise _fail("params", "set_params does not return the estimator")
    problem = _raises_one_line(lambda: clone.set_params(no_such_parameter=1))
    if problem:
        raise _fail("params", f"set_params(no_such_parameter=1) gave {problem}")


def check_unfitted(est: Estimator, calls: dict[str, Callable[[], Any]]) -> None:
    """Each of `calls` (e.g. predicting) on an unfitted estimator, and storing it, is one line."""
    for name, call in {**calls, "to_bytes": est.to_bytes}.items():
        problem = _raises_one_line(call)
        if problem:
            raise _fail("unfitted", f"{name} before fitting gave {problem}")


def check_predictions(model: LatencyPredictor, X: np.ndarray) -> np.ndarray:
    """One positive finite float64 per row; a wrong width or a NaN is one line."""
    pred = np.asarray(model.predict(X))
    if pred.shape != (X.shape[0],) or pred.dtype != np.float64:
        raise _fail("predict", f"got {pred.shape} {pred.dtype} for {X.shape[0]} rows; accepted: ({X.shape[0]},) float64")
    if not (np.isfinite(pred).all() and (pred > 0).all()):
        raise _fail("predict", "predictions are not all positive, finite milliseconds")
    for what, bad in (("a wrong feature count", X[:, :-1]), ("a NaN feature", np.where(np.eye(*X.shape) > 0, np.nan, X))):
        problem = _raises_one_line(lambda bad=bad: model.predict(bad))
        if problem:
            raise _fail("predict", f"{what} gave {problem}")
    return pred


def check_round_trip(model: Any, X: np.ndarray, predict: Callable[[Any, np.ndarray], np.ndarray] | None = None,
                     kind: str | None = None) -> Any:
    """The stored form, loaded by the kind's registered loader, predicts exactly the same.

    `kind` defaults to the model's own; `predict` to ``model.predict(X)``."""
    predict = predict or (lambda m, rows: m.predict(rows))
    kind = kind or model.kind
    data = model.to_bytes()
    header, _ = unpack(data)
    if header.get("kind") != kind:
        raise _fail("storage", f"the stored form names kind {header.get('kind')!r}, not {kind!r}")
    loaded = get_kind(kind).load(data)
    if type(loaded) is not type(model):
        raise _fail("storage", f"loading gave a {type(loaded).__name__}, not a {type(model).__name__}")
    before, after = np.asarray(predict(model, X)), np.asarray(predict(loaded, X))
    if not np.array_equal(before, after):
        worst = float(np.max(np.abs(after / before - 1)))
        raise _fail("storage", f"the loaded predictor's predictions differ (up to {worst:.3g} relative)")
    if isinstance(model, Estimator) and loaded.get_params() != model.get_params():
        raise _fail("storage", f"the loaded predictor has params {loaded.get_params()}, not {model.get_params()}")
    return loaded


def check_estimator(
    est: Estimator, X: np.ndarray, y: np.ndarray, fit: Callable[[Estimator], Estimator] | None = None,
    as_predictor: Callable[[Estimator], LatencyPredictor] | None = None,
) -> Estimator:
    """Every check for one estimator on features `X` and latencies `y` (ms); returns it fitted.

    `fit` trains it (default ``est.fit(X, y)``); `as_predictor` gives what predicts rows (default
    the estimator itself; the meta-predictor adapts to a device first).
    """
    fit = fit or (lambda e: e.fit(X, y))  # type: ignore[attr-defined]
    as_predictor = as_predictor or (lambda e: e)  # type: ignore[assignment, return-value]
    check_params(est)
    fresh = type(est)(**est.get_params())
    check_unfitted(fresh, {"predict": lambda: as_predictor(fresh).predict(X)})
    before = set(vars(est))
    fitted = fit(est)
    if fitted is not est:
        raise _fail("fit", "fitting does not return the estimator")
    added = sorted(k for k in set(vars(est)) - before if not (k.endswith("_") or k.startswith("_")))
    if added:
        raise _fail("fit", f"fitting adds attributes {added}; accepted: fitted attributes end in '_'")
    model = as_predictor(est)
    check_predictions(model, X)
    check_round_trip(est, X, lambda e, rows: as_predictor(e).predict(rows))
    if model is not est and hasattr(model, "to_bytes"):
        check_round_trip(model, X)
    return est
