"""The dashboard's data layer: cached, narrow queries over our tables and Optuna's.

Every function takes the database URL (a string, so Streamlit can hash it for its cache) and
returns plain data or a DataFrame; none draws anything, so tests call them directly. Queries
read only the columns a page shows: a 10,000-trial study is one query for its objective values
(three floats a trial) and one for its constraint values, both cached for a few seconds so a
running job still moves; a trial's plan, the only large thing, is read one trial at a time,
when it is chosen. Which trials are on the front, and a prediction's error, are the search
package's definitions (`pareto.front_mask`, `accuracy.error_pct`), applied here to those values
so a job mid-run shows too. Optuna's tables are read only through `search.trials` (which reaches
them through `search.optuna_compat`), never with SQL of its own.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.dashboard import ENV_DB
from hwsearch.db.engine import database_url, open_db, session_scope
from hwsearch.db.models import Device, Job, Predictor, Verification
from hwsearch.search.accuracy import error_pct

TTL_LIVE_S = 5  # jobs and studies: a running job's progress shows within a few seconds
TTL_SLOW_S = 60  # devices, predictors: change only when someone profiles or trains
TTL_FIXED_S = 3600  # a finished trial's plan never changes
PLAN_ATTR = "plan"  # the trial user attribute holding the plan document
PAGE_SIZE = 100
PARCOORDS_MAX = 2000  # lines in the parallel-coordinates view (the newest trials beyond it)
PARCOORDS_AXES = 12  # decisions shown at first beside the objectives (more do not fit side by side)
IMPORTANCE_AUTO_MAX = 3000  # trials up to which knob importance is computed without asking


def db_url() -> str:
    """The URL the app was started with (HWSEARCH_DB), or the default SQLite file."""
    return database_url(os.environ.get(ENV_DB) or None)


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """One engine per URL for the whole server, read-only: the dashboard never writes to a database
    nor migrates it (a database at another schema is one line saying what to run)."""
    return open_db(url, read_only=True)


def clear_caches() -> None:
    """Forget every cached query (the sidebar's Refresh button)."""
    st.cache_data.clear()


# -- jobs -------------------------------------------------------------------------------------
def spec_field(spec: dict[str, Any] | None, *keys: str) -> Any:
    """The first of `keys` present in a job spec (specs name the model and device at the top level)."""
    for key in keys:
        value = (spec or {}).get(key)
        if value not in (None, ""):
            return value
    return None


def _device_label(spec: dict[str, Any] | None) -> str | None:
    value = spec_field(spec, "device", "devices")
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return None if value is None else str(value)


@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def jobs(url: str) -> pd.DataFrame:
    """Jobs, newest first: status, progress (0..1), device, model, objectives, times, study name."""
    cols = [Job.id, Job.name, Job.status, Job.spec, Job.study_name, Job.n_trials_done, Job.n_trials_total,
            Job.heartbeat_at, Job.created_at, Job.started_at, Job.finished_at, Job.error]
    with session_scope(engine(url)) as session:
        rows = session.execute(select(*cols).order_by(Job.id.desc())).all()
    records = []
    for r in rows:
        total = int(r.n_trials_total or 0)
        done = int(r.n_trials_done or 0)
        records.append({
            "id": r.id, "name": r.name, "status": r.status,
            "progress": min(done / total, 1.0) if total else (1.0 if r.status == "done" else 0.0),
            "trials": f"{done} / {total}" if total else str(done),
            "device": _device_label(r.spec), "model": spec_field(r.spec, "model"),
            "objectives": " × ".join(spec_field(r.spec, "objectives") or []),
            "created": r.created_at, "started": r.started_at, "finished": r.finished_at,
            "heartbeat": r.heartbeat_at, "error": r.error, "study_name": r.study_name,
        })
    columns = ["id", "name", "status", "progress", "trials", "device", "model", "objectives", "created", "started",
               "finished", "heartbeat", "error", "study_name"]
    return pd.DataFrame.from_records(records, columns=columns)


@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def job(url: str, job_id: int) -> dict[str, Any] | None:
    """One job row as a dict (spec and result included), or None."""
    with session_scope(engine(url)) as session:
        row = session.get(Job, job_id)
        if row is None:
            return None
        return {c.name: getattr(row, c.name) for c in Job.__table__.columns}


# -- studies ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyMeta:
    """What the charts need to know about a study: objective names, directions, trial counts."""

    study_id: int
    objectives: tuple[str, ...]
    directions: tuple[str, ...]  # "minimize" / "maximize"
    states: dict[str, int]

    @property
    def complete(self) -> int:
        return self.states.get("COMPLETE", 0)


def _objective_names(spec: dict[str, Any] | None, stored: list[str] | None, n: int) -> tuple[str, ...]:
    """Column names of a study's objectives: Optuna's metric names, else the spec's objectives."""
    from hwsearch.search.objectives import OBJECTIVES

    if stored and len(stored) == n:
        return tuple(str(s) for s in stored)
    objectives = spec_field(spec, "objectives")
    if isinstance(objectives, list) and len(objectives) == n:
        return tuple(OBJECTIVES[o].column if o in OBJECTIVES else str(o) for o in objectives)
    return tuple(f"objective {i}" for i in range(n))


def quality_metric_of(spec: dict[str, Any] | None) -> str:
    """The quality metric of a job's model (its direction is the quality objective's)."""
    from hwsearch.search.quality_metrics import model_metric

    return model_metric(spec_field(spec, "model")).name


def constraint_bounds(spec: dict[str, Any] | None) -> dict[str, tuple[str, float]]:
    """A job's constraints as {objective column: ("max" | "min", bound)} for drawing lines."""
    from hwsearch.search.objectives import CONSTRAINTS, OBJECTIVES, constraint

    out = {}
    for key, bound in (spec_field(spec, "constraints") or {}).items():
        if key in CONSTRAINTS and bound is not None:
            name, kind = constraint(key, quality_metric_of(spec))
            out[OBJECTIVES[name].column] = (kind, float(bound))
    return out


@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def study_meta(url: str, study_name: str | None, spec: dict[str, Any] | None = None) -> StudyMeta | None:
    """Objectives and trial counts of an Optuna study in this database (None if it is not there yet)."""
    from hwsearch.search.trials import study_summary

    found = study_summary(engine(url), study_name) if study_name else None
    if found is None:
        return None
    names = _objective_names(spec, found.metric_names, len(found.directions))
    return StudyMeta(found.study_id, names, found.directions, found.states)


@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def trial_values(url: str, study_name: str, spec: dict[str, Any] | None = None) -> pd.DataFrame:
    """Completed trials: `number`, one column per objective, `feasible` (every constraint value <= 0).

    Read with the search package's `study_values` (Optuna's tables, no parameters loaded).
    """
    from hwsearch.search.trials import study_values

    meta = study_meta(url, study_name, spec)
    columns = ["number", *(meta.objectives if meta else ()), "feasible"]
    if meta is None or not meta.objectives:
        return pd.DataFrame(columns=columns)
    nums, vals, feasible = study_values(engine(url), meta.study_id, len(meta.objectives))
    df = pd.DataFrame(vals, columns=list(meta.objectives))
    df.insert(0, "number", nums)
    df["feasible"] = feasible
    return df[columns]


@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def study_front(url: str, job_id: int) -> tuple[pd.DataFrame, StudyMeta | None]:
    """A job's completed trials with `pareto` (the search package's `front_mask`, as the CLI and
    `job.pareto()` count it) and its verifications.

    Columns: number, the objectives, feasible, pareto, verified, predicted_ms, measured_ms, error_pct.
    """
    from hwsearch.search.pareto import front_mask

    row = job(url, job_id)
    if row is None or not row.get("study_name"):
        return pd.DataFrame(), None
    meta = study_meta(url, row["study_name"], row["spec"])
    df = trial_values(url, row["study_name"], row["spec"]).sort_values("number", kind="stable").reset_index(drop=True)
    again = (row.get("result") or {}).get("rescored") or {}
    if again and meta is not None and len(df):  # as the job's last refit scored them (`results.rescored`)
        hit = df["number"].astype(str).map(again)
        known = hit.notna().to_numpy()
        if known.any():
            df.loc[known, list(meta.objectives)] = np.array([r["values"] for r in hit[known]], dtype=float)
            df.loc[known, "feasible"] = [all(v <= 0 for v in r["constraints"].values()) for r in hit[known]]
    df["pareto"] = False
    if meta is not None and len(df):
        df["pareto"] = front_mask(df[list(meta.objectives)].to_numpy(), meta.directions, df["feasible"].to_numpy())
    ver = verifications(url, job_id)
    if len(ver):
        last = ver.sort_values("id").groupby("trial_number").last()
        df = df.merge(last[["predicted_ms", "measured_ms", "error_pct"]], left_on="number", right_index=True,
                      how="left")
    else:
        df[["predicted_ms", "measured_ms", "error_pct"]] = np.nan
    df["verified"] = df["measured_ms"].notna()
    return df, meta


def trials_page(df: pd.DataFrame, page: int, size: int = PAGE_SIZE, sort_by: str | None = None,
                ascending: bool = True, only_front: bool = False) -> tuple[pd.DataFrame, int]:
    """One page of a study's trial table (sorted, optionally the front only) and the page count."""
    view = df[df["pareto"]] if only_front and "pareto" in df else df
    if sort_by and sort_by in view:
        view = view.sort_values(sort_by, ascending=ascending, kind="stable")
    pages = max(1, -(-len(view) // size))
    page = min(max(page, 1), pages)
    return view.iloc[(page - 1) * size: page * size], pages


@st.cache_resource(show_spinner=False)
def _storage(url: str) -> Any:
    from hwsearch.search.study import rdb_storage

    return rdb_storage(url, read_only=True)


@st.cache_resource(show_spinner=False, ttl=TTL_SLOW_S)
def _space(url: str, job_id: int) -> tuple[Any, Any]:
    """A job's SearchSpec and search space (what turns a trial's parameters back into a plan)."""
    from hwsearch.search.results import search_space
    from hwsearch.search.spec import SearchSpec

    row = job(url, job_id)
    spec = SearchSpec.from_doc(dict(row["spec"]))
    return spec, search_space(engine(url), spec)


@st.cache_data(ttl=TTL_FIXED_S, show_spinner=False)
def trial_plan(url: str, job_id: int, number: int) -> dict[str, Any] | None:
    """The plan document of one trial, or None when the study holds no such trial and nothing verified it.

    A search trial's parameters are turned back into its plan by the search package
    (`results.plan_of`, one trial loaded, not the study); a trial that carries a ready `plan`
    user attribute (a study written by another tool) gives that; else the plan it was verified with.
    Raises HwsearchError when the job's space cannot be rebuilt (its device was deleted, say).
    """
    row = job(url, job_id)
    if row is None:
        return None
    from hwsearch.search.trials import trial_attr

    found = trial_attr(engine(url), row["study_name"], number, PLAN_ATTR) if row.get("study_name") else None
    if found is not None and found[1]:
        return json.loads(found[1]) if isinstance(found[1], str) else found[1]
    if found is not None:
        trial = _storage(url).get_trial(found[0])
        if trial.params:
            from hwsearch.search.results import plan_of

            spec, space = _space(url, job_id)
            plan = plan_of(trial, space, spec, (row.get("result") or {}).get("provenance"))
            return json.loads(plan.to_json())
    with session_scope(engine(url)) as session:
        return session.scalars(
            select(Verification.plan).where(Verification.job_id == job_id, Verification.trial_number == number)
            .order_by(Verification.id.desc()).limit(1)
        ).first()


def latency_band(row: dict[str, Any] | None) -> float | None:
    """The job's latency band in % (its predicted latencies' upper bound), if it has one
    (`results.latency_band`: the calibrated band and any correction verification refitted)."""
    from hwsearch.search.results import latency_band as band_of

    return band_of((row or {}).get("result"))


# -- how the search went ----------------------------------------------------------------------
def objective_names(columns: tuple[str, ...] | list[str]) -> list[str] | None:
    """The search objectives (`latency`, ...) behind a study's columns; None for a study of another tool."""
    from hwsearch.search.objectives import OBJECTIVES

    by_column = {o.column: name for name, o in OBJECTIVES.items()}
    names = [by_column.get(c) for c in columns]
    return None if None in names else names  # type: ignore[return-value]


@st.cache_data(ttl=TTL_FIXED_S, show_spinner=False)
def hypervolume_history(url: str, job_id: int, n_trials: int) -> tuple[pd.DataFrame, str]:
    """Hypervolume of the feasible trials among the first t, for every t (`pareto.hv_curve`), and
    how it is normalised: to the space's ideal and nadir stored with a finished job (the number
    `hwsearch jobs show` prints as HV), else to the completed trials' own best and worst.
    `n_trials` only keys the cache, so a running job is recomputed as it grows."""
    from hwsearch.search import pareto

    df, meta = study_front(url, job_id)
    empty = pd.DataFrame(columns=["trial", "hypervolume"])
    names = objective_names(meta.objectives) if meta is not None else None
    if meta is None or df.empty or names is None or len(names) < 2:
        return empty, "Hypervolume needs two or more of hwsearch's objectives."
    values = df[list(meta.objectives)].to_numpy(dtype=float)
    feasible = df["feasible"].to_numpy(dtype=bool)
    if not feasible.any():
        return empty, "No feasible trial yet."
    row = job(url, job_id) or {}
    metric = quality_metric_of(row.get("spec"))
    stored = (row.get("result") or {}).get("bounds")
    if stored and len(stored[0]) == len(names):
        ideal, nadir = np.asarray(stored[0], dtype=float), np.asarray(stored[1], dtype=float)
        note = "Normalised to the space's ideal and nadir point, as the HV `hwsearch jobs show` prints."
    else:
        sign = pareto.signs(names, metric)
        signed = values[feasible] * sign
        ideal, nadir = np.nanmin(signed, 0) * sign, np.nanmax(signed, 0) * sign
        note = ("Normalised to the best and worst of the completed trials (the space's own bounds are stored "
                "when the job finishes).")
    curve = pareto.hv_curve(values, feasible, names, ideal, nadir, metric)
    return pd.DataFrame({"trial": np.arange(1, len(curve) + 1), "hypervolume": curve}), note


@st.cache_data(ttl=TTL_FIXED_S, show_spinner=False)
def trial_choices(url: str, job_id: int, numbers: tuple[int, ...]) -> tuple[pd.DataFrame, dict[str, tuple[str, ...]]]:
    """What each of the trials `numbers` chose per decision: a `number` column and one column per
    decision (the index of its choice), in the study's order; and each decision's choice labels."""
    from hwsearch.search.trials import trial_params

    row = job(url, job_id)
    empty: tuple[pd.DataFrame, dict[str, tuple[str, ...]]] = (pd.DataFrame(columns=["number"]), {})
    if row is None or not row.get("study_name") or not numbers:
        return empty
    rows = trial_params(engine(url), row["study_name"], numbers)
    if not rows:
        return empty
    labels: dict[str, tuple[str, ...]] = {}
    for _, name, _, dist in rows:
        if name not in labels:
            labels[name] = tuple(str(c) for c in json.loads(dist).get("attributes", {}).get("choices", ()))
    wide = pd.DataFrame(rows, columns=["number", "param", "value", "dist"]).pivot(index="number", columns="param",
                                                                                  values="value")
    return wide[list(labels)].reset_index(), labels


@st.cache_data(ttl=TTL_FIXED_S, show_spinner=False)
def importances(url: str, job_id: int, n_trials: int) -> pd.DataFrame:
    """Each decision's importance for each objective, by Optuna's default evaluator (PED-ANOVA:
    how much a decision's choices differ between the best trials and all of them), normalised
    per objective. `n_trials` only keys the cache, so a running job is recomputed as it grows."""
    import optuna

    row = job(url, job_id)
    df, meta = study_front(url, job_id)
    out = pd.DataFrame(columns=["param", "objective", "importance"])
    if row is None or meta is None or df.empty:
        return out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=row["study_name"], storage=_storage(url))
    parts = []
    for i, (column, direction) in enumerate(zip(meta.objectives, meta.directions, strict=True)):
        sign = 1.0 if direction == "minimize" else -1.0  # the evaluator ranks low targets best
        with warnings.catch_warnings():  # it warns that low targets rank best, which the sign sees to
            warnings.simplefilter("ignore", UserWarning)
            scores = optuna.importance.get_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i])
        parts += [{"param": k, "objective": column, "importance": float(v)} for k, v in scores.items()]
    return pd.DataFrame(parts, columns=out.columns) if parts else out


@st.cache_resource(show_spinner=False, ttl=TTL_SLOW_S)
def _model_latency(url: str, job_id: int) -> Any:
    """The job's device predictor composed for its model (`search.breakdown.model_latency`)."""
    from hwsearch.search.breakdown import model_latency

    spec, _ = _space(url, job_id)
    return model_latency(engine(url), spec.device, spec.model_description())


@st.cache_data(ttl=TTL_SLOW_S, show_spinner=False)
def layer_latency(url: str, job_id: int, plan_json: str) -> pd.DataFrame:
    """A plan's predicted latency per layer on the job's device (`search.breakdown.layer_latency`)."""
    from hwsearch.search.breakdown import layer_latency as breakdown
    from hwsearch.spaces.plan import Plan

    return breakdown(_model_latency(url, job_id), Plan.from_json(plan_json))


# -- verification -----------------------------------------------------------------------------
@st.cache_data(ttl=TTL_LIVE_S, show_spinner=False)
def verifications(url: str, job_id: int | None = None, device: str | None = None) -> pd.DataFrame:
    """Verified plans: trial, device, predicted vs measured latency (ms), the measured spread and
    `error_pct` (`hwsearch.search.accuracy.error_pct`, the CLI's and API's sign convention)."""
    q = (select(Verification.id, Verification.job_id, Verification.trial_number, Device.name.label("device"),
                Verification.predicted_ms, Verification.measured_ms, Verification.measured_p10_ms,
                Verification.measured_p90_ms, Verification.created_at)
         .join(Device, Device.id == Verification.device_id).order_by(Verification.id))
    if job_id is not None:
        q = q.where(Verification.job_id == job_id)
    if device is not None:
        q = q.where(Device.name == device)
    with session_scope(engine(url)) as session:
        rows = session.execute(q).all()
    cols = ["id", "job_id", "trial_number", "device", "predicted_ms", "measured_ms", "measured_p10_ms",
            "measured_p90_ms", "created_at"]
    df = pd.DataFrame(rows, columns=cols)
    df["error_pct"] = error_pct(df["predicted_ms"].astype(float), df["measured_ms"].astype(float))
    return df


# -- compare ----------------------------------------------------------------------------------
def fronts(url: str, job_ids: list[int], measured: bool = True) -> tuple[pd.DataFrame, tuple[str, ...], tuple[str, ...]]:
    """Several jobs' points on their shared objectives, one row per point with `job` and `kind`:
    "predicted" (the front, as the search scored it) and, with `measured`, "measured" (its
    verified plans with the latency measured on the device in `latency_ms`)."""
    parts, shared, directions = [], None, {}
    table = jobs(url).set_index("id")
    for jid in job_ids:
        df, meta = study_front(url, jid)
        if meta is None or not len(df):
            continue
        name = table.loc[jid, "name"] if jid in table.index else str(jid)
        device = table.loc[jid, "device"] if jid in table.index else None
        label = f"#{jid} {name}" + (f" ({device})" if device else "")
        kinds = [("predicted", df[df["pareto"]].copy())]
        if measured and "latency_ms" in meta.objectives and df["verified"].any():
            ver = df[df["verified"]].copy()
            ver["latency_ms"] = ver["measured_ms"]
            kinds.insert(0, ("measured", ver))
        for kind, part in kinds:
            part["job_id"], part["job"], part["kind"] = jid, label, kind
            parts.append(part)
        directions.update(zip(meta.objectives, meta.directions, strict=True))
        shared = list(meta.objectives) if shared is None else [o for o in shared if o in meta.objectives]
    if not parts:
        return pd.DataFrame(), (), ()
    objectives = tuple(shared or ())
    keep = ["job_id", "job", "kind", "number", *objectives, "predicted_ms", "measured_ms", "error_pct"]
    return pd.concat([p[keep] for p in parts], ignore_index=True), objectives, tuple(directions[o] for o in objectives)


# -- devices and predictors -------------------------------------------------------------------
@st.cache_data(ttl=TTL_SLOW_S, show_spinner=False)
def devices(url: str) -> list[dict[str, Any]]:
    """Each device's fingerprint and coverage (measurements per op/format, native vs emulated)."""
    from hwsearch.profilers.coverage import device_table

    return device_table(engine(url))


def coverage_frame(device: dict[str, Any]) -> pd.DataFrame:
    """A device's coverage as rows: op/format, measured, native, emulated."""
    rows = [{"op/format": fam, "measured": c["total"], "native": c["native"], "emulated": c["total"] - c["native"]}
            for fam, c in device["by_op"].items()]
    return pd.DataFrame(rows, columns=["op/format", "measured", "native", "emulated"])


def _held_out(kind: str, metrics: dict[str, Any], device: str | None) -> dict[str, Any]:
    """The held-out block of a predictor's metrics (the meta predictor keys its metrics by device)."""
    if "held_out" in metrics:
        return metrics
    if device is not None and isinstance(metrics.get(device), dict):
        return metrics[device]
    return next((m for m in metrics.values() if isinstance(m, dict) and "held_out" in m), {})


@st.cache_data(ttl=TTL_SLOW_S, show_spinner=False)
def predictors(url: str, device: str | None = None) -> pd.DataFrame:
    """Stored predictors answering for `device` (its own and the shared ones) with held-out metrics.

    One row per predictor × op family ("all" first); the artefact column is never read.
    """
    q = (select(Predictor.id, Predictor.kind, Predictor.name, Predictor.devices, Predictor.target,
                Predictor.metrics, Predictor.created_at, Device.name.label("device"))
         .outerjoin(Device, Device.id == Predictor.device_id).order_by(Predictor.id.desc()))
    with session_scope(engine(url)) as session:
        rows = session.execute(q).all()
    records = []
    for r in rows:
        if device is not None and r.device not in (device, None):
            continue
        if device is not None and r.device is None and device not in (r.devices or []) \
                and device not in (r.metrics or {}):
            continue
        block = _held_out(r.kind, r.metrics or {}, device)
        scores = block.get("held_out") or {}
        base = {"id": r.id, "kind": r.kind, "name": r.name, "device": r.device or ", ".join(r.devices or []),
                "target": r.target, "split": block.get("split"), "created": r.created_at}
        if not scores:
            records.append({**base, "family": "all", "n": 0})
        for family, m in sorted(scores.items(), key=lambda kv: (kv[0] != "all", kv[0])):
            records.append({**base, "family": family, "n": m.get("n", 0), "within_10pct": m.get("within_10pct"),
                            "within_5pct": m.get("within_5pct"), "mape": m.get("mape"),
                            "spearman": m.get("spearman")})
    cols = ["id", "kind", "name", "device", "target", "family", "n", "within_10pct", "within_5pct", "mape",
            "spearman", "split", "created"]
    return pd.DataFrame.from_records(records, columns=cols)


@st.cache_data(ttl=TTL_SLOW_S, show_spinner=False)
def held_out_points(url: str, device: str) -> pd.DataFrame:
    """Predicted vs measured points of `device`'s newest predictors, from their stored held-out points.

    Kernel level: the `held_out_points` a predictor stored when it was trained (kernels it was
    not fit on). Model level: every verified plan on the device. Columns: source, op, measured_ms,
    predicted_ms.
    """
    parts = []
    q = (select(Predictor.id, Predictor.kind, Predictor.metrics).outerjoin(Device, Device.id == Predictor.device_id)
         .where((Device.name == device) | Predictor.device_id.is_(None)).order_by(Predictor.id.desc()))
    seen: set[str] = set()
    with session_scope(engine(url)) as session:
        for pid, kind, metrics in session.execute(q).all():
            block = _held_out(kind, metrics or {}, device)
            pts = block.get("held_out_points")
            if kind in seen or not pts:
                continue
            seen.add(kind)
            parts.append(pd.DataFrame({"source": f"{kind} #{pid} (held-out kernels)", "op": pts["op"],
                                       "measured_ms": pts["measured_ms"], "predicted_ms": pts["predicted_ms"]}))
    ver = verifications(url, device=device).dropna(subset=["predicted_ms"])
    if len(ver):
        parts.append(pd.DataFrame({"source": "verified plans (whole model)", "op": "model",
                                   "measured_ms": ver["measured_ms"], "predicted_ms": ver["predicted_ms"]}))
    if not parts:
        return pd.DataFrame(columns=["source", "op", "measured_ms", "predicted_ms"])
    return pd.concat(parts, ignore_index=True)


__all__ = [
    "PAGE_SIZE",
    "StudyMeta",
    "clear_caches",
    "constraint_bounds",
    "coverage_frame",
    "db_url",
    "devices",
    "engine",
    "fronts",
    "held_out_points",
    "hypervolume_history",
    "importances",
    "job",
    "jobs",
    "latency_band",
    "layer_latency",
    "objective_names",
    "predictors",
    "study_front",
    "study_meta",
    "trial_choices",
    "trial_plan",
    "trial_values",
    "trials_page",
    "verifications",
]
