"""Train, evaluate, store and load latency predictors (the `predictors` table).

Rows and what they hold:

* ``kind="xgboost"``: one per device (latest wins), target "kernel"; metrics are scored on a
  held-out random split by a model fit on the rest; the stored model is then refit on every row.
* ``kind="meta"``: the meta-learned predictor, shared by all devices (``device_id`` NULL, the
  training devices in ``devices``); adapted on the fly for a device from its reference-set
  latencies (hardware embedding) plus its few measured kernels.
* ``kind="overhead"``, target "model-overhead": the per-device end-to-end term of whole-model
  latency (see :mod:`hwsearch.predictors.model_latency`).

`best_predictor` answers for a device: its XGBoost predictor when one was trained on enough
kernels, else the adapted meta-predictor; the answer says which.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, Predictor
from hwsearch.errors import HwsearchError
from hwsearch.kernels.dispatch import Dispatch
from hwsearch.kernels.specs import OpSpec
from hwsearch.predictors.base import LatencyPredictor
from hwsearch.predictors.dataset import (
    Dataset,
    device_backend,
    hardware_embedding,
    load_dataset,
    load_rows,
    measured_rows,
    no_measurements,
)
from hwsearch.predictors.features import FEATURE_VERSION, OFFSET_FEATURE, Roofline, featurize
from hwsearch.predictors.measured import MeasuredTable
from hwsearch.predictors.meta import ADAPTED_KIND, META_KIND, AdaptedMetaPredictor, MetaPredictor, MetaTask
from hwsearch.predictors.metrics import mape, spearman, within_pct
from hwsearch.predictors.xgb import XGB_KIND, XGBoostPredictor
from hwsearch.profilers.sampling import reference_set

KINDS = ("xgboost", "meta", "all")
# A per-device XGBoost model answers only when trained on at least this many kernels.
MIN_XGB_ROWS = 100
# A device takes part in meta-training with its full reference set and this many kernels.
MIN_META_ROWS = 40
META_SHOTS = 10
TEST_FRACTION = 0.2
ARTEFACT_FORMATS = {XGB_KIND: "xgboost-ubj+json-header", META_KIND: "torch-state-dict", "overhead": "json"}
DEFAULT_META_PARAMS: dict[str, Any] = {"steps": 600, "support_min": 5, "support_max": 40}


def default_xgboost() -> XGBoostPredictor:
    """The per-device estimator: residual over the device's roofline."""
    return XGBoostPredictor(offset_feature=OFFSET_FEATURE)


# -- metrics -----------------------------------------------------------------------------------
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


def random_split(n: int, test_fraction: float = TEST_FRACTION, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices of a seeded random split."""
    if not 0 < test_fraction < 1:
        raise HwsearchError(f"test fraction {test_fraction} is out of range; accepted: between 0 and 1")
    idx = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return np.sort(idx[n_test:]), np.sort(idx[:n_test])


def extrapolation_split(ds: Dataset, test_fraction: float = TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """(train, test): within each op family the largest kernels (by FLOPs, then bytes) are held out."""
    test: list[int] = []
    ops = ds.ops
    for op in sorted(set(ops.tolist())):
        rows = np.flatnonzero(ops == op)
        size = np.array([ds.specs[i].flops for i in rows])
        bytes_col = ds.X[rows, :][:, _bytes_column()]
        order = rows[np.lexsort((bytes_col, size))]
        k = int(round(test_fraction * len(rows)))
        if k and len(rows) - k >= 2:
            test += order[-k:].tolist()
    test_arr = np.array(sorted(test), dtype=int)
    return np.setdiff1d(np.arange(len(ds)), test_arr), test_arr


def _bytes_column() -> int:
    from hwsearch.predictors.features import INDEX

    return INDEX["log_bytes"]


# -- storage -----------------------------------------------------------------------------------
def store_predictor(
    engine: Engine, *, kind: str, name: str, device_id: int | None, devices: Sequence[str], target: str,
    train_summary: dict[str, Any], metrics: dict[str, Any], artefact: bytes, artefact_format: str,
) -> int:
    """Insert one predictor row (one transaction) and return its id."""
    with session_scope(engine) as session:
        row = Predictor(kind=kind, name=name, device_id=device_id, devices=list(devices), target=target,
                        train_summary=train_summary, metrics=metrics, artefact=artefact,
                        artefact_format=artefact_format)
        session.add(row)
        session.flush()
        return int(row.id)


@dataclass
class StoredPredictor:
    id: int
    kind: str
    name: str
    device_id: int | None
    devices: list[str]
    target: str
    train_summary: dict[str, Any]
    metrics: dict[str, Any]
    artefact: bytes = field(repr=False)
    artefact_format: str = ""

    def load(self) -> Any:
        """The predictor object (never unpickled); an artefact that does not load is one line."""
        try:
            return self._load()
        except Exception as err:  # noqa: BLE001 - xgboost, torch and json each fail their own way on bad bytes
            reason = " ".join(str(err).split())[:200]
            if not isinstance(err, HwsearchError):
                reason = f"{type(err).__name__}: {reason}"
            raise HwsearchError(
                f"stored {self.kind} predictor #{self.id} ({self.name}) cannot be read ({reason}); "
                f"accepted: retrain it (`hwsearch train --device DEVICE`), which stores a new one"
            ) from None

    def _load(self) -> Any:
        if self.kind == XGB_KIND:
            return XGBoostPredictor.from_bytes(self.artefact)
        if self.kind == META_KIND:
            return MetaPredictor.from_bytes(self.artefact)
        if self.kind == ADAPTED_KIND:
            return AdaptedMetaPredictor.from_bytes(self.artefact)
        if self.kind == "overhead":
            from hwsearch.predictors.model_latency import Overhead

            return Overhead.from_bytes(self.artefact)
        raise HwsearchError(f"unknown stored predictor kind {self.kind!r}; accepted: xgboost, meta, meta-adapted, overhead")

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "devices": self.devices, "target": self.target,
                "metrics": self.metrics, "train_summary": self.train_summary}


def latest(engine: Engine, kind: str, device_id: int | None = None, target: str | None = None) -> StoredPredictor | None:
    """The newest row of `kind` (for a device, or shared when device_id is None)."""
    with session_scope(engine) as session:
        q = select(Predictor).where(Predictor.kind == kind)
        q = q.where(Predictor.device_id.is_(None) if device_id is None else Predictor.device_id == device_id)
        if target is not None:
            q = q.where(Predictor.target == target)
        row = session.scalars(q.order_by(Predictor.id.desc()).limit(1)).first()
        if row is None:
            return None
        return StoredPredictor(row.id, row.kind, row.name, row.device_id, list(row.devices or []), row.target,
                               dict(row.train_summary or {}), dict(row.metrics or {}), bytes(row.artefact),
                               row.artefact_format)


# -- training ------------------------------------------------------------------------------------
def train_xgboost(
    engine: Engine, device: str, params: dict[str, Any] | None = None, test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, score on a held-out split, refit on all rows, store; returns the stored row's description."""
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
                          target="kernel", train_summary=summary, metrics=metrics, artefact=final.to_bytes(),
                          artefact_format=ARTEFACT_FORMATS[XGB_KIND])
    return {"id": pid, "kind": XGB_KIND, "device": device, "metrics": metrics, "train_summary": summary}


def _meta_candidates(engine: Engine) -> list[tuple[str, Dataset, np.ndarray]]:
    """Devices fit for meta-training: full reference set and at least MIN_META_ROWS kernels."""
    with session_scope(engine) as session:
        names = session.scalars(select(Device.name).order_by(Device.name)).all()
    out = []
    for name in names:
        _, rows = load_rows(engine, name)
        if len(rows) < MIN_META_ROWS:
            continue
        try:
            emb = hardware_embedding(rows, name)
        except HwsearchError:
            continue
        out.append((name, load_dataset(engine, name), emb))
    return out


def _shots(ds: Dataset, pool: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The reference kernels (always) plus `n` random other rows drawn from `pool`."""
    ref = set(reference_set())
    is_ref = np.array([s in ref for s in ds.specs])
    pool = np.asarray(pool, dtype=int)
    extra = pool[~is_ref[pool]]
    rng = np.random.default_rng(seed)
    pick = rng.choice(extra, size=min(n, len(extra)), replace=False) if len(extra) else np.zeros(0, dtype=int)
    return np.concatenate([np.flatnonzero(is_ref), np.sort(pick)]).astype(int)


def train_meta(
    engine: Engine, device: str, params: dict[str, Any] | None = None, shots: int = META_SHOTS, seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Meta-train on every device fit for it; score few-shot adaptation on `device`; store.

    Scoring: with other devices available, `device` is left out of meta-training (a new device);
    otherwise every device's rows are split and the held-out rows of `device` are scored. Either
    way the adapted predictor sees only the reference set plus `shots` other kernels.
    """
    device_backend(engine, device)  # unknown device -> one-line error listing devices
    _, rows = load_rows(engine, device)
    if not rows:
        raise no_measurements(device)
    cands = _meta_candidates(engine)
    if not cands:
        raise HwsearchError(
            f"meta-training needs a device with its full reference set and at least {MIN_META_ROWS} measured kernels; "
            "none has that yet; accepted: profile one (`hwsearch profile --local --budget quick`)"
        )
    hp = {**DEFAULT_META_PARAMS, **(params or {}), "seed": seed}
    stage = (lambda name: (lambda i, n: progress(name, i, n)) if progress else None)  # noqa: E731
    names = [c[0] for c in cands]
    others = [c for c in cands if c[0] != device]
    target = next((c for c in cands if c[0] == device), None)
    metrics: dict[str, Any] = {"shots": shots, "seed": seed}
    if target is not None and len(target[1]) >= len(reference_set()) + shots + 10:
        _, ds, emb = target
        if others:
            model = MetaPredictor(**hp).meta_fit([MetaTask(n, d.X, d.y_ms, e) for n, d, e in others],
                                                 progress=stage("meta-training (held-out score)"))
            seen = _shots(ds, np.arange(len(ds)), shots, seed)
            test = np.setdiff1d(np.arange(len(ds)), seen)
            metrics["split"] = "device left out of meta-training"
        else:
            parts = {}
            for n, d, _ in cands:
                parts[n] = random_split(len(d), TEST_FRACTION, seed)
            model = MetaPredictor(**hp).meta_fit(
                [MetaTask(n, d.X[parts[n][0]], d.y_ms[parts[n][0]], e) for n, d, e in cands],
                progress=stage("meta-training (held-out score)"))
            seen = _shots(ds, parts[device][0], shots, seed)
            test = parts[device][1]
            metrics["split"] = "rows: the device's held-out rows (no other device to leave it out)"
        adapted = model.adapt(emb, ds.X[seen], ds.y_ms[seen])
        metrics["held_out"] = score_by_op(adapted.predict(ds.X[test]), ds.subset(test))
        metrics["adapted_on"] = int(len(seen))
    else:
        metrics["split"] = "none: the device has too few kernels to hold any out"
    final = MetaPredictor(**hp).meta_fit([MetaTask(n, d.X, d.y_ms, e) for n, d, e in cands],
                                         progress=stage("meta-training (stored model)"))
    summary = {"devices": {n: len(d) for n, d, _ in cands}, "feature_version": FEATURE_VERSION,
               "reference_kernels": len(reference_set()), "params": final.get_params()}
    pid = store_predictor(engine, kind=META_KIND, name="meta", device_id=None, devices=names, target="kernel",
                          train_summary=summary, metrics={device: metrics}, artefact=final.to_bytes(),
                          artefact_format=ARTEFACT_FORMATS[META_KIND])
    return {"id": pid, "kind": META_KIND, "device": device, "devices": names, "metrics": metrics,
            "train_summary": summary}


def train(engine: Engine, device: str, kind: str = "xgboost", progress: Callable[[str, int, int], None] | None = None,
          **kwargs: Any) -> list[dict[str, Any]]:
    """`hwsearch train`: xgboost, meta or all (XGBoost skipped when the device has too few kernels)."""
    if kind not in KINDS:
        raise HwsearchError(f"unknown predictor kind {kind!r}; accepted: {', '.join(KINDS)}")
    device_backend(engine, device)
    _, rows = load_rows(engine, device)
    if not rows:
        raise no_measurements(device)
    out = []
    if kind in ("xgboost", "all") and (kind == "xgboost" or len(rows) >= MIN_XGB_ROWS):
        out.append(train_xgboost(engine, device, **kwargs))
    if kind in ("meta", "all"):
        out.append(train_meta(engine, device, progress=progress,
                              **{k: v for k, v in kwargs.items() if k in ("params", "seed")}))
    return out


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
