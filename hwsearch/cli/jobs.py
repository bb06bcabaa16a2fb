"""`hwsearch search` and `hwsearch jobs`: start a search, then list, show, cancel and resume jobs."""

from __future__ import annotations

from typing import Any

import typer

from hwsearch.cli.common import DB_OPTION, emit_json
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError
from hwsearch.search.samplers import sampler_names


@app.command("search")
def search(
    model: str = typer.Option(..., "--model", help="A catalogue model, e.g. vit_base or digits_vit."),
    device: str = typer.Option(..., "--device", help="A stored device with a predictor (see `hwsearch devices`)."),
    objectives: str = typer.Option("latency,size", "--objectives", help="Comma list of latency, size, quality."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="Constraint: predicted latency <= X ms."),
    max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="Constraint: linear-layer size <= X MB."),
    min_quality: float | None = typer.Option(None, "--min-quality", help="Constraint: predicted quality no worse than X (>= X; perplexity: <= X)."),
    trials: int = typer.Option(500, "--trials", help="Trials in the study."),
    workers: int = typer.Option(1, "--workers", help="Parallel trial workers (Ray tasks)."),
    sampler: str = typer.Option("nsga2", "--sampler", help=" | ".join(sampler_names())),
    seed: int = typer.Option(0, "--seed"),
    verify_top_k: int = typer.Option(3, "--verify-top-k", help="Pareto plans timed end to end on the device."),
    verify_tolerance_pct: float = typer.Option(10.0, "--verify-tolerance-pct", help="A verified plan holds within "
                                               "this % of its estimate; otherwise the job refits and verifies again "
                                               "(at most 3 rounds)."),
    profile_missing: bool = typer.Option(False, "--profile-missing", help="Measure here first what the search would "
                                         "otherwise predict (as `profile --local --for MODEL`)."),
    detach: bool = typer.Option(False, "--detach", help="Start the job and return; watch with `hwsearch jobs show ID`."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster (default: local Ray)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Search per-layer compression plans (Optuna on Ray), verify the best on the device."""
    from hwsearch.search.client import Client
    from hwsearch.search.spec import SearchSpec

    constraints = {k: v for k, v in (("latency_ms", max_latency_ms), ("size_mb", max_size_mb),
                                     ("min_quality", min_quality)) if v is not None}
    spec = SearchSpec(model=model, device=device, objectives=[o.strip() for o in objectives.split(",") if o.strip()],
                      constraints=constraints, sampler=sampler, n_trials=trials, n_workers=workers, seed=seed,
                      verify_top_k=verify_top_k, verify_tolerance_pct=verify_tolerance_pct,
                      profile_missing=profile_missing)
    client = Client(db, ray_address)
    if detach:
        job = client.submit(spec, detach=True)
        emit_json({"job": job.id, "status": "started"}) if as_json else typer.echo(
            f"job {job.id} started; watch it with `hwsearch jobs show {job.id}`")
        return
    _run_and_show(client.submit(spec), as_json)


def _run_and_show(job: Any, as_json: bool) -> None:
    """Wait for a job with a progress bar, then print its front and verification (or one JSON document)."""
    from hwsearch.search.report import JobProgress, job_doc, print_finished

    with JobProgress(not as_json) as on_poll:
        st = job.wait(on_poll=on_poll)
    if st.status != "done":
        raise HwsearchError(f"job {job.id} {st.status}: {st.error or 'no error recorded'}")
    front = job.pareto()
    if as_json:
        emit_json(job_doc(st, front))
        return
    print_finished(st, front)


jobs_app = typer.Typer(help="Search jobs: list, show, cancel, resume.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(as_json: bool = typer.Option(False, "--json"), db: str | None = DB_OPTION) -> None:
    """Every job with its status, progress and heartbeat."""
    from hwsearch.search.client import Client
    from hwsearch.search.report import print_jobs, status_doc

    rows = Client(db).jobs()
    if as_json:
        emit_json({"jobs": [status_doc(r) for r in rows]})
        return
    print_jobs(rows)


@jobs_app.command("show")
def jobs_show(job_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
              db: str | None = DB_OPTION) -> None:
    """One job: status, progress, and (when done) its Pareto front and verification."""
    from hwsearch.search.client import Client
    from hwsearch.search.report import job_doc, print_job

    job = Client(db).job(job_id)
    st = job.status()
    front = job.pareto()
    if as_json:
        emit_json(job_doc(st, front, job.verifications()))
        return
    print_job(st, front)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
                db: str | None = DB_OPTION) -> None:
    """Stop a queued or running job (finished trials are kept)."""
    from hwsearch.search.client import Client
    from hwsearch.search.report import status_doc

    st = Client(db).job(job_id).cancel()
    emit_json(status_doc(st)) if as_json else typer.echo(f"job {job_id}: {st.status}")


@jobs_app.command("resume")
def jobs_resume(
    job_id: int = typer.Argument(...),
    detach: bool = typer.Option(False, "--detach", help="Resume in the background and return."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="A Ray cluster (default: local Ray)."),
    as_json: bool = typer.Option(False, "--json"),
    db: str | None = DB_OPTION,
) -> None:
    """Continue a failed, cancelled or stale job without losing its finished trials."""
    from hwsearch.search.client import Client

    job = Client(db, ray_address).resume(job_id, detach=detach)
    if detach:
        emit_json({"job": job_id, "status": "resumed"}) if as_json else typer.echo(f"job {job_id} resumed")
        return
    _run_and_show(job, as_json)


@jobs_app.command("run", hidden=True)
def jobs_run(job_id: int = typer.Argument(...), db: str | None = DB_OPTION) -> None:
    """Run a stored job's current attempt in this process (what --detach starts in the background)."""
    from hwsearch.search.client import Client

    Client(db).run(job_id)
