"""What a finished study gives back: its Pareto table, plans for its trials, the verified top-k.

A trial's parameters name one choice per decision variable (and a merge schedule); the plan is
rebuilt from them with the job's search space, which depends only on the spec and the device's
capabilities, so any process can turn a trial into a `Plan` without the predictor.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.search import pareto, verify
from hwsearch.search.objectives import MERGE_PARAM, OBJECTIVES, decision_variables
from hwsearch.search.spec import SearchSpec
from hwsearch.spaces.knobs import SearchSpace
from hwsearch.spaces.plan import Figure, Plan, Provenance

MAX_STORED_FRONT = 200


def load_trials(db_url: str, study_name: str) -> list[FrozenTrial]:
    from hwsearch.search.study import rdb_storage

    storage = rdb_storage(db_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finally:
        storage.remove_session()


def search_space(engine: Engine, spec: SearchSpec) -> SearchSpace:
    """The job's space (device capabilities from its stored fingerprint); no predictor needed."""
    from hwsearch.db.engine import session_scope
    from hwsearch.db.models import Device
    from hwsearch.predictors.dataset import device_backend
    from hwsearch.search.problem import device_capabilities

    dev_id, _ = device_backend(engine, spec.device)
    with session_scope(engine) as s:
        fp = dict(s.get(Device, dev_id).fingerprint or {})  # type: ignore[union-attr]
    return SearchSpace(spec.model_description(), device_capabilities(spec.device, fp), spec.knob_values())


def plan_of(trial: FrozenTrial, space: SearchSpace, spec: SearchSpec, provenance: dict[str, Any] | None = None) -> Plan:
    """The plan a trial stands for, with its predicted figures."""
    dtype = space.model.dtype
    layers = {}
    for var in decision_variables(space):
        label = trial.params.get(var.name)
        if label is None:
            raise HwsearchError(f"trial {trial.number} has no parameter {var.name!r}; accepted: a trial of this job's study")
        choice = var.choices[var.labels.index(label)]
        if not choice.is_identity(dtype):
            layers.update(dict.fromkeys(var.layers, choice))
    merge = None
    label = trial.params.get(MERGE_PARAM, "none")
    if label != "none":
        merge = next(m for m in space.merge_options if m.label() == label)
    predicted = {}
    for name, obj in OBJECTIVES.items():
        value = trial.user_attrs.get(obj.column)
        if value is None:
            continue
        prov = dict((provenance or {}).get(name) or {"source": "analytic"})
        kw = {k: prov.get(k) for k in ("device", "kind", "detail")}
        pid = prov.get("predictor_id")
        band = prov.get("band_pct")
        upper = float(value) * (1 + band / 100) if band is not None and name == "latency" else None
        predicted[obj.column] = Figure(value=float(value), unit=obj.unit or obj.name, upper=upper, provenance=Provenance(
            source=prov.get("source", "analytic"), predictor_id=None if pid is None else str(pid), **kw))
    return Plan(model=spec.model_name, device=spec.device, layers=layers, merge=merge, predicted=predicted)


def columns(spec: SearchSpec) -> list[str]:
    from hwsearch.search.objectives import CONSTRAINTS

    names = list(dict.fromkeys([*spec.objectives, *(CONSTRAINTS[k][0] for k in spec.constraints)]))
    return [OBJECTIVES[n].column for n in names]


def front(trials: list[FrozenTrial], spec: SearchSpec, job_id: int | None, dtype: str = "fp32") -> pd.DataFrame:
    return pareto.front_frame(trials, spec.objectives, job_id, columns(spec), dtype, spec.quality_metric)


REFIT_ROUNDS = 3


def _verify_rows(engine: Engine, job_id: int, spec: SearchSpec, problem: Any, table: pd.DataFrame, by_number: dict[int, FrozenTrial],
                 chosen: list[int], round_no: int, correction: float, band_pct: float) -> list[dict[str, Any]]:
    """Build and time the plans at `chosen` rows of the front (and evaluate quality where there is one)."""
    plans = [plan_of(by_number[int(table.trial.iloc[i])], problem.space, spec, problem.tables.provenance) for i in chosen]
    module = inputs = None
    if spec.custom:
        module, inputs = spec.model, spec.example_inputs
    elif problem.quality_task is not None:
        module = problem.quality_task.model
        _, inputs = verify.torch_model(problem.space.model)
    timings = verify.time_on_device(spec.device, problem.fingerprint, problem.space.model, plans, module, inputs,
                                    problem.dispatch)
    rows = []
    for i, plan, t in zip(chosen, plans, timings, strict=True):
        predicted = float(table.latency_ms.iloc[i]) if "latency_ms" in table else None
        row = {"trial": int(table.trial.iloc[i]), "round": round_no,
               "plan": plan.model_dump(mode="json", by_alias=True, exclude_none=True), "predicted_ms": predicted,
               **{k: float(v) for k, v in t.items()}}
        if predicted is not None:
            # the estimate the job stands behind in this round (after any refitted correction) and its band
            row["corrected_ms"] = predicted * correction
            row["upper_ms"] = predicted * correction * (1 + band_pct / 100)
            row["lower_ms"] = predicted * correction / (1 + band_pct / 100)
        if problem.quality_task is not None:
            row["predicted_quality"] = float(table.quality.iloc[i])
            row["measured_quality"] = float(problem.quality_task.evaluate(plan, "test"))
        rows.append(row)
    verify.store_verifications(engine, job_id, problem.device_id, rows)
    return rows


def verify_and_refit(engine: Engine, job_id: int, spec: SearchSpec, problem: Any, table: pd.DataFrame,
                     by_number: dict[int, FrozenTrial]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """Verify the top plans; while a measured plan falls outside its band (too slow, or so much faster
    that the estimate hides plans that would fit) or breaks the budget, refit and pick again.

    A refit takes every plan verified so far: this model's correction (median measured /
    predicted) and a band from the corrected residuals (split conformal, never narrower than the
    calibrated one); the front is re-scored with them (a uniform correction keeps the front, it
    moves which plans fit the budget) and the next top plans not yet verified are timed.
    Returns (verified rows, rounds, correction, band).
    """
    from hwsearch.predictors.calibration import conformal_band

    budget = spec.constraints.get("latency_ms")
    band = float((problem.tables.provenance.get("latency") or {}).get("band_pct") or 0.0)
    correction = 1.0
    verified: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    fits = np.ones(len(table), dtype=bool)
    for round_no in range(1, REFIT_ROUNDS + 1):
        done = {r["trial"] for r in verified}
        pool = np.flatnonzero(fits & ~table.trial.isin(done).to_numpy())
        chosen = [int(pool[i]) for i in pareto.spread(pool, spec.verify_top_k)]
        if not chosen:
            break
        rows = _verify_rows(engine, job_id, spec, problem, table, by_number, chosen, round_no, correction, band)
        verified += rows
        timed = [r for r in rows if r.get("upper_ms") is not None]
        held = all(r["lower_ms"] * (1 - 1e-9) <= r["measured_ms"] <= r["upper_ms"] * (1 + 1e-9)
                   and (budget is None or r["measured_ms"] <= budget) for r in timed)
        rounds.append({"round": round_no, "plans": len(rows), "correction": correction, "band_pct": band, "held": held,
                       "predicted_ms": [r["predicted_ms"] for r in rows], "measured_ms": [r["measured_ms"] for r in rows]})
        if held or not timed:
            break
        pred = np.array([r["predicted_ms"] for r in verified if r.get("predicted_ms") is not None])
        meas = np.array([r["measured_ms"] for r in verified if r.get("predicted_ms") is not None])
        correction = float(np.median(meas / pred))
        band = max(band, conformal_band(correction * pred, meas))
        if budget is not None:
            fits = (table.latency_ms.to_numpy(dtype=float) * correction * (1 + band / 100)) <= budget
    return verified, rounds, correction, band


def finish_search(engine: Engine, db_url: str, job_id: int, study_name: str, spec: SearchSpec, problem: Any) -> dict[str, Any]:
    """Pareto table, top-k verified on the device (latency, and real quality where there is one),
    refitted and verified again while measured plans break their band (`verify_and_refit`)."""
    trials = load_trials(db_url, study_name)
    by_number = {t.number: t for t in trials}
    table = front(trials, spec, job_id, problem.space.model.dtype)
    verified: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    correction, band = 1.0, None
    if spec.verify_top_k and len(table):
        verified, rounds, correction, band = verify_and_refit(engine, job_id, spec, problem, table, by_number)
    values = table[[OBJECTIVES[o].column for o in spec.objectives]].to_numpy(dtype=float)
    ideal, nadir = pareto.bounds(problem.tables, spec.objectives)
    provenance = {k: dict(v) for k, v in problem.tables.provenance.items()}
    if "latency" in provenance and rounds:
        provenance["latency"].update(band_pct=band, correction=correction)
    return {
        "front_size": int(len(table)),
        "hypervolume": pareto.hypervolume(values, spec.objectives, ideal, nadir, spec.quality_metric) if len(values) else 0.0,
        "pareto": table.head(MAX_STORED_FRONT).to_dict(orient="records"),
        "verified": [{k: v for k, v in r.items() if k != "plan"} for r in verified],
        "verification": {**verify.summary(verified, spec.constraints.get("latency_ms")),
                         "quality_abs_error": quality_error(verified)},
        "rounds": rounds,
        "latency_correction": correction,
        "predictor": problem.predictor,
        "provenance": provenance,
        "trials": len(trials),
    }


def latency_band(result: dict[str, Any] | None) -> float | None:
    """A finished job's latency band in %: its calibrated band, widened by any correction
    verification refitted (`verify_and_refit`), so that latency x (1 + band/100) is the upper bound."""
    result = result or {}
    band = ((result.get("provenance") or {}).get("latency") or {}).get("band_pct")
    correction = float(result.get("latency_correction") or 1.0)
    if band is None and correction == 1.0:
        return None
    return 100.0 * (correction * (1.0 + float(band or 0.0) / 100.0) - 1.0)


def quality_error(rows: list[dict[str, Any]]) -> float | None:
    pairs = [(r["predicted_quality"], r["measured_quality"]) for r in rows if "measured_quality" in r]
    return float(np.mean([abs(p - m) for p, m in pairs])) if pairs else None
