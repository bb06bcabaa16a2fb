"""What a finished study gives back: its Pareto table, plans for its trials, the verified top-k.

A trial's parameters name one choice per decision variable (and a merge schedule); the plan is
rebuilt from them with the job's search space, which depends only on the spec and the device's
capabilities, so any process can turn a trial into a `Plan` without the predictor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.search import pareto, verify
from hwsearch.search.objectives import MERGE_PARAM, OBJECTIVES, assign, decision_variables
from hwsearch.search.spec import SearchSpec
from hwsearch.spaces.knobs import SearchSpace
from hwsearch.spaces.plan import Figure, Plan, Provenance
from hwsearch.spaces.size import plan_kv_bytes

MAX_STORED_FRONT = 200
MIN_TRANSFER_KEYS = 3  # re-timed in-place entries a refit needs before it moves the others
MIN_REFIT_SLOPE_POINTS = 3  # plans timed in place (the anchor one of them) for a model's own ms per MB


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
    variables = decision_variables(space)
    picks = []
    for var in variables:
        label = trial.params.get(var.name)
        if label is None:
            raise HwsearchError(f"trial {trial.number} has no parameter {var.name!r}; accepted: a trial of this job's study")
        picks.append(var.choices[var.labels.index(label)])
    layers, kv = assign(variables, picks, space.model.dtype)
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
        value = float(value)
        if name == "latency" and prov.get("correction") not in (None, 1.0):
            # the estimate the job stands behind after verification (`latency_band` folds the same
            # correction into the band the front is read with): the re-scored estimate x correction
            value *= float(prov["correction"])
            note = f"x {float(prov['correction']):.3f}, the correction its verification measured"
            kw["detail"] = "; ".join(d for d in (kw.get("detail"), note) if d)
        upper = value * (1 + band / 100) if band is not None and name == "latency" else None
        predicted[obj.column] = Figure(value=value, unit=obj.unit or obj.name, upper=upper, provenance=Provenance(
            source=prov.get("source", "analytic"), predictor_id=None if pid is None else str(pid), **kw))
    plan = Plan(model=spec.model_name, device=spec.device, layers=layers, merge=merge, predicted=predicted, kv_cache=kv)
    cache = plan_kv_bytes(space.model, plan)
    if cache:  # beside the size objective (weights only): the KV cache at the model's context
        plan.predicted["kv_cache_mb"] = Figure(value=cache / 1e6, unit="MB", provenance=Provenance(
            source="analytic", detail="exact KV-cache bytes at the model's context (not in size_mb)"))
    return plan


def columns(spec: SearchSpec) -> list[str]:
    from hwsearch.search.objectives import CONSTRAINTS

    names = list(dict.fromkeys([*spec.objectives, *(CONSTRAINTS[k][0] for k in spec.constraints)]))
    return [OBJECTIVES[n].column for n in names]


def front(trials: list[FrozenTrial], spec: SearchSpec, job_id: int | None, dtype: str = "fp32") -> pd.DataFrame:
    return pareto.front_frame(trials, spec.objectives, job_id, columns(spec), dtype, spec.quality_metric)


REFIT_ROUNDS = 3


def _time_with_anchor(spec: SearchSpec, problem: Any, plans: list[Plan], prefill: bool = False
                      ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """`plans` and, beside them, the uncompressed model, timed on the device with their layers in
    place (and, with `prefill`, a decoder's prompt: `verify.time_plans`). Returns (the plans'
    timings, the uncompressed model's)."""
    module = inputs = None
    if spec.custom:
        module, inputs = spec.model, spec.example_inputs
    elif problem.quality_task is not None:
        module = problem.quality_task.model
        _, inputs = verify.torch_model(problem.space.model)
    base = Plan(model=problem.space.model.name, device=spec.device, layers={})
    timings = verify.time_on_device(spec.device, problem.fingerprint, problem.space.model, [*plans, base], module,
                                    inputs, problem.dispatch, True, prefill)
    return timings[: len(plans)], (timings[len(plans)] if len(timings) > len(plans) else None)


def _verify_rows(engine: Engine, job_id: int, spec: SearchSpec, problem: Any, table: pd.DataFrame, by_number: dict[int, FrozenTrial],
                 chosen: list[int], round_no: int, correction: float, band_pct: float,
                 searched: dict[int, float] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Build and time the plans at `chosen` rows of the front (and evaluate quality where there is
    one), their layers in place and, beside them, the uncompressed model (the anchor a refit
    takes, timed in the same rounds). `searched`: each trial's estimate as the search scored it
    (kept beside the one the job stands behind now). Returns (rows, the uncompressed model's timing)."""
    plans = [plan_of(by_number[int(table.trial.iloc[i])], problem.space, spec, problem.tables.provenance) for i in chosen]
    prefill = verify.prefill_of(problem.space.model)
    timings, anchor = _time_with_anchor(spec, problem, plans, prefill is not None)
    state = anchor_drift(problem, anchor)
    first = prefill_estimates(problem, prefill, plans)
    rows = []
    for i, plan, t, ttft in zip(chosen, plans, timings, first, strict=True):
        predicted = float(table.latency_ms.iloc[i]) * state if "latency_ms" in table else None
        row = {"trial": int(table.trial.iloc[i]), "round": round_no,
               "plan": plan.model_dump(mode="json", by_alias=True, exclude_none=True), "predicted_ms": predicted,
               **{k: float(v) for k, v in t.items() if k != "layers_ms"}}
        if state != 1.0:
            row["state"] = state
        if anchor is not None and anchor.get("measured_ms"):
            row["anchor_ms"] = float(anchor["measured_ms"])  # the machine's state it was timed in (`refit_in_place`)
        if searched and row["trial"] in searched:
            row["searched_ms"] = searched[row["trial"]]
        if t.get("layers_ms"):
            row["layers_ms"] = dict(t["layers_ms"])
        if predicted is not None:
            # the estimate the job stands behind in this round (after any refitted correction) and its band
            row["corrected_ms"] = predicted * correction
            row["upper_ms"] = predicted * correction * (1 + band_pct / 100)
            row["lower_ms"] = predicted * correction / (1 + band_pct / 100)
        if ttft is not None:
            row["predicted_prefill_ms"], row["prefill_measured_share"] = ttft
        if problem.quality_task is not None:
            row["predicted_quality"] = float(table.quality.iloc[i])
            row["measured_quality"] = float(problem.quality_task.evaluate(plan, "test"))
        rows.append(row)
    verify.store_verifications(engine, job_id, problem.device_id, rows)
    return rows, anchor


def prefill_estimates(problem: Any, prefill: Any, plans: list[Plan]) -> list[tuple[float, float] | None]:
    """Per plan of a decoder's decode search, the predicted time to first token and the share of
    it that came from stored measurements: the plan's layers on the prompt's prefill (`prefill`,
    `verify.prefill_of` of the searched model; None: not a decode search), composed as any model is (`ModelLatency`, with the device's overhead).
    Only where that prefill was calibrated (`bench model-latency` timed it: lines or in-place
    times of its own): a composition fitted on decode steps, one token a layer, does not carry
    to a prefill of hundreds (on a 2-vCPU EPYC it put tiny_llama's 512-token prefills at 2.3-5.2x
    their measured 33-59 ms, and the anchored kernel sum at 1.3-1.6x). The cache a prefill
    writes in a quantised format is not in its kernels (a prefill reads no cache), so the plan's
    `kv_cache` is left out of the estimate and in the measurement. None elsewhere."""
    from hwsearch.predictors.model_latency import ModelLatency, anchor_key

    overhead = problem.overhead
    if prefill is None or problem.latency_predictor is None or overhead is None:
        return [None] * len(plans)
    key = anchor_key(prefill)
    if not (overhead.model_family_scale.get(key) or overhead.model_inplace_ms.get(key)):
        return [None] * len(plans)
    ml = ModelLatency(prefill, problem.latency_predictor, overhead)
    out: list[tuple[float, float] | None] = []
    for plan in plans:
        est = ml.plan(Plan(model=prefill.name, layers=plan.layers))
        out.append((est.total_ms, est.measured_share))
    return out


def anchor_drift(problem: Any, anchor: dict[str, Any] | None) -> float:
    """How much slower (> 1) the machine ran the uncompressed model, timed in the same rounds as a
    batch of plans, than the anchor the estimates stand on. A plan's estimate is judged at the state
    its own measurement was taken in: a 2-core VM here ran the same MiniLM 13 % slower from one
    verification round to the next, every plan with it, which no latency model can foresee but
    the model timed beside them shows."""
    from hwsearch.predictors.model_latency import anchor_key

    if anchor is None or problem.overhead is None:
        return 1.0
    before = problem.overhead.anchors.get(anchor_key(problem.space.model))
    measured = float(anchor.get("measured_ms") or 0.0)
    return measured / float(before) if before and measured > 0 else 1.0


def to_state(anchor: Mapping[str, Any] | None) -> Callable[[Mapping[str, Any]], float]:
    """The factor that brings a verified row's timings to the machine state `anchor` (the
    uncompressed model, timed in a later round) was taken in: the ratio of the two rounds'
    uncompressed timings (`anchor_ms`, kept on each row); 1 where either is missing."""
    now_ms = float(anchor["measured_ms"]) if anchor is not None and anchor.get("measured_ms") else None
    return lambda row: now_ms / float(row["anchor_ms"]) if now_ms and row.get("anchor_ms") else 1.0


def neighbour_transfer(table: Mapping[str, float], timed: Mapping[str, float]) -> dict[str, float]:
    """Entries of an in-place table that a refit did not time again, moved by what it learned from
    those it did: per format, the median ratio of a re-timed entry to the one it replaces.

    A layer's in-place time depends on what runs around it (a bf16 vit_base layer measured about
    a third slower among the fp32 neighbours of a calibration plan than in an all-compressed plan a
    search picks), so entries learned from calibration plans are off, alike, for the plans a
    search picks; the verified plans' layers show by how much."""
    ratios: dict[str, list[float]] = {}
    for k, ms in timed.items():
        if table.get(k, 0.0) > 0:
            ratios.setdefault(key_format(k), []).append(ms / table[k])
    every = [r for rs in ratios.values() for r in rs]
    if len(every) < MIN_TRANSFER_KEYS:
        return {}
    overall = float(np.median(every))
    per_format = {f: float(np.median(rs)) if len(rs) >= MIN_TRANSFER_KEYS else overall for f, rs in ratios.items()}
    return {k: v * per_format.get(key_format(k), overall) for k, v in table.items() if k not in timed}


def key_format(key: str) -> str:
    """The format an `inplace_key` names (its spec's `format=`)."""
    found = re.search(r"format=([A-Za-z0-9_]+)", key)
    return found.group(1) if found else ""


def refit_in_place(engine: Engine, job_id: int, spec: SearchSpec, problem: Any, verified: list[dict[str, Any]],
                   anchor: dict[str, Any] | None) -> dict[str, Any] | None:
    """Verified plans' measurements join the calibration: each layer they timed in place enters the
    model's in-place table (`Overhead.model_inplace_ms`, by `inplace_key`, the median of its timings
    here), the uncompressed model timed beside them becomes its anchor (its end-to-end time only: its
    layers' hook timings stay out of the table), the device's overhead is stored
    again with them, and `problem.tables` is rebuilt on it. None when nothing was timed (no layer in
    place, no uncompressed model: with the model alone, it is a re-anchoring).

    A machine runs a whole model faster or slower from one hour to the next (a 2-core VM here: the
    same uncompressed MiniLM 42.3 ms at calibration, 36.6 ms five minutes later, every layer with
    it): the whole composition is first scaled by the anchor's change (`Overhead.scaled`), so what
    this refit does not replace speaks of the same machine state as what it does.

    Two more things the verified plans show are learnt here: how the in-place entries they did
    not run move with what they did (`neighbour_transfer`), and, from the time each forward pass
    spent beside its layers against its MB of weights, this model's `weight_ms_per_mb`."""
    from collections import defaultdict

    from hwsearch.predictors.calibration import eviction_ceiling, weight_slope
    from hwsearch.predictors.model_latency import (
        ModelLatency,
        anchor_key,
        full_choices,
        plan_inplace_keys,
        plan_weight_mb,
        store_overhead,
    )
    from hwsearch.search.objectives import latency_terms

    model = problem.space.model
    if problem.latency_predictor is None or problem.overhead is None:
        return None
    timed: dict[str, list[float]] = defaultdict(list)
    # each plan's timings brought to the machine state of this refit's anchor: rounds a minute
    # apart ran the same uncompressed vit_base at 225 and 274 ms on a 2-core VM here
    now = to_state(anchor)
    sources = [(Plan.parse(r["plan"]), {k: v * now(r) for k, v in (r.get("layers_ms") or {}).items()},
                r.get("measured_ms") and r["measured_ms"] * now(r)) for r in verified]
    if anchor is not None and verified:
        # the uncompressed model is one more point of this model's ms per MB of weights, but its
        # layers, timed by hooks, never enter the in-place table: they disagree with its end-to-end
        # timing by as much as the machine moves, and that disagreement becomes the anchor offset
        # every compressed plan carries (taken alone, vit_base's offset went to +36 ms, round 1
        # predicted 20-49 % too slow; taken in a refit, MiniLM's went from -2 to -22 ms and its
        # next round was predicted at 7-15 ms for plans measured at 23-36 ms)
        sources.append((None, anchor.get("layers_ms"), anchor.get("measured_ms")))
    for plan, layers_ms, _ in sources:
        if not layers_ms or plan is None:
            continue
        keys = plan_inplace_keys(model, plan)
        for name, ms in layers_ms.items():
            if name in keys and np.isfinite(ms) and ms > 0:
                timed[keys[name]].append(float(ms))
    if not timed and anchor is None:
        return None
    key = anchor_key(model)
    drift = anchor_drift(problem, anchor)
    overhead = problem.overhead.scaled(drift)
    medians = {k: float(np.median(v)) for k, v in timed.items()}
    moved = neighbour_transfer(overhead.model_inplace_ms.get(key, {}), medians)
    overhead = overhead.with_inplace(key, {**moved, **medians})
    if anchor is not None:
        overhead = overhead.with_anchors({key: float(anchor["measured_ms"])})
    # this model's own ms per MB of weights: what the plans timed in place now (and the anchor
    # beside them) measured beyond the estimate without one, against the MB each streams
    flat = replace(overhead, model_weight_ms_per_mb={**overhead.model_weight_ms_per_mb, key: 0.0})
    ml = ModelLatency(model, problem.latency_predictor, flat)
    # (MB, residual, the whole rest of the pass: total minus its layers, which bounds the slope)
    points = [(plan_weight_mb(model, full_choices(model, plan)), float(total) - ml.plan(plan).total_ms,
               float(total) - sum(v for v in layers_ms.values() if np.isfinite(v)))
              for plan, layers_ms, total in sources if layers_ms and total]
    _, slope = weight_slope(np.array([p[0] for p in points]), np.array([p[1] for p in points]), [key] * len(points),
                            MIN_REFIT_SLOPE_POINTS, np.array([p[2] for p in points]),
                            eviction_ceiling(problem.latency_predictor.roofline.bandwidth_gbs))
    if key in slope:
        overhead = replace(flat, model_weight_ms_per_mb={**flat.model_weight_ms_per_mb, key: slope[key]})
    oid = store_overhead(engine, spec.device, overhead, {"refit_job": job_id},
                         {"refit": "in-place layers of verified plans", "job": job_id, "model": key,
                          "plans": len(verified), "inplace_entries": len(timed)})
    tables = problem.tables
    terms, base, _ = latency_terms(model, tables.variables, tables.merges, problem.latency_predictor, overhead)
    problem.tables = replace(tables, terms={**tables.terms, "latency": terms}, base={**tables.base, "latency": base})
    problem.overhead, problem.overhead_id = overhead, oid
    return {"overhead_id": oid, "inplace_entries": len(timed), "drift": drift, "transferred": len(moved),
            "weight_ms_per_mb": slope.get(key),
            "anchor_ms": None if anchor is None else float(anchor["measured_ms"])}


def _rescored_front(spec: SearchSpec, problem: Any, job_id: int, trials: list[FrozenTrial]
                    ) -> tuple[list[FrozenTrial], pd.DataFrame]:
    """The trials re-scored on the problem's (refitted) tables, and the front they draw."""
    from hwsearch.search.study import rescore

    trials = rescore(problem.tables, trials, spec.objectives, spec.constraints)
    return trials, front(trials, spec, job_id, problem.space.model.dtype)


def verify_and_refit(engine: Engine, job_id: int, spec: SearchSpec, problem: Any, table: pd.DataFrame,
                     by_number: dict[int, FrozenTrial]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float, float]:
    """Verify the top plans; while a measured plan falls outside its band (too slow, or so much faster
    that the estimate hides plans that would fit), misses its estimate by more than the spec's
    `verify_tolerance_pct` or breaks the budget, refit and pick again.

    A refit takes every plan verified so far. First their layers, timed in place, join the model's
    in-place table (`refit_in_place`): the latency table is rebuilt, every trial of the search is
    re-scored on it and the front drawn again, so an error that depends on the plan (one family of
    layers costing more in this model than calibrated) is corrected where it arises. Then this
    model's correction (median measured / re-scored prediction) and a band from the corrected
    residuals (split conformal, never narrower than the calibrated one) cover what is left, and the
    next top plans not yet verified are timed. Returns (verified rows, rounds, correction, band);
    after a refit, `problem.tables` are the refitted ones.
    """
    from hwsearch.predictors.calibration import conformal_band

    budget = spec.constraints.get("latency_ms")
    band = float((problem.tables.provenance.get("latency") or {}).get("band_pct") or 0.0)
    drift = float((problem.tables.provenance.get("latency") or {}).get("retime_band_pct") or 0.0) / 100
    tolerance = spec.verify_tolerance_pct / 100
    correction = 1.0
    verified: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    searched: dict[int, float] = {}
    reanchor = None
    if "latency" in spec.objectives:
        # the machine's state now: the uncompressed model (its layers in place) timed before any
        # plan, and the estimates re-anchored on it (`refit_in_place`: its change scales the
        # table); what the search itself scored is kept beside (`searched_ms`)
        li = spec.objectives.index("latency")
        searched = {n: float(t.values[li]) for n, t in by_number.items()}
        _, now = _time_with_anchor(spec, problem, [])
        reanchor = refit_in_place(engine, job_id, spec, problem, [], now)
        if reanchor is not None:
            trials, table = _rescored_front(spec, problem, job_id, list(by_number.values()))
            by_number = {t.number: t for t in trials}
    fits = np.ones(len(table), dtype=bool)
    for round_no in range(1, REFIT_ROUNDS + 1):
        done = {r["trial"] for r in verified}
        pool = np.flatnonzero(fits & ~table.trial.isin(done).to_numpy())
        chosen = [int(pool[i]) for i in pareto.spread(pool, spec.verify_top_k)]
        if not chosen:
            break
        rows, anchor = _verify_rows(engine, job_id, spec, problem, table, by_number, chosen, round_no, correction, band,
                                    searched)
        verified += rows
        timed = [r for r in rows if r.get("upper_ms") is not None]
        # a verified plan holds its budget only with room for the machine's re-timing drift (the
        # user who times it again must still find it under the budget), and its estimate only
        # within the spec's tolerance: a band wide enough to cover an error does not make it small
        close = all(abs(r["corrected_ms"] - r["measured_ms"]) <= tolerance * r["measured_ms"] for r in timed)
        held = close and all(r["lower_ms"] * (1 - 1e-9) <= r["measured_ms"] <= r["upper_ms"] * (1 + 1e-9)
                             and (budget is None or r["measured_ms"] * (1 + drift) <= budget) for r in timed)
        rounds.append({"round": round_no, "plans": len(rows), "correction": correction, "band_pct": band, "held": held,
                       "within_tolerance": close,
                       "state": anchor_drift(problem, anchor),
                       "predicted_ms": [r["predicted_ms"] for r in rows], "measured_ms": [r["measured_ms"] for r in rows],
                       "searched_ms": [r.get("searched_ms") for r in rows]})
        if round_no == 1 and reanchor is not None:
            rounds[-1]["reanchor"] = reanchor
        if held or not timed:
            break
        refit = refit_in_place(engine, job_id, spec, problem, verified, anchor)
        current = {r["trial"]: r["predicted_ms"] for r in verified}  # each at the state it was timed in
        # re-scored after a refit, every estimate speaks of this round's state: so must the timings
        now = to_state(anchor if refit is not None else None)
        if refit is not None:
            trials, table = _rescored_front(spec, problem, job_id, list(by_number.values()))
            by_number = {t.number: t for t in trials}
            li = spec.objectives.index("latency")
            current = {n: by_number[n].values[li] for n in current}
            rounds[-1]["refit"] = refit
        pred = np.array([current[r["trial"]] for r in verified if r.get("predicted_ms") is not None])
        meas = np.array([r["measured_ms"] * now(r) for r in verified if r.get("predicted_ms") is not None])
        correction = float(np.median(meas / pred))
        band = max(band, conformal_band(correction * pred, meas))
        fits = np.ones(len(table), dtype=bool)
        if budget is not None:
            fits = (table.latency_ms.to_numpy(dtype=float) * correction * (1 + band / 100)) <= budget
    return verified, rounds, correction, band


def rescored(result: dict[str, Any] | None, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """A job's trials as its last refit scored them (`result["rescored"]`: values, objective columns
    and constraints per trial), the stored study being what the search itself saw."""
    from hwsearch.search.optuna_compat import rescored_trial

    scored = (result or {}).get("rescored")
    if not scored:
        return trials
    again = [scored.get(str(t.number)) for t in trials]
    return [t if a is None else rescored_trial(t, a["values"], a["user_attrs"], a["constraints"])
            for t, a in zip(trials, again, strict=True)]


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
    again: dict[str, Any] = {}
    if any("refit" in r or "reanchor" in r for r in rounds):  # the front as the refitted table scores every trial
        trials, table = _rescored_front(spec, problem, job_id, trials)
        cols = columns(spec)
        again = {str(t.number): {"values": list(t.values), "user_attrs": {c: t.user_attrs.get(c) for c in cols},
                                 "constraints": dict(t.constraints)} for t in trials}
    values = table[[OBJECTIVES[o].column for o in spec.objectives]].to_numpy(dtype=float)
    ideal, nadir = pareto.bounds(problem.tables, spec.objectives)
    provenance = {k: dict(v) for k, v in problem.tables.provenance.items()}
    if "latency" in provenance and rounds:
        provenance["latency"].update(band_pct=band, correction=correction)
    return {
        "front_size": int(len(table)),
        "hypervolume": pareto.hypervolume(values, spec.objectives, ideal, nadir, spec.quality_metric) if len(values) else 0.0,
        "pareto": table.head(MAX_STORED_FRONT).to_dict(orient="records"),
        "verified": [{k: v for k, v in r.items() if k not in ("plan", "layers_ms")} for r in verified],
        "verification": {**verify.summary(verified, spec.constraints.get("latency_ms")),
                         "quality_abs_error": quality_error(verified)},
        "rounds": rounds,
        "latency_correction": correction,
        "rescored": again,
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
