"""The Python API: `Client` submits and finds jobs, `JobHandle` watches and reads one.

    import hwsearch as hw
    client = hw.Client()                       # HWSEARCH_DB / the SQLite file; local Ray
    job = client.submit(hw.SearchSpec(model="vit_base", device="my-cpu", constraints={"latency_ms": 20}))
    job.wait(); job.pareto(); job.best(max_latency_ms=15)

With `ray_address` the runner is a detached actor on that cluster: the submitting process may
exit and any process pointing at the same database can watch, cancel or resume the job. With
local Ray (the default) the job runs as long as this process does; a job left behind shows a
stale heartbeat and `resume()` continues it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from hwsearch.db.engine import database_url, open_db
from hwsearch.errors import HwsearchError
from hwsearch.search import jobs, pareto, results
from hwsearch.search.spec import SearchSpec
from hwsearch.spaces.plan import Figure, Plan, Provenance


def connect_ray(address: str | None) -> None:
    """Connect to the cluster at `address` (`profilers.cluster.connect`: its head's token, one line
    when it cannot), or start a local Ray (loopback, no dashboard, this installation's token:
    `ray_auth`) once per process; Ray's own INFO lines ("Started a local Ray instance") only
    with `config.verbose()`."""
    import ray

    from hwsearch import ray_auth
    from hwsearch.config import verbose

    if ray.is_initialized():
        return
    if address:
        from hwsearch.profilers.cluster import connect

        connect(address)
        return
    ray_auth.apply_to_driver(create=True)
    ray.init(namespace=jobs.NAMESPACE, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             logging_level=logging.INFO if verbose() else logging.WARNING)


def run_in_background(db_url: str, job_id: int) -> None:
    """A background process that runs the job's current attempt with its own local Ray and
    outlives this one (`hwsearch jobs run`, its output in the data folder's `jobs/job-ID.log`).

    The database URL (and any password in it) goes through that process's environment, never its
    command line, which every user of the machine can read."""
    import os
    import subprocess
    import sys

    from hwsearch.config import data_dir

    log = data_dir() / "jobs" / f"job-{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "hwsearch.cli", "jobs", "run", str(job_id)],
                         env={**os.environ, "HWSEARCH_DB": db_url},
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


class JobHandle:
    """One job, read from the database on every call (so it works from any process)."""

    def __init__(self, client: Client, job_id: int, spec: SearchSpec | None = None) -> None:
        self.client = client
        self.id = int(job_id)
        self._spec = spec

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id})"

    # -- state -----------------------------------------------------------------------------------
    def status(self) -> jobs.JobStatus:
        return jobs.job_status(self.client.engine, self.id)

    def wait(self, timeout: float | None = None, poll: float = 1.0,
             on_poll: Callable[[jobs.JobStatus], None] | None = None) -> jobs.JobStatus:
        """Block until done/failed/cancelled; a runner that stopped is an error saying how to resume."""
        return jobs.wait_for(self.client.engine, self.id, timeout, poll, on_poll)

    def cancel(self) -> jobs.JobStatus:
        return jobs.cancel_job(self.client.engine, self.id)

    def resume(self, spec: SearchSpec | None = None) -> JobHandle:
        """Continue a failed, cancelled or stale job; finished trials are kept (`Client.resume`)."""
        self.client.resume(self.id, spec or self._spec)
        return self

    # -- results ---------------------------------------------------------------------------------
    def spec(self) -> SearchSpec:
        if self._spec is not None:
            return self._spec
        row = jobs.get_job(self.client.engine, self.id)
        return SearchSpec.from_doc(dict(row.spec))

    def _trials(self) -> list[Any]:
        row = jobs.get_job(self.client.engine, self.id)
        return results.rescored(row.result, results.load_trials(self.client.db_url, row.study_name))

    def pareto(self) -> pd.DataFrame:
        """Feasible non-dominated trials: trial, plan_id, objective columns (sorted by the first)."""
        spec = self.spec()
        space = results.search_space(self.client.engine, spec)
        return results.front(self._trials(), spec, self.id, space.model.dtype)

    def plan(self, trial: int) -> Plan:
        """A trial's plan with its predicted figures, and its latency measured on the device where it was verified."""
        spec = self.spec()
        found = [t for t in self._trials() if t.number == int(trial)]
        if not found:
            raise HwsearchError(f"job {self.id} has no complete trial {trial}; accepted: a trial number from job.pareto()")
        result = (self.status().result or {})
        plan = results.plan_of(found[0], results.search_space(self.client.engine, spec), spec, result.get("provenance"))
        ver = self.verifications()
        ver = ver[ver["trial"] == int(trial)] if len(ver) else ver
        if len(ver):
            plan.measured["latency_ms"] = Figure(value=float(ver["measured_ms"].iloc[-1]), unit="ms", provenance=Provenance(
                source="measurement", device=spec.device, detail=f"job {self.id} trial {trial}, timed end to end"))
        return plan

    def best(self, max_latency_ms: float | None = None, max_size_mb: float | None = None,
             min_quality: float | None = None) -> Plan:
        """The plan of `best_trial(...)`."""
        return self.plan(self.best_trial(max_latency_ms, max_size_mb, min_quality))

    def best_trial(self, max_latency_ms: float | None = None, max_size_mb: float | None = None,
                   min_quality: float | None = None) -> int:
        """The trial of the Pareto plan within the bounds that is best on the job's first objective they
        leave free (`pareto.best_under`, as `hwsearch export` and the dashboard choose). `min_quality` is
        "no worse than": an upper bound for a lower-is-better metric such as perplexity."""
        budget = {"latency_ms": max_latency_ms, "size_mb": max_size_mb, "min_quality": min_quality}
        band = results.latency_band(self.status().result)
        try:
            spec = self.spec()
            return int(pareto.best_under(self.pareto(), spec.objectives, budget, band_pct=band,
                                         metric=spec.quality_metric)["trial"])
        except HwsearchError as err:
            raise HwsearchError(f"job {self.id}: {err}") from None

    def verifications(self) -> pd.DataFrame:
        """Verified plans: trial, predicted vs measured latency (ms) and `error_pct` (`accuracy.error_pct`)."""
        from hwsearch.search.accuracy import error_pct
        from hwsearch.search.verify import verifications

        rows = verifications(self.client.engine, self.id)
        frame = pd.DataFrame([{k: v for k, v in r.items() if k != "plan"} for r in rows])
        if len(frame):
            frame["error_pct"] = error_pct(frame["predicted_ms"].astype(float), frame["measured_ms"].astype(float))
        return frame

    def refit_predictor(self) -> dict[str, Any]:
        """Refit the device's overhead term on this job's verified plans (plus nothing else)."""
        from hwsearch.search.refit import refit_overhead

        return refit_overhead(self.client.engine, self.id, self.spec())


class Client:
    """Submits search jobs and finds them again; one database, one Ray cluster (or local Ray).

    `db_url`: any SQLAlchemy URL (default: HWSEARCH_DB, else the SQLite file in the data folder);
    the schema is created or upgraded on first use.

    >>> import tempfile
    >>> import hwsearch as hw
    >>> client = hw.Client(f"sqlite:///{tempfile.mkdtemp()}/hwsearch.db")  # a new, empty database
    >>> client.jobs()
    []
    >>> client.close()

    With a device profiled and its predictor trained (`hwsearch profile --local`, `hwsearch
    train`), `job = client.submit(hw.SearchSpec(model="vit_base", device=...))` starts a search;
    `job.wait()`, `job.pareto()` and `job.best(max_latency_ms=...)` read it back.
    """

    def __init__(self, db_url: str | None = None, ray_address: str | None = None) -> None:
        self.db_url = database_url(db_url)
        self.engine: Engine = open_db(self.db_url)
        self.ray_address = ray_address
        self._runners: dict[int, Any] = {}

    def profile(self, name: str | None = None, budget: str | int = "quick", for_models: Sequence[Any] = (),
                threads: int | None = None, show_progress: bool = True) -> dict[str, Any]:
        """Profile this machine into the database: a budget, plus everything the searches of
        `for_models` score (`hwsearch profile --local --for`). Each entry is a catalogue name, a
        ModelSpec, or a SearchSpec (its model, a traced torch module included, with its knobs)."""
        from hwsearch.profilers.runner import profile_local
        from hwsearch.search.anchors import measure_anchors

        requests: list[Any] = []
        for m in for_models:
            requests.append((m.model_description(), m.knob_values()) if isinstance(m, SearchSpec) else m)
        summary = profile_local(self.engine, name=name, budget=budget, threads=threads, models=requests,
                                show_progress=show_progress)
        anchors = measure_anchors(self.engine, summary.device, list(for_models), warn=lambda m: warnings.warn(m, stacklevel=3)) if for_models else {}
        return {**summary.as_dict(), "anchors_ms": anchors}

    def submit(self, spec: SearchSpec, progress: Callable[[int, int], None] | None = None,
               detach: bool = False) -> JobHandle:
        """Check the spec against the database (device, predictor, constraints), store the job, start it.

        The job runs on local Ray in this process, or as a detached actor on `ray_address`'s
        cluster; `detach` without a cluster runs it in a background process that outlives this one
        (`run_in_background`)."""
        handle = self.create(spec, progress)
        if detach and not self.ray_address:
            run_in_background(self.db_url, handle.id)
        else:
            self._launch(handle.id, 1, spec)
        return handle

    def create(self, spec: SearchSpec, progress: Callable[[int, int], None] | None = None) -> JobHandle:
        """Check the spec and store the job without starting it (`run` or another process starts it)."""
        from hwsearch.search.problem import build_problem

        build_problem(self.engine, spec, progress)  # every bad input fails here, before anything is stored
        job_id = jobs.create_job(self.engine, self.db_url, spec)
        return JobHandle(self, job_id, spec if spec.custom else None)

    def run(self, job_id: int, on_poll: Callable[[jobs.JobStatus], None] | None = None) -> jobs.JobStatus:
        """Start the job's current attempt here (local Ray unless `ray_address`) and wait for it."""
        status = jobs.job_status(self.engine, job_id)
        self._launch(job_id, status.attempt, None)
        return jobs.wait_for(self.engine, job_id, on_poll=on_poll)

    def resume(self, job_id: int, spec: SearchSpec | None = None, detach: bool = False) -> JobHandle:
        """Continue a failed, cancelled or stale job without losing its finished trials; it runs
        where `submit` would run it (`detach`: a background process when there is no cluster)."""
        attempt = jobs.claim_resume(self.engine, job_id)
        if detach and not self.ray_address:
            run_in_background(self.db_url, job_id)
        else:
            self._launch(job_id, attempt, spec)
        return JobHandle(self, job_id, spec)

    def _launch(self, job_id: int, attempt: int, spec: SearchSpec | None) -> None:
        connect_ray(self.ray_address)
        self._runners[job_id] = jobs.launch_runner(self.db_url, job_id, attempt, spec, detached=bool(self.ray_address))

    def job(self, job_id: int) -> JobHandle:
        jobs.get_job(self.engine, job_id)
        return JobHandle(self, job_id)

    def jobs(self, limit: int = 100) -> list[jobs.JobStatus]:
        return jobs.list_jobs(self.engine, limit)

    def close(self) -> None:
        self.engine.dispose()
