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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.search.optuna_compat import METRIC_NAMES_ATTR
from hwsearch.search.optuna_compat import models as om


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


# -- what the dashboard reads of a study (read-only engines: no session, no commit) -----------------
@dataclass(frozen=True)
class StudySummary:
    """A study's id, objective directions ("minimize"/"maximize"), stored metric names and trial counts per state."""

    study_id: int
    directions: tuple[str, ...]
    metric_names: list[str] | None
    states: dict[str, int]


def has_study_tables(engine: Engine) -> bool:
    """Whether the database holds Optuna's tables yet (a database no search ran on has none)."""
    found = inspect(engine)
    return found.has_table(om.StudyModel.__tablename__) and found.has_table(om.TrialValueModel.__tablename__)


def study_summary(engine: Engine, study_name: str) -> StudySummary | None:
    """The study `study_name` (None when the database has no such study, or no Optuna tables)."""
    if not has_study_tables(engine):
        return None
    with engine.connect() as conn:
        sid = conn.execute(select(om.StudyModel.study_id).where(om.StudyModel.study_name == study_name)).scalar()
        if sid is None:
            return None
        dirs = conn.execute(select(om.StudyDirectionModel.direction).where(om.StudyDirectionModel.study_id == sid)
                            .order_by(om.StudyDirectionModel.objective)).scalars().all()
        raw = conn.execute(select(om.StudySystemAttributeModel.value_json).where(
            om.StudySystemAttributeModel.study_id == sid, om.StudySystemAttributeModel.key == METRIC_NAMES_ATTR)).scalar()
        states = conn.execute(select(om.TrialModel.state, func.count()).where(om.TrialModel.study_id == sid)
                              .group_by(om.TrialModel.state)).all()
    return StudySummary(int(sid), tuple(d.name.lower() for d in dirs), json.loads(raw) if raw else None,
                        {s.name: int(n) for s, n in states})


def trial_attr(engine: Engine, study_name: str, number: int, key: str) -> tuple[int, Any] | None:
    """(trial id, its user attribute `key` or None) of the complete trial `number`; None when there is none."""
    if not has_study_tables(engine):
        return None
    attr = (select(om.TrialUserAttributeModel.value_json)
            .where(om.TrialUserAttributeModel.trial_id == om.TrialModel.trial_id, om.TrialUserAttributeModel.key == key)
            .scalar_subquery())
    with engine.connect() as conn:
        found = conn.execute(
            select(om.TrialModel.trial_id, attr).join(om.StudyModel, om.StudyModel.study_id == om.TrialModel.study_id)
            .where(om.StudyModel.study_name == study_name, om.TrialModel.number == int(number),
                   om.TrialModel.state == TrialState.COMPLETE)).first()
    if found is None:
        return None
    return int(found[0]), (json.loads(found[1]) if found[1] else None)


def trial_params(engine: Engine, study_name: str, numbers: Sequence[int]) -> list[tuple[int, str, float, str]]:
    """(trial number, parameter, internal value, distribution JSON) of the complete trials `numbers`,
    in the order the parameters were stored."""
    if not has_study_tables(engine) or not numbers:
        return []
    p, t = om.TrialParamModel, om.TrialModel
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.number, p.param_name, p.param_value, p.distribution_json).join(t, t.trial_id == p.trial_id)
            .join(om.StudyModel, om.StudyModel.study_id == t.study_id)
            .where(om.StudyModel.study_name == study_name, t.state == TrialState.COMPLETE,
                   t.number.in_([int(n) for n in numbers])).order_by(p.param_id)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]
