"""A seeded database for the dashboard tests: devices, predictors, jobs with Optuna studies.

One device is really profiled (a few small kernels on this machine); a second is written as
rows, with emulated kernels, so coverage shows both kinds. Jobs cover every state a page must
read well: done with verifications, done on the second device (for Compare), running with no
trial yet, queued, failed. Studies are real Optuna studies in the same database; each trial
keeps its plan in the `plan` user attribute, and values come from the plan's exact size and a
made-up but monotone latency/quality, so the front has a real shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial
from sqlalchemy import text

from hwsearch.db.engine import database_url, open_db, session_scope
from hwsearch.db.models import Device, Job, KernelConfig, Measurement, Verification, utcnow
from hwsearch.predictors.store import store_predictor
from hwsearch.profilers.runner import profile_local
from hwsearch.search.objectives import MERGE_PARAM, decision_variables
from hwsearch.search.results import plan_of, search_space
from hwsearch.search.spec import SearchSpec
from hwsearch.search.trials import write_trials
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.plan import Plan
from hwsearch.spaces.size import linear_bytes

MODEL = "digits_vit"
CPU, GPU = "test-cpu", "test-gpu"
OBJECTIVES = ["latency", "size", "quality"]
COLUMNS = ["latency_ms", "size_mb", "quality"]
DIRECTIONS = ["minimize", "minimize", "maximize"]


@dataclass
class Seeded:
    url: str
    done_job: int
    other_device_job: int
    running_job: int
    queued_job: int
    failed_job: int
    front: list[int]  # trial numbers of the done job's front
    verified: list[int]


def _objectives(plan: Plan, speed: float) -> tuple[float, float, float]:
    spec = get_model(plan.model)
    dtype = spec.dtype
    size = 0.0
    latency = 0.0
    quality = 0.97
    sched = spec.merge_schedule(plan.merge)
    kept_tokens = 1.0 - sum(sched) / (spec.tokens * len(spec.blocks) or 1)
    for layer in spec.layers:
        c = plan.choice(layer.name, dtype)
        b = linear_bytes(layer.K, layer.N, c.format, c.group_size, c.sparsity, c.rank, bias=layer.bias).total
        full = linear_bytes(layer.K, layer.N, dtype, bias=layer.bias).total
        size += b / 1e6
        latency += speed * (0.004 + 0.02 * b / full) * (kept_tokens if layer.block is not None else 1.0)
        quality -= 0.006 * (1.0 - b / full) ** 2
    quality -= 0.02 * (1.0 - kept_tokens)
    return round(latency, 6), round(size, 6), round(quality, 6)


def search_trials(url: str, device: str, constraints: dict[str, float], n: int, speed: float,
                  seed: int = 0) -> tuple[dict[str, Any], list[FrozenTrial], list[Plan]]:
    """`n` trials as a search worker stores them: one categorical parameter per decision variable
    (and the merge schedule), objective values, each objective as a user attribute, and Optuna's
    named constraints. Plans come from the search package's own `plan_of`. Returns the job's
    spec document, the trials and their plans."""
    # plain int4 only: the seeded layouts (which points lie apart enough to click) stay put when
    # the search's default choices grow (AWQ where quality is scored)
    spec = SearchSpec(model=MODEL, device=device, objectives=OBJECTIVES, constraints=constraints, n_trials=n,
                      knobs={"scalings": []})
    space = search_space(open_db(url), spec)
    variables = decision_variables(space)
    dists: dict[str, Any] = {v.name: CategoricalDistribution(v.labels) for v in variables}
    merges = tuple(m.label() for m in space.merge_options)
    if len(merges) > 1:
        dists[MERGE_PARAM] = CategoricalDistribution(merges)
    rng = random.Random(seed)
    trials, plans = [], []
    for i in range(n):
        level = 0.0 if i == 0 else rng.random()
        params = {v.name: (rng.choice(v.labels) if rng.random() < level else
                           next(lab for lab, c in zip(v.labels, v.choices, strict=True)
                                if c.is_identity(space.model.dtype))) for v in variables}
        if MERGE_PARAM in dists:
            params[MERGE_PARAM] = rng.choice(merges) if rng.random() < level else "none"
        probe = optuna.trial.create_trial(params=params, distributions=dists, values=[0.0, 0.0, 0.0])
        plan = plan_of(probe, space, spec)
        values = _objectives(plan, speed)
        cons = {f"constraints:{k}": values[COLUMNS.index(k)] - b for k, b in constraints.items()}
        trials.append(optuna.trial.create_trial(params=params, distributions=dists, values=list(values),
                                                user_attrs=dict(zip(COLUMNS, values, strict=True)),
                                                system_attrs=cons))
        plans.append(plan_of(trials[-1], space, spec))
    return spec.to_doc(), trials, plans


def make_study(url: str, name: str, trials: list[FrozenTrial]) -> None:
    """An Optuna study in the database holding `trials`, written by the search package's writer."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = database_url(url)
    optuna.create_study(study_name=name, storage=storage, directions=DIRECTIONS)
    engine = open_db(url)
    with engine.connect() as conn:
        sid = conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).scalar()
    write_trials(engine, int(sid), trials)


def _job(url: str, name: str, status: str, spec: dict[str, Any], study: str | None, done: int, total: int,
         error: str | None = None) -> int:
    now = utcnow()
    with session_scope(open_db(url)) as s:
        row = Job(name=name, spec=spec, status=status, study_name=study, n_trials_done=done, n_trials_total=total,
                  heartbeat_at=now if status == "running" else None, started_at=None if status == "queued" else now,
                  finished_at=now if status in ("done", "failed") else None, error=error)
        s.add(row)
        s.flush()
        return int(row.id)


def _rows_device(url: str, name: str, kind: str, fingerprint: dict[str, Any],
                 formats: list[tuple[str, bool]]) -> int:
    """A device written as rows (no profiling): one `linear` kernel per (format, native)."""
    with session_scope(open_db(url)) as s:
        dev = s.query(Device).filter_by(name=name).one_or_none()
        if dev is None:
            dev = Device(name=name, kind=kind, fingerprint=fingerprint)
            s.add(dev)
            s.flush()
        for i, (fmt, native) in enumerate(formats):
            params = {"M": 64 * (i + 1), "K": 256, "N": 256, "format": fmt}
            k = s.query(KernelConfig).filter_by(key=KernelConfig.make_key("linear", params)).one_or_none()
            if k is None:
                k = KernelConfig.build("linear", params)
                s.add(k)
                s.flush()
            s.add(Measurement(device_id=dev.id, kernel_id=k.id, implementation=f"test-{kind}", backend=kind,
                              native=native, median_us=10.0 + i, p10_us=9.0 + i, p90_us=11.0 + i, mean_us=10.0 + i,
                              repeats=20, cov=0.02))
        return int(dev.id)


def _predictors(url: str, device_id: int) -> None:
    rng = random.Random(1)
    measured = [0.01 * 1.6 ** i for i in range(24)]
    predicted = [m * rng.uniform(0.85, 1.15) for m in measured]
    ops = ["linear" if i % 3 else "attention" for i in range(24)]
    within = sum(abs(p - m) <= 0.1 * m for p, m in zip(predicted, measured, strict=True)) / 24
    held = {"all": {"n": 24, "within_10pct": within, "within_5pct": within / 2, "mape": 7.5, "spearman": 0.98},
            "linear": {"n": 16, "within_10pct": within, "within_5pct": 0.4, "mape": 7.0, "spearman": 0.97}}
    metrics = {"split": "random", "test_fraction": 0.2, "seed": 0, "held_out": held,
               "held_out_points": {"op": ops, "measured_ms": measured, "predicted_ms": predicted}}
    store_predictor(open_db(url), kind="xgboost", name=f"xgboost-{CPU}", device_id=device_id, devices=[CPU],
                    target="kernel", train_summary={"rows": 40}, metrics=metrics, artefact=b"{}",
                    artefact_format="json")


def brute_front(vals: list[tuple[float, ...]], feasible: list[bool]) -> list[int]:
    """Indices of the non-dominated feasible rows, by checking every pair (the reference answer)."""
    signs = [1 if d == "minimize" else -1 for d in DIRECTIONS[: len(vals[0])]]
    loss = [[s * v for s, v in zip(signs, row, strict=False)] for row in vals]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    idx = [i for i, f in enumerate(feasible) if f]
    return [i for i in idx if not any(dominates(loss[j], loss[i]) for j in idx if j != i)]


def seed(url: str, trials: int = 40, profile: bool = True) -> Seeded:
    """Fill an empty database at `url` (see module docstring); returns the ids the tests need."""
    engine = open_db(url)
    if profile:
        summary = profile_local(engine, name=CPU, budget=6, threads=1, show_progress=False, max_flops=5e7)
        cpu_id = summary.device_id
    else:
        cpu_id = _rows_device(url, CPU, "cpu", {"cpu_model": "Test CPU", "threads": 2},
                              [("bf16", True), ("int8", True), ("int4", True), ("fp8", False), ("fp8", False),
                               ("int8", True), ("bf16", True)])
    _rows_device(url, GPU, "cuda", {"gpu_name": "Test GPU 16GB", "sm_count": 40, "cuda": "12.4", "torch": "2.13.0"},
                 [("bf16", True), ("int8", True), ("fp8", False), ("int4", True), ("fp8", False), ("bf16", True)])
    _predictors(url, cpu_id)
    _, first, _ = search_trials(url, CPU, {}, 1, speed=1.0)
    bound = round(float(first[0].values[0]) * 0.95, 6)
    spec, trials_cpu, plans = search_trials(url, CPU, {"latency_ms": bound}, trials, speed=1.0)
    spec_gpu, trials_gpu, _ = search_trials(url, GPU, {}, trials // 2, speed=0.3, seed=1)
    make_study(url, "dash-done", trials_cpu)
    make_study(url, "dash-gpu", trials_gpu)
    optuna.create_study(study_name="dash-running", storage=database_url(url), directions=DIRECTIONS)
    done = _job(url, "vit digits on cpu", "done", spec, "dash-done", trials, trials)
    other = _job(url, "vit digits on gpu", "done", spec_gpu, "dash-gpu", trials // 2, trials // 2)
    running = _job(url, "still running", "running", spec, "dash-running", 0, 200)
    queued = _job(url, "waiting", "queued", spec, None, 0, 100)
    failed = _job(url, "broken", "failed", spec, None, 0, 100, error="predictor for 'test-cpu' missing")

    vals = [tuple(t.values) for t in trials_cpu]
    front = brute_front(vals, [v[0] <= bound for v in vals])
    verified = sorted(front, key=lambda n: vals[n][0])[:2]
    with session_scope(engine) as s:
        for n in verified:
            s.add(Verification(job_id=done, trial_number=n, device_id=cpu_id, plan=json.loads(plans[n].to_json()),
                               predicted_ms=vals[n][0], measured_ms=vals[n][0] * 1.08,
                               measured_p10_ms=vals[n][0] * 1.05, measured_p90_ms=vals[n][0] * 1.12))
    return Seeded(url, done, other, running, queued, failed, front, verified)


def bulk_study(url: str, name: str, n: int, seed: int = 0) -> int:
    """A study of `n` completed trials written straight into Optuna's tables (Optuna's own
    `add_trial` would take minutes for 10,000); a Job row points at it. Returns the job id."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(study_name=name, storage=database_url(url), directions=DIRECTIONS[:2])
    rng = random.Random(seed)
    engine = open_db(url)
    with engine.begin() as conn:
        sid = conn.execute(text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": name}).scalar()
        base = conn.execute(text("SELECT COALESCE(MAX(trial_id), 0) FROM trials")).scalar()
        now = utcnow().replace(tzinfo=None)
        trials: list[dict[str, Any]] = []
        values: list[dict[str, Any]] = []
        for i in range(n):
            tid = base + i + 1
            trials.append({"id": tid, "num": i, "s": sid, "t": now})
            lat = rng.uniform(1.0, 10.0)
            size = 50.0 / lat + rng.uniform(0.0, 20.0)
            values += [{"t": tid, "o": 0, "v": lat}, {"t": tid, "o": 1, "v": size}]
        conn.execute(text("INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                          "VALUES (:id, :num, :s, 'COMPLETE', :t, :t)"), trials)
        conn.execute(text("INSERT INTO trial_values (trial_id, objective, value, value_type) "
                          "VALUES (:t, :o, :v, 'FINITE')"), values)
        plan = Plan(model=MODEL).to_json()
        conn.execute(text("INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (:t, 'plan', :v)"),
                     [{"t": base + i + 1, "v": json.dumps(json.loads(plan))} for i in range(0, n, 1000)])
    spec = SearchSpec(model=MODEL, device=CPU, objectives=["latency", "size"], n_trials=n).to_doc()
    with session_scope(engine) as s:
        row = Job(name=f"big {n}", spec=spec, status="done", study_name=name, n_trials_done=n, n_trials_total=n)
        s.add(row)
        s.flush()
        return int(row.id)
