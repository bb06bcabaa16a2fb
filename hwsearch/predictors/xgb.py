"""Per-device gradient-boosted latency predictor (in the spirit of Quantune's XGBoost cost model).

* Target: log-latency. Latencies span five decades; a log target makes the loss a relative error,
  which is what ±10 % accuracy asks for, and keeps big kernels from dominating the fit.
* Optional offset column (`offset_feature`): the trees learn ``log(y) - X[:, offset_feature]``.
  With the featuriser's ``log_roofline_ms`` this is the ratio to the device's roofline time,
  which stays bounded when shapes grow beyond the trained range (trees cannot extrapolate a
  raw target; they can hold a ratio).
* Early stopping on a seeded validation split of the training rows; the number of rounds that
  scored best there is kept.
* Stored as XGBoost's own UBJ (or JSON) model behind the common JSON header: version-stable and
  loadable without pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.predictors.base import Estimator, check_latency, check_X
from hwsearch.predictors.features import FEATURE_VERSION, OFFSET_FEATURE
from hwsearch.predictors.kinds import PredictorKind, register_kind
from hwsearch.predictors.metrics import score_by_op
from hwsearch.predictors.splits import TEST_FRACTION, random_split
from hwsearch.predictors.store import store_predictor

XGB_KIND = "xgboost"
RAW_FORMATS = ("ubj", "json")
# Below this many rows a validation split is too small to pick a round count from.
MIN_SPLIT_ROWS = 20
# A per-device XGBoost model answers (and `--kind all` trains one) from this many kernels.
MIN_XGB_ROWS = 100


@dataclass(eq=False)
class XGBoostPredictor(Estimator):
    """scikit-learn style estimator: ``fit(X, y_ms)``, ``predict(X) -> ms``."""

    kind: ClassVar[str] = XGB_KIND
    fitted_attr: ClassVar[str] = "booster_"

    n_estimators: int = 2000
    learning_rate: float = 0.05
    max_depth: int = 6
    min_child_weight: float = 1.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 100
    validation_fraction: float = 0.15
    small_data_rounds: int = 200
    offset_feature: int | None = None
    n_jobs: int = 1
    random_state: int = 0
    raw_format: str = "ubj"

    def __post_init__(self) -> None:
        self.booster_: Any = None

    def _booster_params(self) -> dict[str, Any]:
        return {
            "objective": "reg:squarederror",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "tree_method": "hist",
            "nthread": self.n_jobs,
            "seed": self.random_state,
            "base_score": 0.0,
            "eval_metric": "rmse",
        }

    def _offset(self, X: np.ndarray) -> np.ndarray:
        if self.offset_feature is None:
            return np.zeros(X.shape[0])
        return X[:, self.offset_feature]

    def fit(self, X: np.ndarray, y: np.ndarray) -> XGBoostPredictor:
        import xgboost as xgb

        if self.raw_format not in RAW_FORMATS:
            raise HwsearchError(f"unknown raw_format {self.raw_format!r}; accepted: {', '.join(RAW_FORMATS)}")
        X = check_X(X)
        y = check_latency(y, X.shape[0])
        if X.shape[0] < 2:
            raise HwsearchError(f"XGBoostPredictor needs at least 2 rows; got {X.shape[0]}")
        if self.offset_feature is not None and not 0 <= self.offset_feature < X.shape[1]:
            raise HwsearchError(f"offset_feature={self.offset_feature} is out of range; accepted: 0 to {X.shape[1] - 1}")
        target = np.log(y) - self._offset(X)
        params = self._booster_params()
        n = X.shape[0]
        n_val = int(round(self.validation_fraction * n))
        if n >= MIN_SPLIT_ROWS and n_val >= 2 and self.early_stopping_rounds > 0:
            idx = np.random.default_rng(self.random_state).permutation(n)
            val, tr = idx[:n_val], idx[n_val:]
            dtrain = xgb.DMatrix(X[tr], label=target[tr])
            dval = xgb.DMatrix(X[val], label=target[val])
            booster = xgb.train(params, dtrain, num_boost_round=self.n_estimators, evals=[(dval, "valid")],
                                early_stopping_rounds=self.early_stopping_rounds, verbose_eval=False)
            self.best_iteration_ = int(booster.best_iteration)
            self.valid_rmse_log_: float | None = float(booster.best_score)
        else:
            rounds = min(self.n_estimators, self.small_data_rounds)
            booster = xgb.train(params, xgb.DMatrix(X, label=target), num_boost_round=rounds, verbose_eval=False)
            self.best_iteration_ = rounds - 1
            self.valid_rmse_log_ = None
        self.booster_ = booster
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        self._require_fitted()
        X = check_X(X, self.n_features_in_)
        if X.shape[0] == 0:
            return np.zeros(0)
        margin = self.booster_.predict(xgb.DMatrix(X), iteration_range=(0, self.best_iteration_ + 1))
        return np.exp(margin.astype(np.float64) + self._offset(X))

    def _fitted_state(self) -> tuple[dict[str, Any], bytes]:
        header = {"n_features": self.n_features_in_, "best_iteration": self.best_iteration_,
                  "valid_rmse_log": self.valid_rmse_log_, "raw_format": self.raw_format}
        return header, bytes(self.booster_.save_raw(raw_format=self.raw_format))

    def _restore(self, header: dict[str, Any], payload: bytes) -> None:
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(bytearray(payload))
        booster.set_param({"nthread": self.n_jobs})
        self.booster_ = booster
        self.n_features_in_ = int(header["n_features"])
        self.best_iteration_ = int(header["best_iteration"])
        self.valid_rmse_log_ = header.get("valid_rmse_log")


def default_xgboost() -> XGBoostPredictor:
    """The per-device estimator: residual over the device's roofline."""
    return XGBoostPredictor(offset_feature=OFFSET_FEATURE)


def train_xgboost(
    engine: Engine, device: str, params: dict[str, Any] | None = None, seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None, test_fraction: float = TEST_FRACTION,
) -> dict[str, Any]:
    """Fit, score on a held-out split, refit on all rows, store; returns the stored row's description.

    The row: one per device (latest wins), target "kernel"; metrics are scored on a held-out
    random split by a model fit on the rest; the stored model is then refit on every row.
    """
    from hwsearch.predictors.dataset import device_backend, load_dataset  # imports torch

    ds = load_dataset(engine, device)
    if len(ds) < 10:
        raise HwsearchError(
            f"device {device!r} has {len(ds)} measured kernels; XGBoost needs at least 10 (answers from {MIN_XGB_ROWS}); "
            f"accepted: profile more (`hwsearch profile --budget standard`) or use the meta-predictor (--kind meta)"
        )
    make = (lambda: default_xgboost().set_params(**(params or {})))  # noqa: E731
    tr, te = random_split(len(ds), test_fraction, seed)
    held = make().fit(ds.X[tr], ds.y_ms[tr])
    pred_te = held.predict(ds.X[te])
    metrics = {"split": "random", "test_fraction": test_fraction, "seed": seed,
               "held_out": score_by_op(pred_te, ds.subset(te)),
               # the points behind the scores, for the dashboard's predicted-vs-measured chart
               "held_out_points": {"op": ds.ops[te].tolist(), "measured_ms": ds.y_ms[te].tolist(),
                                   "predicted_ms": [float(v) for v in pred_te]},
               "noise_floor_median_cov": float(np.median(ds.cov))}
    final = make().fit(ds.X, ds.y_ms)
    dev_id, _ = device_backend(engine, device)
    summary = {**ds.summary(), "feature_version": FEATURE_VERSION, "roofline": ds.roofline.as_dict(),
               "best_iteration": final.best_iteration_, "held_out_model_rows": int(len(tr)),
               "note": "metrics from a model fit on the other rows; the stored model is refit on all rows"}
    pid = store_predictor(engine, kind=XGB_KIND, name=f"xgboost-{device}", device_id=dev_id, devices=[device],
                          target="kernel", train_summary=summary, metrics=metrics, artefact=final.to_bytes())
    return {"id": pid, "kind": XGB_KIND, "device": device, "metrics": metrics, "train_summary": summary}


register_kind(PredictorKind(XGB_KIND, XGBoostPredictor.from_bytes, "xgboost-ubj+json-header", train_xgboost,
                            in_all=lambda rows: rows >= MIN_XGB_ROWS,
                            help=f"per-device XGBoost (answers from {MIN_XGB_ROWS} measured kernels)"))
