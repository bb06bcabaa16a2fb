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

from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError
from hwsearch.predictors.base import check_latency, check_X, pack, unpack

XGB_KIND = "xgboost"
RAW_FORMATS = ("ubj", "json")
# Below this many rows a validation split is too small to pick a round count from.
MIN_SPLIT_ROWS = 20


class XGBoostPredictor:
    """scikit-learn style estimator: ``fit(X, y_ms)``, ``predict(X) -> ms``."""

    kind = XGB_KIND

    def __init__(
        self,
        n_estimators: int = 2000,
        learning_rate: float = 0.05,
        max_depth: int = 6,
        min_child_weight: float = 1.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        early_stopping_rounds: int = 100,
        validation_fraction: float = 0.15,
        small_data_rounds: int = 200,
        offset_feature: int | None = None,
        n_jobs: int = 1,
        random_state: int = 0,
        raw_format: str = "ubj",
    ) -> None:
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.validation_fraction = validation_fraction
        self.small_data_rounds = small_data_rounds
        self.offset_feature = offset_feature
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.raw_format = raw_format
        self.booster_: Any = None

    _PARAMS = ("n_estimators", "learning_rate", "max_depth", "min_child_weight", "subsample", "colsample_bytree",
               "reg_lambda", "early_stopping_rounds", "validation_fraction", "small_data_rounds", "offset_feature",
               "n_jobs", "random_state", "raw_format")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._PARAMS}

    def set_params(self, **params: Any) -> XGBoostPredictor:
        for k, v in params.items():
            if k not in self._PARAMS:
                raise HwsearchError(f"unknown XGBoostPredictor parameter {k!r}; accepted: {', '.join(self._PARAMS)}")
            setattr(self, k, v)
        return self

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

    def _require_fitted(self) -> None:
        if self.booster_ is None:
            raise HwsearchError("XGBoostPredictor is not fitted yet; call fit(X, y) first")

    def predict(self, X: np.ndarray) -> np.ndarray:
        import xgboost as xgb

        self._require_fitted()
        X = check_X(X, self.n_features_in_)
        if X.shape[0] == 0:
            return np.zeros(0)
        margin = self.booster_.predict(xgb.DMatrix(X), iteration_range=(0, self.best_iteration_ + 1))
        return np.exp(margin.astype(np.float64) + self._offset(X))

    def to_bytes(self) -> bytes:
        self._require_fitted()
        header = {"kind": XGB_KIND, "params": self.get_params(), "n_features": self.n_features_in_,
                  "best_iteration": self.best_iteration_, "valid_rmse_log": self.valid_rmse_log_,
                  "raw_format": self.raw_format}
        return pack(header, bytes(self.booster_.save_raw(raw_format=self.raw_format)))

    @classmethod
    def from_bytes(cls, data: bytes) -> XGBoostPredictor:
        import xgboost as xgb

        header, payload = unpack(data, XGB_KIND)
        obj = cls(**header["params"])
        booster = xgb.Booster()
        booster.load_model(bytearray(payload))
        booster.set_param({"nthread": obj.n_jobs})
        obj.booster_ = booster
        obj.n_features_in_ = int(header["n_features"])
        obj.best_iteration_ = int(header["best_iteration"])
        obj.valid_rmse_log_ = header.get("valid_rmse_log")
        return obj
