"""Search jobs: the Job row, the runner on Ray, heartbeat, cancel and resume.

A job is a row in `jobs` (its spec, status, progress) plus an Optuna study in the same
database. The runner is a Ray actor: it marks the job running, keeps a heartbeat (and the trial
count, best point and hypervolume) in the row every couple of seconds, starts `n_workers` Ray
tasks that fill the study (`study.run_worker`), then verifies the top plans on the device and
stores the result. Everything a client shows comes from the database, so a client can leave
and come back, from any process pointing at the same database.

Attempts: every (re)start of a job's runner has a number, kept in `result.attempt`. A runner
and its workers stop as soon as the row's attempt is no longer theirs (or the job is
cancelled), so a resumed job never has two runners writing; and since trials are written in
batches capped at the budget (`trials.write_trials`), a killed runner loses at most the batch
in flight and no trial is stored twice or past the budget.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import make_engine, session_scope
from hwsearch.db.models import Job, utcnow
from hwsearch.errors import HwsearchError, check_range
from hwsearch.search import pareto
from hwsearch.search.objectives import OBJECTIVES, objective
from hwsearch.search.spec import SearchSpec

HEARTBEAT_S = 2.0
STALE_AFTER_S = float(os.environ.get("HWSEARCH_JOB_STALE_S", "20"))
NAMESPACE = "hwsearch"
ACTIVE = ("queued", "running")
FINAL = ("done", "failed", "cancelled")
MAX_ID = 2**31 - 1


# ----------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------
@dataclass
class JobStatus:
    """What `job.status()`, `hwsearch jobs list/show` and the dashboard show."""

    id: int
    name: str
    status: str
    stale: bool
    model: str
    device: str
    sampler: str
    objectives: list[str]
    n_trials_done: int
    n_trials_total: int
    attempt: int
    heartbeat_age_s: float | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    progress: dict[str, Any]
    result: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _age(ts: datetime | None) -> float | None:
    return None if ts is None else max(0.0, (utcnow() - ts).total_seconds())


def _status(job: Job) -> JobStatus:
    spec = job.spec or {}
    result = dict(job.result or {})
    age = _age(job.heartbeat_at or job.created_at)
    stale = job.status in ACTIVE and (age is None or age > STALE_AFTER_S)
    return JobStatus(
        job.id, job.name, job.status, stale, spec.get("model") or (spec.get("model_spec") or {}).get("name", "?"),
        spec.get("device", "?"), spec.get("sampler", "?"), list(spec.get("objectives", [])), job.n_trials_done,
        job.n_trials_total, int(result.get("attempt", 0)), _age(job.heartbeat_at), job.created_at, job.started_at,
        job.finished_at, job.error, dict(result.get("progress", {})), result if job.status == "done" else None,
    )


def check_job_id(job_id: int) -> int:
    """A job id the database can hold (its column is a 32-bit integer on PostgreSQL)."""
    return check_range("job id", job_id, 1, MAX_ID, "job ids are numbered from 1")


def get_job(engine: Engine, job_id: int) -> Job:
    check_job_id(job_id)
    with session_scope(engine) as s:
        job = s.get(Job, int(job_id))
        if job is None:
            ids = s.scalars(select(Job.id).order_by(Job.id.desc()).limit(10)).all()
            shown = ", ".join(map(str, ids)) or "none yet"
            raise HwsearchError(f"unknown job {job_id!r}; accepted: a stored job id (latest: {shown})")
        s.expunge(job)
        return job


def job_status(engine: Engine, job_id: int) -> JobStatus:
    return _status(get_job(engine, job_id))


def list_jobs(engine: Engine, limit: int = 100) -> list[JobStatus]:
    with session_scope(engine) as s:
        rows = s.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()
        return [_status(j) for j in rows]


def create_job(engine: Engine, db_url: str, spec: SearchSpec) -> int:
    """The Optuna study, then the Job row naming it (the row is what makes a job exist)."""
    import optuna

    from hwsearch.search.study import rdb_storage

    study_name = f"hwsearch-{uuid.uuid4().hex[:12]}"
    storage = rdb_storage(db_url)
    try:
        optuna.create_study(storage=storage, study_name=study_name, directions=spec.directions)
        try:
            with session_scope(engine) as s:
                job = Job(name=spec.job_name(), spec=spec.to_doc(), status="queued", study_name=study_name,
                          n_trials_done=0, n_trials_total=spec.n_trials, result={"attempt": 1})
                s.add(job)
                s.flush()
                return int(job.id)
        except BaseException:
            optuna.delete_study(study_name=study_name, storage=storage)
            raise
    finally:
        storage.remove_session()


@contextmanager
def _locked(engine: Engine, job_id: int) -> Iterator[Job]:
    """The job's row in a write transaction (SQLite's lock taken at once, so a racing runner
    waits); an unknown id is one line."""
    check_job_id(job_id)
    with session_scope(engine, immediate=True) as s:
        job = s.get(Job, int(job_id))
        if job is None:
            raise HwsearchError(f"unknown job {job_id!r}; accepted: a stored job id")
        yield job


def cancel_job(engine: Engine, job_id: int) -> JobStatus:
    """Ask a queued or running job to stop (its runner and workers notice within a batch)."""
    with _locked(engine, job_id) as job:
        if job.status in ACTIVE:
            job.status = "cancelled"
            job.finished_at = utcnow()
    return job_status(engine, job_id)


def claim_resume(engine: Engine, job_id: int) -> int:
    """Make a stopped job runnable again; returns the new attempt number."""
    with _locked(engine, job_id) as job:
        st = _status(job)
        if job.status == "done":
            raise HwsearchError(f"job {job_id} is done; accepted: resume a failed, cancelled or stale job")
        if job.status in ACTIVE and not st.stale:
            raise HwsearchError(
                f"job {job_id} is {job.status} (heartbeat {st.heartbeat_age_s or 0:.0f} s ago); accepted: resume a job whose "
                f"runner stopped (no heartbeat for {STALE_AFTER_S:.0f} s), failed or was cancelled"
            )
        attempt = int((job.result or {}).get("attempt", 0)) + 1
        job.status, job.error, job.finished_at, job.heartbeat_at = "queued", None, None, utcnow()
        job.result = {**(job.result or {}), "attempt": attempt}
        return attempt


def _current(engine: Engine, job_id: int, attempt: int) -> bool:
    """Whether attempt `attempt` of the job should keep going."""
    with session_scope(engine) as s:
        job = s.get(Job, job_id)
        return job is not None and job.status in ACTIVE and int((job.result or {}).get("attempt", 0)) == attempt


# ----------------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------------
def worker_task(db_url: str, job_id: int, attempt: int, study_name: str, tables: Any, spec_doc: dict[str, Any],
                index: int) -> dict[str, Any]:
    """One worker: fill the study until the budget (or cancel / a newer attempt)."""
    from hwsearch.search.study import run_worker

    engine = make_engine(db_url)
    try:
        seed = int(spec_doc["seed"]) + 1000 * (attempt - 1) + index
        result = run_worker(
            db_url, study_name, tables, spec_doc["objectives"], spec_doc["constraints"], spec_doc["sampler"], seed,
            spec_doc["n_trials"], warm=spec_doc.get("warm_start", True) and index == 0,
            should_stop=lambda: not _current(engine, job_id, attempt),
        )
        return asdict(result)
    finally:
        engine.dispose()


Launcher = Callable[[Sequence[dict[str, Any]]], list[dict[str, Any]]]


def inline_launcher(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the workers one after the other in this process (no Ray)."""
    return [worker_task(**kw) for kw in calls]


def ray_launcher(calls: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the workers as Ray tasks (one CPU each) and wait for them."""
    import ray

    remote = ray.remote(worker_task).options(num_cpus=1, max_retries=0)
    tables_ref = ray.put(calls[0]["tables"])
    refs = [remote.remote(**{**kw, "tables": tables_ref}) for kw in calls]
    return ray.get(refs)


# ----------------------------------------------------------------------------------------------
# the runner
# ----------------------------------------------------------------------------------------------
class StudyProgress:
    """A study's trial count, feasible count and feasible front, kept up to date by reading only
    the trials stored since the last update (`trials.values_since`): the heartbeat's cost stays
    flat however many trials are done. The front is all progress needs: the hypervolume and the
    best point of the feasible trials are those of their front."""

    def __init__(self, engine: Engine, study_id: int, objectives: Sequence[str], metric: str | None = None) -> None:
        self.engine, self.study_id, self.objectives, self.metric = engine, study_id, list(objectives), metric
        self.directions = [objective(o, metric).direction for o in self.objectives]
        self.last_id, self.count, self.feasible = -1, 0, 0
        self.front = np.empty((0, len(self.objectives)))
        self._lock = threading.Lock()  # the runner's final beat may meet the thread's

    def update(self) -> StudyProgress:
        from hwsearch.search.trials import values_since

        with self._lock:
            ids, _, values, feasible = values_since(self.engine, self.study_id, len(self.objectives), self.last_id)
            if len(ids):
                self.last_id = int(ids.max())
                self.count += len(ids)
                self.feasible += int(feasible.sum())
                points = np.vstack([self.front, values[feasible]])
                self.front = points[pareto.front_mask(points, self.directions)]
        return self

    def as_dict(self, bounds: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        progress: dict[str, Any] = {"hypervolume": 0.0, "best": None, "feasible": self.feasible}
        if len(self.front):
            progress["hypervolume"] = pareto.hypervolume(self.front, self.objectives, *bounds, self.metric)
            best = self.front[int(np.argmin(self.front[:, 0] * objective(self.objectives[0], self.metric).sign))]
            progress["best"] = {OBJECTIVES[o].column: float(v) for o, v in zip(self.objectives, best, strict=True)}
        return progress


class _Heartbeat(threading.Thread):
    """Every HEARTBEAT_S: heartbeat, trial count, best feasible point and hypervolume into the row."""

    def __init__(self, engine: Engine, job_id: int, attempt: int, study_id: int, objectives: list[str],
                 bounds: tuple[np.ndarray, np.ndarray], metric: str | None = None) -> None:
        super().__init__(daemon=True, name=f"hwsearch-heartbeat-{job_id}")
        self.engine, self.job_id, self.attempt, self.study_id = engine, job_id, attempt, study_id
        self.objectives, self.bounds = objectives, bounds
        self.study = StudyProgress(engine, study_id, objectives, metric)
        self.done = threading.Event()

    def beat(self) -> None:
        study = self.study.update()
        progress = study.as_dict(self.bounds)
        with session_scope(self.engine, immediate=True) as s:
            job = s.get(Job, self.job_id)
            if job is None or int((job.result or {}).get("attempt", 0)) != self.attempt:
                return
            job.n_trials_done = study.count
            if job.status in ACTIVE:
                job.heartbeat_at = utcnow()
            job.result = {**(job.result or {}), "progress": progress}

    def run(self) -> None:
        while not self.done.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried; the runner reports real errors
                continue


def _start(engine: Engine, job_id: int, attempt: int) -> Job | None:
    """Mark attempt `attempt` running; None when it is not the job's current attempt."""
    with session_scope(engine, immediate=True) as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in ACTIVE or int((job.result or {}).get("attempt", 0)) != attempt:
            return None
        job.status = "running"
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        job.result = {**(job.result or {}), "runner": {"host": socket.gethostname(), "pid": os.getpid()}}
        s.flush()
        s.expunge(job)
        return job


def _finish(engine: Engine, job_id: int, attempt: int, **fields: Any) -> None:
    with session_scope(engine, immediate=True) as s:
        job = s.get(Job, job_id)
        if job is None or int((job.result or {}).get("attempt", 0)) != attempt:
            return
        if job.status == "cancelled" and fields.get("status") != "failed":
            fields.pop("status", None)
        result = fields.pop("result", None)
        for k, v in fields.items():
            setattr(job, k, v)
        if result is not None:
            job.result = {**(job.result or {}), **result}
        job.finished_at = job.finished_at or utcnow()
        job.heartbeat_at = utcnow()


def spec_of(job: Job, spec: SearchSpec | None = None) -> SearchSpec:
    """The job's spec; a torch-model job needs the in-memory spec that holds the module."""
    if spec is not None:
        return spec
    doc = dict(job.spec)
    if doc.get("model") is None:
        raise HwsearchError(
            f"job {job.id} searches a torch model given in-process; accepted: resume it from a Client that passes "
            "the same SearchSpec (client.job(id).resume(spec=...))"
        )
    return SearchSpec.from_doc(doc)


def run_job(db_url: str, job_id: int, attempt: int, spec: SearchSpec | None = None, problem: Any = None,
            launch: Launcher = ray_launcher) -> str:
    """The runner body: search, verify, store the result. Returns the job's final status."""
    from hwsearch.search.problem import build_problem
    from hwsearch.search.study import rdb_storage

    engine = make_engine(db_url)
    beat: _Heartbeat | None = None
    try:
        job = _start(engine, job_id, attempt)
        if job is None:
            return "superseded"
        try:
            spec = spec_of(job, spec)
            problem = problem or build_problem(engine, spec)
            storage = rdb_storage(db_url)
            study_id = storage.get_study_id_from_name(job.study_name)
            storage.remove_session()
            bounds = pareto.bounds(problem.tables, spec.objectives)
            beat = _Heartbeat(engine, job_id, attempt, study_id, spec.objectives, bounds, spec.quality_metric)
            beat.start()
            doc = spec.to_doc()
            calls = [{"db_url": db_url, "job_id": job_id, "attempt": attempt, "study_name": job.study_name,
                      "tables": problem.tables, "spec_doc": doc, "index": i} for i in range(spec.n_workers)]
            workers = launch(calls)
            beat.beat()  # final counts; the thread keeps beating through verification
            if not _current(engine, job_id, attempt):
                _finish(engine, job_id, attempt, result={"workers": workers})
                return job_status(engine, job_id).status
            from hwsearch.search.results import finish_search

            result = finish_search(engine, db_url, job_id, job.study_name, spec, problem)
            _finish(engine, job_id, attempt, status="done",
                    result={**result, "workers": workers, "bounds": [b.tolist() for b in bounds]})
            return "done"
        except Exception as err:  # noqa: BLE001 - any failure is the job's, stored as one line
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if not isinstance(err, HwsearchError):
                line = f"{type(err).__name__}: {line}"
            _finish(engine, job_id, attempt, status="failed", error=line[:2000],
                    result={"traceback": traceback.format_exc()[-4000:]})
            return "failed"
    finally:
        if beat is not None:
            beat.done.set()
        engine.dispose()


class JobRunner:
    """The Ray actor a job runs in (detached when the client is on a cluster).

    The job starts in the constructor, on a thread: actor creation belongs to the cluster (GCS)
    for a detached actor, while a method call would belong to the submitting process and die
    with it. A detached runner removes itself when the job ends.
    """

    def __init__(self, db_url: str, job_id: int, attempt: int, spec: SearchSpec | None, exit_after: bool) -> None:
        self.status = "running"
        self._thread = threading.Thread(target=self._run, args=(db_url, job_id, attempt, spec, exit_after), daemon=True)
        self._thread.start()

    def _run(self, db_url: str, job_id: int, attempt: int, spec: SearchSpec | None, exit_after: bool) -> None:
        self.status = run_job(db_url, job_id, attempt, spec)
        if exit_after:
            import ray

            ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def pid(self) -> int:
        return os.getpid()

    def result(self) -> str:
        self._thread.join()
        return self.status


def runner_name(job_id: int, attempt: int) -> str:
    return f"hwsearch-job-{job_id}-{attempt}"


def launch_runner(db_url: str, job_id: int, attempt: int, spec: SearchSpec | None, detached: bool) -> Any:
    """Start the job's runner actor on the connected Ray cluster; returns its handle."""
    import ray

    cls = ray.remote(JobRunner).options(num_cpus=0, max_restarts=0, name=runner_name(job_id, attempt),
                                        namespace=NAMESPACE, lifetime="detached" if detached else None,
                                        max_concurrency=2)
    return cls.remote(db_url, job_id, attempt, spec if spec is not None and spec.custom else None, detached)


def wait_for(engine: Engine, job_id: int, timeout: float | None = None, poll: float = 1.0,
             on_poll: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Poll the row until the job is finished; a job whose runner stopped is an error saying how to resume."""
    started = time.monotonic()
    while True:
        st = job_status(engine, job_id)
        if on_poll:
            on_poll(st)
        if st.finished:
            return st
        if st.stale:
            raise HwsearchError(
                f"job {job_id}'s runner stopped (no heartbeat for {st.heartbeat_age_s or 0:.0f} s); accepted: "
                f"`hwsearch jobs resume {job_id}` or job.resume()"
            )
        if timeout is not None and time.monotonic() - started > timeout:
            raise HwsearchError(f"job {job_id} is still {st.status} after {timeout:g} s ({st.n_trials_done}/"
                                f"{st.n_trials_total} trials); accepted: a longer timeout, or wait again later")
        time.sleep(poll)
