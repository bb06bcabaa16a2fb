"""Optuna studies for a search: the RDB study, and the worker loop that fills it.

The study lives in the job's database (Optuna's RDB storage, beside our tables). Each worker
samples with its own sampler against an in-memory mirror of that study (ask/tell, a batch at a
time), scores the batch from the additive tables, and writes the finished batch to the RDB
study in one transaction (`trials.write_trials`); before each batch it pulls the trials other
workers stored, so every sampler sees the whole study. Constraints go through Optuna's own
constraint support (`Trial.set_constraint`), which NSGA-II, TPE and GP use to rank feasible
points first; every objective's value is also kept as a user attribute so a Pareto table can
show the ones that are only constrained. Samplers come by name from `search.samplers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from hwsearch.db.engine import PG_READ_ONLY, database_url, make_engine, parse_url, sqlite_read_only
from hwsearch.search.objectives import MERGE_PARAM, OBJECTIVES, Tables, constraint
from hwsearch.search.optuna_compat import rescored_trial, start_generation, trial_id
from hwsearch.search.pareto import front_mask
from hwsearch.search.samplers import make_sampler
from hwsearch.search.trials import read_trials, write_trials
from hwsearch.search.warmstart import warm_start

BATCH = 10
MEMORY = 1000  # the latest trials a worker's sampler sees, with the front of all (`recent_and_front`)
optuna.logging.set_verbosity(optuna.logging.WARNING)


def rdb_storage(db_url: str | None, read_only: bool = False) -> optuna.storages.RDBStorage:
    """Optuna's storage on the job database (psycopg2 for PostgreSQL, a busy timeout for SQLite);
    `read_only` (the dashboard): the database refuses every write, and no table is created."""
    url = database_url(db_url)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict = {"connect_args": {"timeout": 30}}
        if read_only:
            url = sqlite_read_only(parsed).render_as_string(hide_password=False)
    else:
        kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
        if read_only:
            kwargs["connect_args"]["options"] = PG_READ_ONLY
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=read_only)


def distributions(tables: Tables) -> dict[str, CategoricalDistribution]:
    out = {v.name: CategoricalDistribution(v.labels) for v in tables.variables}
    if len(tables.merges) > 1:
        out[MERGE_PARAM] = CategoricalDistribution(tuple(m.label() for m in tables.merges))
    return out


def constraint_values(constraints: Mapping[str, float], scores: Mapping[str, np.ndarray],
                      tables: Tables | None = None) -> dict[str, np.ndarray]:
    """Optuna's convention: a value <= 0 is feasible. An upper bound is checked against the
    value's calibrated upper bound (`Tables.margin`: the latency band), not the bare estimate."""
    out = {}
    for key, bound in constraints.items():
        name, kind = constraint(key, tables.metric if tables is not None else None)
        margin = tables.margin(name) if tables is not None else 1.0
        out[key] = scores[name] * margin - bound if kind == "max" else bound - scores[name]
    return out


def score_trials(tables: Tables, params: Sequence[Mapping[str, Any]], objectives: Sequence[str],
                 constraints: Mapping[str, float]) -> list[tuple[list[float], dict[str, float], dict[str, float]]]:
    """Trials' parameters scored as one batch from the tables: per trial, its objective values,
    its objective columns (user attributes) and its constraint values."""
    enc = [tables.encode_params(p) for p in params]
    scores = tables.score(np.stack([e[0] for e in enc]), np.array([e[1] for e in enc]))
    cons = constraint_values(constraints, scores, tables)
    return [([float(scores[o][i]) for o in objectives], {OBJECTIVES[n].column: float(c[i]) for n, c in scores.items()},
             {k: float(c[i]) for k, c in cons.items()}) for i in range(len(params))]


def ask_tell(mem: optuna.Study, tables: Tables, dists: Mapping[str, CategoricalDistribution], objectives: Sequence[str],
             constraints: Mapping[str, float], n: int) -> list[optuna.trial.FrozenTrial]:
    """Ask `n` trials, score them as one batch from the tables, tell them; returns them finished."""
    asked = [mem.ask(dict(dists)) for _ in range(n)]
    start_generation(mem, asked)  # warm-start trials are NSGA-II's initial population
    for trial, (values, attrs, cons) in zip(asked, score_trials(tables, [t.params for t in asked], objectives, constraints),
                                            strict=True):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        for key, value in cons.items():
            trial.set_constraint(key, value)
        mem.tell(trial, values)
    every = mem.get_trials(deepcopy=False)
    return [every[t.number] for t in asked]


def rescore(tables: Tables, trials: Sequence[optuna.trial.FrozenTrial], objectives: Sequence[str],
            constraints: Mapping[str, float]) -> list[optuna.trial.FrozenTrial]:
    """Copies of finished trials scored again on (refitted) tables; the stored study is untouched."""
    if not trials:
        return []
    scored = score_trials(tables, [t.params for t in trials], objectives, constraints)
    return [rescored_trial(t, *s) for t, s in zip(trials, scored, strict=True)]


def optimize_in_memory(tables: Tables, objectives: Sequence[str], constraints: Mapping[str, float], sampler: str,
                       seed: int, n_trials: int, warm: bool) -> list[optuna.trial.FrozenTrial]:
    """The same search without storage (benchmarks): what the samplers do, nothing else."""
    mem = optuna.create_study(directions=[tables.objective(o).direction for o in objectives], sampler=make_sampler(sampler, seed))
    if warm:
        for idx, m in warm_start(tables):
            mem.enqueue_trial(tables.params(idx, m))
    dists = distributions(tables)
    done = 0
    while done < n_trials:
        done += len(ask_tell(mem, tables, dists, objectives, constraints, min(BATCH, n_trials - done)))
    # a warm start larger than the budget leaves enqueued trials that never ran
    return [t for t in mem.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def feasible_trial(trial: optuna.trial.FrozenTrial) -> bool:
    """Every constraint Optuna keeps for the trial (`constraints:NAME` system attributes) is <= 0."""
    for key, value in trial.system_attrs.items():
        if key.startswith("constraints") and any(v > 0 for v in (value if isinstance(value, list) else [value])):
            return False
    return True


def recent_and_front(mem: optuna.Study, keep: int) -> optuna.Study:
    """A new in-memory study with `mem`'s sampler holding its latest `keep` complete trials and its
    feasible front (trials still enqueued are enqueued again).

    Why: Optuna's samplers look at every trial of their study on each proposal (NSGA-II to find
    its generation, TPE and GP to fit), so a worker whose mirror kept all 20,000 trials would
    take 4x longer per batch at the end than at the start. NSGA-II breeds from its latest
    generations, and TPE and GP learn what they need from a recent window plus the best points.
    """
    trials = mem.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    directions = ["minimize" if d == optuna.study.StudyDirection.MINIMIZE else "maximize" for d in mem.directions]
    feasible = np.array([feasible_trial(t) for t in done], dtype=bool)
    values = np.array([t.values for t in done], dtype=float).reshape(len(done), len(directions))
    kept = set(range(max(0, len(done) - keep), len(done))) | set(np.flatnonzero(front_mask(values, directions, feasible)))
    fresh = optuna.create_study(directions=mem.directions, sampler=mem.sampler)
    fresh.add_trials([done[i] for i in sorted(kept)])
    for t in trials:
        if t.state == TrialState.WAITING:
            fresh.enqueue_trial(dict(t.system_attrs.get("fixed_params", t.params)))
    return fresh


@dataclass
class WorkerResult:
    written: int
    stopped: str  # "budget" | "cancelled"


def run_worker(
    db_url: str | None,
    study_name: str,
    tables: Tables,
    objectives: Sequence[str],
    constraints: Mapping[str, float],
    sampler: str,
    seed: int,
    n_total: int,
    warm: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] | None = None,
    batch: int = BATCH,
    memory: int = MEMORY,
) -> WorkerResult:
    """Fill the RDB study `study_name` until it holds `n_total` complete trials (or `should_stop`);
    the sampler sees the latest `memory` to `2 * memory` trials and the front (`recent_and_front`)."""
    storage = rdb_storage(db_url)
    engine = make_engine(db_url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
        directions = [tables.objective(o).direction for o in objectives]
        mem = optuna.create_study(directions=directions, sampler=make_sampler(sampler, seed))
        dists = distributions(tables)
        mine: set[int] = set()  # ids this worker wrote (already in `mem`) and has not read back yet
        last, n_stored = -1, 0

        def pull() -> int:
            """Only the trials stored since the last pull (`read_trials`): a batch costs the same
            at the 20,000th trial as at the first."""
            nonlocal last, n_stored
            new = read_trials(engine, study_id, last)
            if new:
                last = trial_id(new[-1])
                n_stored += len(new)
                theirs = [t for t in new if trial_id(t) not in mine]
                mine.difference_update(trial_id(t) for t in new)
                mem.add_trials(theirs)
            return n_stored

        done = pull()
        if warm:  # the warm-start plans not in the study yet (a resumed job has some already)
            stored = {tuple(sorted(t.params.items())) for t in mem.get_trials(deepcopy=False)}
            for idx, m in warm_start(tables):
                params = tables.params(idx, m)
                if tuple(sorted(params.items())) not in stored:
                    mem.enqueue_trial(params)
        written = 0
        while True:
            if should_stop():
                return WorkerResult(written, "cancelled")
            if len(mem.get_trials(deepcopy=False)) > 2 * memory:
                mem = recent_and_front(mem, memory)
            remaining = n_total - done
            if remaining <= 0:
                return WorkerResult(written, "budget")
            frozen = ask_tell(mem, tables, dists, objectives, constraints, min(batch, remaining))
            ids = write_trials(engine, study_id, frozen, limit=n_total)
            mine.update(ids)
            written += len(ids)
            if on_batch:
                on_batch(len(ids))
            if len(ids) < len(frozen):
                return WorkerResult(written, "budget")
            done = pull()
    finally:
        engine.dispose()
        storage.remove_session()
