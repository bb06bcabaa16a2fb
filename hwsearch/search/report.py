"""Showing jobs to a person: the progress bar, the Pareto table, the predicted-vs-measured check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from hwsearch.console import wide_console
from hwsearch.search.accuracy import ERROR_HELP, ERROR_LABEL, error_pct, stood_behind
from hwsearch.search.jobs import JobStatus
from hwsearch.search.objectives import OBJECTIVES, constraint

COLUMN_FORMAT = {"latency_ms": "{:.3f}", "size_mb": "{:.2f}", "quality": "{:.4f}"}
NO_QUALITY = ("This search did not look at accuracy: its plans are the fastest and smallest whatever they do to the "
              "model's output. Search with quality (--objectives latency,quality, a model with weights such as "
              "digits_vit) before shipping a plan.")


class JobProgress:
    """A rich bar on stderr: trials done, best feasible point and hypervolume (`on_poll` callback)."""

    def __init__(self, show: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
                            console=Console(stderr=True), disable=not show)
        self.task: Any = None

    def __enter__(self) -> Callable[[JobStatus], None]:
        self.bar.start()
        return self.update

    def update(self, st: JobStatus) -> None:
        if self.task is None:
            self.task = self.bar.add_task(f"job {st.id} {st.model}@{st.device}", total=st.n_trials_total, info="")
        best = st.progress.get("best") or {}
        info = " ".join(f"{k}={v:.4g}" for k, v in best.items())
        hv = st.progress.get("hypervolume")
        info = f"{st.status}  best: {info or '-'}  HV {hv:.4f}" if hv is not None else st.status
        self.bar.update(self.task, completed=st.n_trials_done, info=info)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def status_doc(st: JobStatus) -> dict[str, Any]:
    doc = st.as_dict()
    for key in ("created_at", "started_at", "finished_at"):
        doc[key] = None if doc[key] is None else doc[key].isoformat()
    return doc


def print_jobs(rows: list[JobStatus], console: Console | None = None) -> None:
    console = console or wide_console()
    if not rows:
        console.print("No jobs yet. Start one with [bold]hwsearch search --model M --device D[/bold].")
        return
    grid = Table(title="Search jobs", title_justify="left")
    for col in ("id", "name", "status", "trials", "sampler", "HV", "heartbeat"):
        grid.add_column(col)
    for st in rows:
        status = f"{st.status} [red](stale: resume it)" if st.stale else st.status
        hv = st.progress.get("hypervolume")
        beat = "-" if st.heartbeat_age_s is None else f"{st.heartbeat_age_s:.0f} s ago"
        grid.add_row(str(st.id), st.name, status, f"{st.n_trials_done}/{st.n_trials_total}", st.sampler,
                     "-" if hv is None else f"{hv:.4f}", beat)
    console.print(grid)


def print_front(front: pd.DataFrame, title: str, console: Console | None = None, limit: int = 15) -> None:
    console = console or wide_console()
    grid = Table(title=title, title_justify="left")
    shown = front if len(front) <= limit else front.iloc[[int(round(i)) for i in
                                                         pd.Series(range(limit)) * (len(front) - 1) / (limit - 1)]]
    cols = [c for c in front.columns if c not in ("plan_id",)]
    for col in cols:
        grid.add_column(col, justify="right")
    for _, row in shown.iterrows():
        grid.add_row(*[COLUMN_FORMAT.get(c, "{}").format(row[c]) if row[c] is not None else "-" for c in cols])
    if len(front) > limit:
        grid.caption = f"{limit} of {len(front)} Pareto points, spread along the front"
    console.print(grid)
    if "quality" not in front.columns:
        console.print(f"[yellow]{NO_QUALITY}[/yellow]")


def print_verification(result: dict[str, Any], console: Console | None = None) -> None:
    console = console or wide_console()
    latency = (result.get("provenance") or {}).get("latency") or {}
    if latency.get("extrapolated"):
        console.print(f"[yellow]latency estimates extrapolated:[/yellow] {latency.get('detail', '')}")
    rows = result.get("verified") or []
    if not rows:
        console.print("No plans verified (verify_top_k = 0, or no feasible Pareto point).")
        return
    grid = Table(title="Predicted vs measured on the device (end-to-end: floor of 3 interleaved rounds; p10/p90 over all timed blocks)", title_justify="left")
    cols = ["trial", "round", "predicted_ms", "measured_ms", ERROR_LABEL, "p10_ms", "p90_ms"]
    if any(r.get("searched_ms") is not None for r in rows):  # the search's own estimate, before re-anchoring
        cols.insert(2, "searched_ms")
    if any(r.get("corrected_ms") is not None and r["corrected_ms"] != r.get("predicted_ms") for r in rows):
        cols.insert(cols.index("predicted_ms") + 1, "corrected_ms")  # after a refit's correction: what the error is of
    if any("prefill_ms" in r for r in rows):  # a decode search: time to first token beside ms per token
        cols += ["predicted_prefill_ms", "prefill_ms"]
    if any("measured_quality" in r for r in rows):
        cols += ["predicted_quality", "measured_quality"]
    for col in cols:
        grid.add_column(col, justify="right")
    for r in rows:
        r = {**r, ERROR_LABEL: error_pct(stood_behind(r), r.get("measured_ms"))}
        grid.add_row(*[("-" if r.get(c) is None or r[c] != r[c] else f"{r[c]:+.1f}" if c == ERROR_LABEL
                        else f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols])
    s = result.get("verification") or {}
    parts = []
    if "mape" in s:
        parts.append(f"latency MAPE {s['mape']:.1f} %, within ±10 %: {s['within_10pct']:.0%}")
    if "last_round" in s:
        last = s["last_round"]
        parts.append(f"round {last['round']} (after refits, {last['plans']} plans): MAPE {last['mape']:.1f} %, "
                     f"within ±10 %: {last['within_10pct']:.0%}")
    if "violations" in s:
        parts.append(f"{s['violations']} of {s['plans']} chosen plans break latency <= {s['max_latency_ms']:g} ms when measured")
    if "prefill_ms" in s:
        lo, hi = s["prefill_ms"]
        ttft = f"time to first token (the context's prefill) measured {lo:.1f}-{hi:.1f} ms"
        parts.append(f"{ttft}, predicted with MAPE {s['prefill_mape']:.1f} %" if "prefill_mape" in s else
                     f"{ttft} (not predicted: its prefill is not calibrated; `hwsearch bench model-latency` "
                     "with the prefill model, e.g. tiny_llama:tokens=512, calibrates it)")
    if s.get("quality_abs_error") is not None:
        parts.append(f"quality proxy mean abs error {s['quality_abs_error']:.4f}")
    grid.caption = "; ".join(parts)
    console.print(grid)
    console.print(f"{ERROR_LABEL} = {ERROR_HELP}")


def job_doc(st: JobStatus, front: pd.DataFrame, verifications: pd.DataFrame | None = None) -> dict[str, Any]:
    """A job as one JSON document: its status, its front and (when given) its verified plans."""
    doc = {**status_doc(st), "pareto": front.to_dict(orient="records")}
    if verifications is not None:
        doc["verifications"] = verifications.to_dict(orient="records")
    return doc


def print_finished(st: JobStatus, front: pd.DataFrame, console: Console | None = None) -> None:
    """A finished job: its front (titled with model, device, trials and hypervolume) and its verification."""
    print_front(front, f"Pareto front of job {st.id} ({st.model} on {st.device}, {st.n_trials_done} trials, "
                       f"HV {st.result.get('hypervolume', 0):.4f})", console)
    print_verification(st.result, console)


def print_job(st: JobStatus, front: pd.DataFrame, console: Console | None = None) -> None:
    """One job as `hwsearch jobs show` prints it: its row, its error, its front so far, its verification."""
    print_jobs([st], console)
    if st.error:
        print(f"error: {st.error}")
    if len(front):
        print_front(front, f"Pareto front of job {st.id} so far" if not st.finished else f"Pareto front of job {st.id}",
                    console)
    if st.result:
        print_verification(st.result, console)


BOUND_KEYS = {"max_latency_ms": "latency_ms", "max_size_mb": "size_mb", "min_quality": "min_quality"}


def bound_text(key: str, value: float, metric: str | None = None) -> str:
    """`min_quality` 0.95 -> "quality >= 0.95" ("quality <= 8" for perplexity: no worse than the bound)."""
    name, kind = constraint(BOUND_KEYS[key], metric)
    return f"{OBJECTIVES[name].column} {'<=' if kind == 'max' else '>='} {value:g}"


def chosen_plan(job_id: int, trial: int, bounds: dict[str, float] | None = None, metric: str | None = None) -> str:
    """Which plan of a job was taken, in words: "job 2 trial 17 (the best Pareto plan with quality >= 0.95)";
    `bounds` None: the trial was named, not chosen."""
    why = "" if bounds is None else " (the best Pareto plan" + "".join(
        f"{' with' if i == 0 else ','} {bound_text(k, v, metric)}" for i, (k, v) in enumerate(bounds.items())) + ")"
    return f"job {job_id} trial {trial}{why}"
