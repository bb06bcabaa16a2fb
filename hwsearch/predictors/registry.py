"""Train predictors of any registered kind, and answer a device's latency questions.

Kinds (`hwsearch.predictors.kinds`), each joining from its own module:

* ``xgboost``: one per device (latest wins), target "kernel" (`hwsearch.predictors.xgb`).
* ``meta``: the meta-learned predictor, shared by all devices, adapted on the fly for a device
  from its reference-set latencies (hardware embedding) plus its few measured kernels
  (`hwsearch.predictors.meta`).
* ``overhead``, target "model-overhead": the per-device end-to-end term of whole-model
  latency (`hwsearch.predictors.model_latency`).

`best_predictor` answers for a device: its XGBoost predictor when one was trained on enough
kernels, else the adapted meta-predictor; the answer says which. `predict_model` is
`hwsearch predict`: a model's (and plan's) latency on a device through that answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.kernels.dispatch import Dispatch
from hwsearch.kernels.specs import OpSpec
from hwsearch.predictors.base import LatencyPredictor
from hwsearch.predictors.dataset import (
    device_backend,
    hardware_embedding,
    load_dataset,
    load_rows,
    measured_rows,
    no_measurements,
)
from hwsearch.predictors.features import FEATURE_VERSION, Roofline, featurize
from hwsearch.predictors.kinds import ALL, kinds, trainer
from hwsearch.predictors.measured import MeasuredTable
from hwsearch.predictors.meta import ADAPTED_KIND, META_KIND
from hwsearch.predictors.model_latency import ModelLatency, device_overhead
from hwsearch.predictors.store import latest
from hwsearch.predictors.xgb import MIN_XGB_ROWS, XGB_KIND


# -- training ------------------------------------------------------------------------------------
def train(engine: Engine, device: str, kind: str = XGB_KIND, progress: Callable[[str, int, int], None] | None = None,
          params: dict[str, Any] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """`hwsearch train`: one registered kind, or "all" (each trainable kind whose `in_all`
    accepts the device's kernel count: XGBoost is skipped with too few)."""
    chosen = [trainer(kind)] if kind != ALL else [k for k in kinds().values() if k.train is not None]
    device_backend(engine, device)
    _, rows = load_rows(engine, device)
    if not rows:
        raise no_measurements(device)
    return [k.train(engine, device, params=params, seed=seed, progress=progress)  # type: ignore[misc]
            for k in chosen if kind != ALL or k.in_all(len(rows))]


# -- answering -----------------------------------------------------------------------------------
@dataclass
class Answer:
    """A device's latency source: its stored measurements first, its predictor for the rest.

    A kernel measured on the device answers with its measurement (of the implementation the
    device's dispatch runs), or between measured neighbours (`MeasuredTable`); only kernels the
    device's measurements do not cover are predicted. `measured_mask` says which answers were
    measurements.
    """

    device: str
    kind: str
    predictor: LatencyPredictor
    roofline: Roofline
    predictor_id: int | None
    detail: str
    device_id: int = 0
    measured: MeasuredTable = field(default_factory=lambda: MeasuredTable({}), repr=False)
    dispatch: Dispatch | None = field(default=None, repr=False)
    _cache: dict[OpSpec, float] = field(default_factory=dict, repr=False)

    def predict_specs(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """Latency (ms) of each spec: measured where stored, else predicted (each once, cached)."""
        missing = list(dict.fromkeys(s for s in specs if s not in self._cache))
        need = []
        for s in missing:
            ms = self.measured.lookup(s)
            if ms is None:
                need.append(s)
            else:
                self._cache[s] = ms
        if need:
            for s, ms in zip(need, self.predictor.predict(featurize(need, self.roofline)), strict=True):
                self._cache[s] = float(ms)
        return np.array([self._cache[s] for s in specs], dtype=np.float64)

    def measured_mask(self, specs: Sequence[OpSpec]) -> np.ndarray:
        """Which specs answer with a stored measurement."""
        return np.array([s in self.measured for s in specs], dtype=bool)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "id": self.predictor_id, "detail": self.detail, "measured_kernels": len(self.measured)}


def best_predictor(engine: Engine, device: str) -> Answer:
    """The device's measurements, and for the rest its XGBoost predictor if trained on enough
    kernels, else the adapted meta-predictor."""
    dev_id, _ = device_backend(engine, device)
    _, rows, dispatch = measured_rows(engine, device)
    if not rows:
        raise no_measurements(device)
    measured = MeasuredTable({r.spec: r.ms for r in rows})
    xgb_row = latest(engine, XGB_KIND, dev_id)
    if xgb_row is not None and xgb_row.train_summary.get("rows", 0) >= MIN_XGB_ROWS \
            and xgb_row.train_summary.get("feature_version") == FEATURE_VERSION:
        roof = Roofline.from_dict(xgb_row.train_summary["roofline"])
        n = xgb_row.train_summary["rows"]
        return Answer(device, XGB_KIND, xgb_row.load(), roof, xgb_row.id,
                      f"{len(measured)} measured kernels of {device}, xgboost #{xgb_row.id} (trained on {n}) for the rest",
                      dev_id, measured, dispatch)
    meta_row = latest(engine, META_KIND)
    if meta_row is None or meta_row.train_summary.get("feature_version") != FEATURE_VERSION:
        raise HwsearchError(
            f"no predictor answers for device {device!r} ({len(rows)} measured kernels): train its own with "
            f"`hwsearch train --device {device}` (needs >= {MIN_XGB_ROWS} kernels) or the meta-predictor with "
            "`hwsearch train --device NAME --kind meta` on a fully profiled device"
        )
    emb = hardware_embedding(rows, device)
    ds = load_dataset(engine, device)
    adapted = meta_row.load().adapt(emb, ds.X, ds.y_ms)
    return Answer(device, ADAPTED_KIND, adapted, ds.roofline, meta_row.id,
                  f"{len(measured)} measured kernels of {device}, meta #{meta_row.id} (trained on "
                  f"{', '.join(meta_row.devices)}) adapted from {len(ds)} of them ({len(emb)} reference + "
                  f"{len(ds) - len(emb)} others) for the rest", dev_id, measured, dispatch)


def predict_model(engine: Engine, device: str, model: str, plan_file: str | None = None) -> dict[str, Any]:
    """`hwsearch predict`: a model's (and plan's) predicted latency on a device, and who answered."""
    from hwsearch.spaces.catalog import get_model, load_plan

    spec = get_model(model)
    plan = None if plan_file is None else load_plan(plan_file, model)
    answer = best_predictor(engine, device)
    overhead, overhead_id = device_overhead(engine, answer.device_id)
    ml = ModelLatency(spec, answer, overhead)
    est = ml.plan(plan)
    return {
        "device": device,
        "model": model,
        "plan": plan_file,
        "latency_ms": est.total_ms,
        "kernel_ms": est.kernel_ms,
        "overhead_ms": est.overhead_ms,
        "kernels": est.kernels,
        "measured_share": est.measured_share,
        "anchored": ml.anchored,
        "by_op_ms": est.by_op,
        "predictor": answer.describe(),
        "overhead": {"id": overhead_id, **overhead.as_dict()},
    }
