"""`hwsearch export`: a job's plan (or a plan file) in another tool's format."""

from __future__ import annotations

import typer

from hwsearch.cli.common import DB_OPTION, emit_json
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError


@app.command("export")
def export_plan(
    job: int | None = typer.Argument(None, help="A search job id (see `hwsearch jobs list`)."),
    trial: int | None = typer.Option(None, "--trial", help="With JOB: this trial's plan."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="With JOB: its best Pareto plan under X ms."),
    max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="With JOB: its best Pareto plan under X MB."),
    min_quality: float | None = typer.Option(None, "--min-quality", help="With JOB: its best Pareto plan of quality no worse than X (>= X; perplexity: <= X)."),
    plan_file: str | None = typer.Option(None, "--plan", help="A hwsearch.plan JSON file (v2, or v1) (instead of JOB)."),
    fmt: str = typer.Option(..., "--format", help="plan | compressed-tensors | modelopt"),
    out: str = typer.Option(..., "--out", help="File to write (modelopt: .yaml); the full plan is kept beside it."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document {path, format, plan_path, warnings}."),
    db: str | None = DB_OPTION,
) -> None:
    """Export a plan (of a job, or from a file) to another tool's format; says which plan it was and
    its figures, and warns on stderr about what the target cannot express."""
    import warnings

    from hwsearch.export import ExportWarning, export
    from hwsearch.spaces.plan import Plan

    budget = {"max_latency_ms": max_latency_ms, "max_size_mb": max_size_mb, "min_quality": min_quality}
    bounds = {k: v for k, v in budget.items() if v is not None}
    forms = "JOB [--trial N | --max-latency-ms X --max-size-mb X --min-quality X]"
    if (job is None) == (plan_file is None):
        raise HwsearchError(f"say which plan to export; accepted: {forms}, or --plan FILE")
    if job is None:
        if trial is not None or bounds:
            raise HwsearchError(f"--trial and the bounds go with JOB; accepted: {forms}")
        plan = Plan.from_file(plan_file)
        which, number = f"the plan in {plan_file}", None
    else:
        if trial is not None and bounds:
            raise HwsearchError(f"give --trial or bounds, not both; accepted: {forms}")
        from hwsearch.search.client import Client
        from hwsearch.search.report import chosen_plan

        handle = Client(db_url=db).job(job)
        number = trial if trial is not None else handle.best_trial(**budget)
        plan = handle.plan(number)
        which = chosen_plan(job, number, None if trial is not None else bounds, handle.spec().quality_metric)
    with warnings.catch_warnings(record=True):  # each is printed below as one line
        warnings.simplefilter("always", ExportWarning)
        result = export(plan, fmt, out)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json({**result.as_dict(), "job": job, "trial": number})
        return
    typer.echo(f"{which}: {result.figures()}")
    kept = "" if result.plan_path == result.path else f" (full plan kept in {result.plan_path})"
    typer.echo(f"wrote {result.format} to {result.path}{kept}")
