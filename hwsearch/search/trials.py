"""Finished trials into Optuna's RDB tables, a batch per transaction, never past the budget.

Optuna's `RDBStorage` writes a trial parameter by parameter, a few ORM round trips each; with
one parameter per layer that is ~0.2 s per trial (measured: 7 trials/s on SQLite, 3 on
PostgreSQL for 49 parameters), far slower than sampling. Workers therefore sample against an
in-memory mirror of the study and write finished trials here: one transaction per batch, rows
inserted with executemany into Optuna's own tables (its ORM models), so `optuna.load_study`,
the dashboard and every Optuna tool read them as ordinary trials.

Inside the transaction the study row is locked (PostgreSQL `FOR UPDATE`, SQLite `BEGIN
IMMEDIATE`), trial numbers continue from the study's count as Optuna numbers them, and a batch
is cut so the study never holds more than `limit` complete trials: however many workers race,
and whatever a resumed job re-runs, every trial is stored once and the total is exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.storages._rdb import models as om
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope


def count_complete(engine: Engine, study_id: int) -> int:
    with session_scope(engine) as s:
        return int(s.scalar(select(func.count(om.TrialModel.trial_id)).where(
            om.TrialModel.study_id == study_id, om.TrialModel.state == TrialState.COMPLETE)) or 0)


def write_trials(engine: Engine, study_id: int, trials: Sequence[FrozenTrial], limit: int | None = None) -> list[int]:
    """Store complete `trials` in one transaction; returns the new trial ids (fewer when cut at `limit`)."""
    if not trials:
        return []
    with session_scope(engine, immediate=True) as s:
        s.execute(select(om.StudyModel.study_id).where(om.StudyModel.study_id == study_id).with_for_update())
        number = int(s.scalar(select(func.count(om.TrialModel.trial_id)).where(om.TrialModel.study_id == study_id)) or 0)
        if limit is not None:
            done = int(s.scalar(select(func.count(om.TrialModel.trial_id)).where(
                om.TrialModel.study_id == study_id, om.TrialModel.state == TrialState.COMPLETE)) or 0)
            trials = list(trials)[: max(0, limit - done)]
        rows = []
        for i, t in enumerate(trials):
            row = om.TrialModel(study_id=study_id, number=number + i, state=TrialState.COMPLETE)
            row.datetime_start = t.datetime_start
            row.datetime_complete = t.datetime_complete
            rows.append(row)
        s.add_all(rows)
        s.flush()
        params, values, users, systems = [], [], [], []
        for row, t in zip(rows, trials, strict=True):
            for name, value in t.params.items():
                dist = t.distributions[name]
                params.append({"trial_id": row.trial_id, "param_name": name, "param_value": dist.to_internal_repr(value),
                               "distribution_json": distribution_to_json(dist)})
            for k, v in enumerate(t.values or ()):
                stored, kind = om.TrialValueModel.value_to_stored_repr(v)
                values.append({"trial_id": row.trial_id, "objective": k, "value": stored, "value_type": kind})
            users += [{"trial_id": row.trial_id, "key": k, "value_json": json.dumps(v)} for k, v in t.user_attrs.items()]
            systems += [{"trial_id": row.trial_id, "key": k, "value_json": json.dumps(v)} for k, v in t.system_attrs.items()]
        for model, batch in ((om.TrialParamModel, params), (om.TrialValueModel, values),
                             (om.TrialUserAttributeModel, users), (om.TrialSystemAttributeModel, systems)):
            if batch:
                s.execute(insert(model), batch)
        return [int(r.trial_id) for r in rows]


def read_trials(engine: Engine, study_id: int, after_id: int = -1) -> list[FrozenTrial]:
    """The study's complete trials with a trial id above `after_id`, oldest first (Optuna's own
    FrozenTrials, built from its tables in five queries).

    Why: a worker or heartbeat that re-read every finished trial after each batch would cost the
    square of the trials. Ids only grow in the order trials are committed here (`write_trials`
    numbers and inserts them under the study's lock), so "above the last id seen" is exactly what
    is new since the last read.
    """
    new = (om.TrialModel.study_id == study_id, om.TrialModel.trial_id > after_id)
    with session_scope(engine) as s:
        rows = s.execute(
            select(om.TrialModel.trial_id, om.TrialModel.number, om.TrialModel._datetime_start_utc,
                   om.TrialModel._datetime_complete_utc)
            .where(*new, om.TrialModel.state == TrialState.COMPLETE).order_by(om.TrialModel.trial_id)
        ).all()
        if not rows:
            return []
        # another worker may commit trials between these statements (READ COMMITTED): read the
        # children of exactly the trials listed above, no later ones
        last = rows[-1].trial_id

        def children(model: Any, *cols: Any) -> list[Any]:
            return s.execute(select(model.trial_id, *cols).join(om.TrialModel, om.TrialModel.trial_id == model.trial_id)
                             .where(*new, om.TrialModel.trial_id <= last,
                                    om.TrialModel.state == TrialState.COMPLETE)).all()

        params = children(om.TrialParamModel, om.TrialParamModel.param_name, om.TrialParamModel.param_value,
                          om.TrialParamModel.distribution_json)
        values = children(om.TrialValueModel, om.TrialValueModel.objective, om.TrialValueModel.value,
                          om.TrialValueModel.value_type)
        users = children(om.TrialUserAttributeModel, om.TrialUserAttributeModel.key, om.TrialUserAttributeModel.value_json)
        systems = children(om.TrialSystemAttributeModel, om.TrialSystemAttributeModel.key,
                           om.TrialSystemAttributeModel.value_json)
    parts: dict[int, dict[str, Any]] = {r.trial_id: {"params": {}, "dists": {}, "values": {}, "user": {}, "system": {}}
                                        for r in rows}
    dists: dict[str, BaseDistribution] = {}
    for tid, name, internal, dist_json in params:
        dist = dists.get(dist_json) or dists.setdefault(dist_json, json_to_distribution(dist_json))
        parts[tid]["dists"][name] = dist
        parts[tid]["params"][name] = dist.to_external_repr(internal)
    for tid, k, value, kind in values:
        parts[tid]["values"][k] = om.TrialValueModel.stored_repr_to_value(value, kind)
    for tid, key, text in users:
        parts[tid]["user"][key] = json.loads(text)
    for tid, key, text in systems:
        parts[tid]["system"][key] = json.loads(text)
    out = []
    for r in rows:
        p = parts[r.trial_id]
        vals = [p["values"][k] for k in sorted(p["values"])]
        out.append(FrozenTrial(number=r.number, state=TrialState.COMPLETE, value=None, datetime_start=_local(r[2]),
                               datetime_complete=_local(r[3]), params=p["params"], distributions=p["dists"],
                               user_attrs=p["user"], system_attrs=p["system"], intermediate_values={},
                               trial_id=r.trial_id, values=vals or None))
    return out


def _local(utc: datetime | None) -> datetime | None:
    """Optuna's stored time (naive UTC) as Optuna hands it out (naive local time)."""
    return None if utc is None else utc.replace(tzinfo=UTC).astimezone().replace(tzinfo=None)


def study_values(engine: Engine, study_id: int, n_objectives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(trial numbers, values (n, k), feasible) of the complete trials, straight from Optuna's tables.

    Cheaper than loading FrozenTrials (no parameters): what progress and hypervolume need.
    """
    _, nums, vals, feasible = values_since(engine, study_id, n_objectives)
    return nums, vals, feasible


def values_since(engine: Engine, study_id: int, n_objectives: int,
                 after_id: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`study_values` of the trials with an id above `after_id` (see `read_trials`), with their ids."""
    with session_scope(engine) as s:
        rows = s.execute(
            select(om.TrialModel.trial_id, om.TrialModel.number, om.TrialValueModel.objective, om.TrialValueModel.value,
                   om.TrialValueModel.value_type)
            .join(om.TrialValueModel, om.TrialValueModel.trial_id == om.TrialModel.trial_id)
            .where(om.TrialModel.study_id == study_id, om.TrialModel.state == TrialState.COMPLETE,
                   om.TrialModel.trial_id > after_id)
        ).all()
        cons = s.execute(
            select(om.TrialSystemAttributeModel.trial_id, om.TrialSystemAttributeModel.value_json)
            .join(om.TrialModel, om.TrialSystemAttributeModel.trial_id == om.TrialModel.trial_id)
            .where(om.TrialModel.study_id == study_id, om.TrialSystemAttributeModel.key.like("constraints%"),
                   om.TrialModel.trial_id > after_id)
        ).all()
    by_id: dict[int, list[float]] = {}
    number: dict[int, int] = {}
    for tid, num, k, value, kind in rows:
        by_id.setdefault(tid, [np.nan] * n_objectives)[k] = om.TrialValueModel.stored_repr_to_value(value, kind)
        number[tid] = num
    infeasible = set()
    for tid, text in cons:
        v = json.loads(text)
        if any(x > 0 for x in (v if isinstance(v, list) else [v])):
            infeasible.add(tid)
    ids = sorted(by_id, key=lambda t: number[t])
    nums = np.array([number[t] for t in ids], dtype=np.int64)
    vals = np.array([by_id[t] for t in ids], dtype=float).reshape(-1, n_objectives)
    feasible = np.array([t not in infeasible for t in ids], dtype=bool)
    return np.array(ids, dtype=np.int64), nums, vals, feasible
