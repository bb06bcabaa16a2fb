"""The `hwsearch` command. Thin: parses options, calls the API, prints.

Heavy libraries (torch, xgboost, ray) are imported inside the commands so `hwsearch --help`
stays fast.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import typer

from hwsearch.errors import HwsearchError

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    help="Hardware-aware compression search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: flags shown as flags (rich help shows `--detach <bool>`)
)
bench_app = typer.Typer(help="Benchmarks: each prints numbers (use --json for one JSON document).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.callback()
def options(verbose: bool = typer.Option(False, "--verbose", help="Also show third-party log lines (Ray's start-up, ...).")) -> None:
    """Options of every command (before its name: `hwsearch --verbose search ...`)."""
    if verbose:
        import os

        from hwsearch.config import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"  # the processes a command starts inherit it


def wide_console() -> Console:
    """Rich console for tables: the terminal's width, or 200 columns off a terminal (`report.wide_console`)."""
    from hwsearch.search.report import wide_console as console

    return console()


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout (the contract of every --json flag)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


DB_OPTION = typer.Option(None, "--db", help="SQLAlchemy URL (default: HWSEARCH_DB or the SQLite file in the data folder).")


def open_engine(db: str | None):
    """The database engine, schema brought to head; one-line error if it does not answer."""
    from hwsearch.db.engine import open_db

    return open_db(db)


def main() -> None:
    """Entry point: every error a user can cause is one line on stderr and exit status 2.

    A HwsearchError and a bad option (click's usage errors) say what is wrong and what is
    accepted; an OSError names the file. Anything else is a bug: one line too, exit status 1, and
    the traceback with `--verbose`. Ctrl+C exits with 130.
    """
    from typer._click import exceptions as click_errors  # typer's own copy of click

    from hwsearch.config import verbose

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as err:
        err.show()  # the help text, as `hwsearch` alone always printed
        raise SystemExit(2) from None
    except click_errors.UsageError as err:
        where = f"; see `{err.ctx.command_path} --help`" if err.ctx is not None else ""
        typer.echo(f"error: {' '.join(err.format_message().split()).rstrip('.')}{where}", err=True)
        raise SystemExit(2) from None
    except click_errors.ClickException as err:  # a file option that cannot be opened ...
        typer.echo(f"error: {' '.join(err.format_message().split())}", err=True)
        raise SystemExit(2) from None
    except HwsearchError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except OSError as err:
        if verbose():
            raise
        where = f" ({err.filename})" if err.filename else ""
        typer.echo(f"error: {err.strerror or err}{where}; accepted: a path this user can read and write", err=True)
        raise SystemExit(2) from None
    except Exception as err:  # noqa: BLE001 - a bug: one line here, the traceback with --verbose
        if verbose():
            raise
        text = " ".join(str(err).split())[:300]
        typer.echo(f"error: unexpected {type(err).__name__}: {text} (a bug in hwsearch; `hwsearch --verbose ...` "
                   "shows where)", err=True)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


plan_app = typer.Typer(help="Plan documents (hwsearch.plan/v1): their JSON Schema, and validation.", no_args_is_help=True)
app.add_typer(plan_app, name="plan")


@plan_app.command("schema")
def plan_schema(out: str | None = typer.Option(None, "--out", help="Write the schema to this file instead of stdout.")) -> None:
    """Print the published JSON Schema of plan documents."""
    from hwsearch.spaces.plan import Plan

    schema = Plan.json_schema()
    if out:
        from pathlib import Path

        Path(out).write_text(json.dumps(schema, indent=2) + "\n")
        typer.echo(f"wrote {out}")
    else:
        emit_json(schema)


@plan_app.command("validate")
def plan_validate(path: str = typer.Argument(..., help="A plan JSON file (or an export: the plan beside it is checked).")) -> None:
    """Check a plan file against its schema and its catalogue model's layers and groups.

    Given a file `hwsearch export` wrote for another tool, says what it is and checks the full
    plan kept beside it."""
    from pathlib import Path

    from hwsearch.export.files import plan_path_for
    from hwsearch.export.identify import describe, identify
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import PLAN_SCHEMA, Plan, read_plan_text, validate_plan

    file = Path(path)
    text = read_plan_text(file)
    fmt = identify(text)
    if fmt is not None:
        kept = plan_path_for(file)
        if not kept.is_file():
            raise HwsearchError(f"{describe(file, fmt)}, which is missing; accepted: a {PLAN_SCHEMA} file "
                                "(`hwsearch export --format plan`)")
        typer.echo(describe(file, fmt))
        path, text = str(kept), read_plan_text(kept)
    try:
        plan = Plan.from_json(text)
    except HwsearchError as err:
        raise HwsearchError(f"{path} is neither a plan nor a file `hwsearch export` wrote: {err}") from None
    validate_plan(plan, get_model(plan.model))
    typer.echo(f"{path}: valid plan for {plan.model} ({len(plan.layers)} compressed layers)")


@app.command("version")
def version() -> None:
    """Print the hwsearch version."""
    from hwsearch import __version__

    typer.echo(__version__)


@app.command("profile")
def profile(
    local: bool = typer.Option(False, "--local", help="Profile the machine you are on."),
    device: str | None = typer.Option(None, "--device", help="Profile the Ray node(s) offering device:NAME."),
    name: str | None = typer.Option(None, "--name", help="Device name to store under (default: <host>-cpu)."),
    budget: str = typer.Option("quick", "--budget", help="quick | standard | full | a number of configurations."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per kernel (default: all cores)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampling plan."),
    max_gflops: float | None = typer.Option(None, "--max-gflops", min=0, help="Skip kernels above this many GFLOP."),
    for_models: str | None = typer.Option(None, "--for", help="Also measure what these models' searches score, e.g. vit_base,digits_vit (--local)."),
    address: str | None = typer.Option(None, "--address", help="Ray head HOST:PORT for --device (default: RAY_ADDRESS or the local cluster)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Measure kernels on a device and store them (resumable: stored ones are not measured again)."""
    from hwsearch.profilers.runner import profile_local
    from hwsearch.profilers.sampling import parse_budget
    from hwsearch.spaces.catalog import get_model

    if local == (device is not None):
        raise HwsearchError("say where to profile; accepted: --local, or --device NAME (a Ray node offering device:NAME)")
    if device is not None and name is not None:
        raise HwsearchError("--name goes with --local; a --device is stored under its own NAME; accepted: --device NAME alone")
    parsed = parse_budget(budget)
    max_flops = None if max_gflops is None else max_gflops * 1e9
    models = [m.strip() for m in (for_models or "").split(",") if m.strip()]
    if models and device is not None:
        raise HwsearchError("--for measures on this machine; accepted: --local --for MODEL[,MODEL]")
    for m in models:
        get_model(m)  # an unknown model: one line listing the catalogue
    engine = open_engine(db)
    if device is not None:
        from hwsearch.profilers.cluster import profile_cluster

        summary = profile_cluster(engine, device, budget=parsed, threads=threads, seed=seed,
                                  show_progress=not as_json, max_flops=max_flops, address=address)
    else:
        summary = profile_local(engine, name=name, budget=parsed, threads=threads, seed=seed,
                                show_progress=not as_json, max_flops=max_flops, models=models)
    doc = summary.as_dict()
    if models:  # each model uncompressed, timed end to end: the anchor its plans are predicted from
        from hwsearch.search.anchors import measure_anchors

        doc["anchors_ms"] = measure_anchors(engine, summary.device, models, warn=lambda m: typer.echo(m, err=True))
    if as_json:
        emit_json(doc)
        return
    if summary.measured == 0:
        typer.echo(f"{summary.device}: nothing new to measure ({summary.already_stored} of {summary.planned} already stored)")
    else:
        typer.echo(
            f"{summary.device}: measured {summary.measured} kernels in {summary.seconds:.0f} s "
            f"({summary.already_stored} of {summary.planned} were already stored; "
            f"{summary.unstable} unstable after re-measuring, stored with the flag)"
        )
    for key, ms in (doc.get("anchors_ms") or {}).items():
        typer.echo(f"{key.partition('@')[0]}: uncompressed {ms:.2f} ms end to end (the anchor its plans are predicted from)")


devices_app = typer.Typer(help="Devices: list them, move their measurements between installations.")
app.add_typer(devices_app, name="devices")


@devices_app.callback(invoke_without_command=True)
def devices(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Devices with their measurement counts per op/format, and how many are native."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"db": db}
        return
    from hwsearch.profilers.coverage import device_table

    table = device_table(open_engine(db))
    if as_json:
        emit_json({"devices": table})
        return
    print_device_table(table)


@devices_app.command("export")
def devices_export(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="A stored device name."),
    path: str = typer.Argument(..., help="File to write (JSON; gzip when it ends in .gz)."),
    db: str | None = DB_OPTION,
) -> None:
    """Write a device's fingerprint and measurements to a file."""
    from hwsearch.profilers.transfer import export_device

    done = export_device(open_engine(db or (ctx.obj or {}).get("db")), name, path)
    typer.echo(f"exported {done['measurements']} measurements of {name} to {done['path']}")


@devices_app.command("import")
def devices_import(
    ctx: typer.Context,
    path: str = typer.Argument(..., help="A file written by `hwsearch devices export`."),
    name: str | None = typer.Option(None, "--name", help="Store under another device name."),
    db: str | None = DB_OPTION,
) -> None:
    """Store a device profile exported elsewhere (measurements already stored are skipped)."""
    from hwsearch.profilers.transfer import import_device

    done = import_device(open_engine(db or (ctx.obj or {}).get("db")), path, name=name)
    typer.echo(f"imported {done['imported']} measurements into {done['device']} ({done['already_stored']} already stored)")


def device_caption(dev: dict[str, Any]) -> str:
    """Limits and the machine's state during its last profile, in a line or two."""
    parts = []
    limits = (dev.get("fingerprint") or {}).get("limits")
    if limits:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in limits.get("peak_gflops", {}).items())
        parts.append(f"memory {limits['memory_gbs']:.0f} GB/s, cache {limits['cache_gbs']:.0f} GB/s, peak GFLOP/s: {peaks}")
    state = dev.get("last_profile") or {}
    if state:
        before = (state.get("before") or {})
        load = before.get("loadavg") or []
        other = before.get("other_share")
        peak = state.get("during_peak_other_share")
        text = f"last profile: load {'/'.join(str(x) for x in load) or '?'}"
        if other is not None:
            text += f", others used {other:.0%} of the CPU before"
        if peak is not None:
            text += f" and at most {peak:.0%} during"
        if before.get("governor"):
            text += f", governor {before['governor']}"
        parts.append(text)
        parts += [f"[red]warning: {w}" for w in state.get("warnings") or []]
    if dev.get("unstable"):
        parts.append(f"{dev['unstable']} measurements flagged unstable")
    return "\n".join(parts)


def print_device_table(table: list[dict[str, Any]]) -> None:
    from rich.table import Table

    console = wide_console()
    if not table:
        console.print("No devices yet. Profile this machine with [bold]hwsearch profile --local[/bold].")
        return
    for dev in table:
        grid = Table(title=f"{dev['name']} ({dev['kind']}: {dev['hardware']}, {dev['threads']} threads)", title_justify="left",
                     caption=device_caption(dev))
        grid.add_column("op/format")
        grid.add_column("measured", justify="right")
        grid.add_column("native", justify="right")
        grid.add_column("emulated", justify="right")
        for family, counts in dev["by_op"].items():
            grid.add_row(family, str(counts["total"]), str(counts["native"]), str(counts["total"] - counts["native"]))
        grid.add_row("[bold]all", f"[bold]{dev['measurements']}", f"[bold]{dev['native']}", f"[bold]{dev['emulated']}")
        console.print(grid)


@bench_app.command("kernels")
def bench_kernels(
    device: str = typer.Option(..., "--device", help="A stored device name (see `hwsearch devices`)."),
    threads: int | None = typer.Option(None, "--threads", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Measured speed-ups over bf16 dense for a ViT-B MLP and an LLM decode GEMM."""
    from hwsearch.bench.kernels import run
    from hwsearch.profilers.cluster import check_threads

    check_threads(threads)
    doc = run(open_engine(db), device, threads=threads)
    if as_json:
        emit_json(doc)
        return
    from rich.markup import escape
    from rich.table import Table

    limits = doc.get("limits")
    caption = (f"memory {limits['memory_gbs']:.0f} GB/s, cache {limits['cache_gbs']:.0f} GB/s (this device's probe)"
               if limits else "no limits probed for this device (profile it again to measure them)")
    grid = Table(title=f"Kernel speed-ups on {device} (floor of interleaved rounds; emulated kernels are not real speed-ups)",
                 caption=caption)
    for col in ("shape M×K×N", "format", "sparsity", "rank", "native", "implementation", "µs", "× bf16", "GB/s", "TFLOP/s",
                "rounds"):
        grid.add_column(col)
    for r in doc["rows"]:
        note = "legacy" if r["rounds"] is None else f"{r['rounds']} ±{100 * r['spread']:.0f}%" + (" [red]unstable" if r["unstable"] else "")
        grid.add_row("×".join(map(str, r["shape"])), r["format"], r["sparsity"], str(r["rank"] or "full"),
                     "yes" if r["native"] else "[red]emulated", escape(r["implementation"]), f"{r['median_us']:.1f}",
                     f"{r['speedup_vs_bf16']:.2f}", f"{r['achieved_gbs']:.1f}", f"{r['achieved_tflops']:.3f}", note)
    wide_console().print(grid)


@bench_app.command("help")
def bench_help(
    data: str | None = typer.Option(None, "--data", help="HELP data folder (default: ../shared/data/external/help)."),
    space: str = typer.Option("nasbench201", "--space", help="nasbench201 | fbnet | ofa"),
    train_devices: str | None = typer.Option(None, "--train-devices", help="Comma list (default: HELP's meta-train devices)."),
    valid_devices: str | None = typer.Option(None, "--valid-devices", help="Comma list for checkpoint selection (default: HELP's; '' for none)."),
    test_devices: str | None = typer.Option(None, "--test-devices", help="Comma list (default: HELP's meta-test devices)."),
    shots: int = typer.Option(10, "--shots", help="Labelled architectures of each test device."),
    seeds: int = typer.Option(5, "--seeds", help="Draws of the adaptation samples."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """HELP's few-shot latency benchmark for the meta-learned predictor (Spearman and ±10 %)."""
    from pathlib import Path

    from hwsearch.bench.help import run_help

    path = Path(data) if data else Path.cwd().parent / "shared" / "data" / "external" / "help"
    split = (lambda s: None if s is None else s.split(","))  # noqa: E731
    with _BenchProgress(not as_json) as progress:
        doc = run_help(path, space, split(train_devices), split(valid_devices), split(test_devices),
                       shots=shots, seeds=seeds, progress=progress)
    if as_json:
        emit_json(doc)
        return
    from rich.table import Table

    pub = doc["published"]
    grid = Table(title=f"HELP benchmark, {doc['space']}: {doc['shots']} shots, mean of {doc['seeds']} seeds",
                 caption=f"published: {pub['source']}", title_justify="left")
    for col in ("device", "Spearman", "within ±10 %", "HELP published Spearman"):
        grid.add_column(col, justify="right" if col != "device" else "left")
    for dev, m in doc["devices"].items():
        ref = pub["spearman"].get(dev)
        grid.add_row(dev, f"{m['spearman']:.3f}", f"{m['within_10pct']:.3f}", "-" if ref is None else f"{ref:.3f}")
    mean_ref = pub["mean_spearman"]
    grid.add_row("[bold]mean", f"[bold]{doc['mean_spearman']:.3f}", f"[bold]{doc['mean_within_10pct']:.3f}",
                 "-" if mean_ref is None else f"[bold]{mean_ref:.3f}")
    for name, val in pub["baselines"].items():
        grid.add_row(f"[dim]{name}", "", "", f"[dim]{val:.3f}")
    wide_console().print(grid)


@bench_app.command("gemm-transfer")
def bench_gemm_transfer(
    data: str | None = typer.Option(None, "--data", help="Vidur gemm_fp16.csv (default: ../shared/data/external/vidur/gemm_fp16.csv)."),
    source: str = typer.Option("", "--source", help="Comma list of source GPUs (default: every GPU but the target)."),
    target: str = typer.Option("h100", "--target", help="Target GPU, or 'all': each GPU in turn, one table."),
    shots: int = typer.Option(10, "--shots", help="Labelled target shapes (the reference shapes count against them); 0: spec sheet only."),
    seeds: int = typer.Option(5, "--seeds", help="Draws of the non-reference shots."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also score the HELP-style meta-predictor on shape features (slower)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Vidur fp16 GEMMs: learn on source GPUs, predict the target from its spec sheet and a few shapes."""
    from pathlib import Path

    from hwsearch.bench.gemm_transfer import run_gemm_transfer

    path = Path(data) if data else Path.cwd().parent / "shared" / "data" / "external" / "vidur" / "gemm_fp16.csv"
    with _BenchProgress(not as_json) as progress:
        doc = run_gemm_transfer(path, source.split(","), target, shots=shots, seeds=seeds, baseline=baseline,
                                progress=progress)
    if as_json:
        emit_json(doc)
        return
    from rich.table import Table

    pub = doc["published"]
    grid = Table(title=f"GEMM transfer to {target}: {shots} shots ({doc['reference']} fixed reference shapes + random), "
                       f"mean of {seeds} seeds, scored on every other target shape",
                 caption=f"method: {doc['method']}\nbaseline: {doc['baseline_method']}\n"
                         f"compare: {pub['methods']} ({pub['numbers']})\n"
                         "noise floor: Vidur's repeated rows of one shape within ±10 % of its median; "
                         "data: Vidur profiling (github.com/microsoft/vidur)",
                 title_justify="left", caption_justify="left")
    cols = ("target", "sources", "within ±10 %", "Spearman", "MAPE %", "0-shot ±10 %", "0-shot MAPE %",
            "baseline ±10 %", "baseline Spearman", "noise floor ±10 %")
    for col in cols:
        grid.add_column(col, justify="left" if col in ("target", "sources") else "right")
    for name, row in doc["targets"].items():
        base, zero, floor = row["baseline"], row["zero_shot"], row["noise_floor"]["within_10pct"]
        few = ("-", "-", "-") if shots == 0 else (f"{row['within_10pct']:.3f}", f"{row['spearman']:.3f}",
                                                  f"{row['mape']:.1f}")
        grid.add_row(name, ",".join(row["source"]), *few, f"{zero['within_10pct']:.3f}", f"{zero['mape']:.1f}",
                     "-" if base is None else f"{base['within_10pct']:.3f}",
                     "-" if base is None else f"{base['spearman']:.3f}", "-" if floor is None else f"{floor:.3f}")
    wide_console().print(grid)


@app.command("train")
def train(
    device: str = typer.Option(..., "--device", help="A stored device name (see `hwsearch devices`)."),
    kind: str = typer.Option("xgboost", "--kind", help="xgboost | meta | all"),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split (and of meta-training)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Train latency predictors for a device, score them on held-out kernels, store them."""
    from hwsearch.predictors.registry import train as train_predictors

    with _BenchProgress(not as_json) as progress:
        done = train_predictors(open_engine(db), device, kind, progress=progress, seed=seed)
    if as_json:
        emit_json({"device": device, "trained": done})
        return
    if not done:
        typer.echo(f"{device}: nothing trained (too few kernels for XGBoost; try --kind meta)")
    for t in done:
        held = (t["metrics"].get("held_out") or {}).get("all")
        score = (f"held-out within ±10 %: {held['within_10pct']:.1%}, MAPE {held['mape']:.1f} %, n={held['n']}"
                 if held else "no held-out score (too few kernels)")
        typer.echo(f"{device}: stored {t['kind']} predictor #{t['id']}; {score}")


@app.command("predict")
def predict(
    device: str = typer.Option(..., "--device", help="A stored device name."),
    model: str = typer.Option(..., "--model", help="A catalogue model, e.g. vit_base or llama3_8b:tokens=16."),
    plan_file: str | None = typer.Option(None, "--plan", help="A hwsearch.plan/v1 JSON file (default: uncompressed)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Predicted latency of a model (under a plan) on a device, and which predictor answered."""
    from hwsearch.predictors.model_latency import predict_model

    doc = predict_model(open_engine(db), device, model, plan_file)
    if as_json:
        emit_json(doc)
        return
    typer.echo(f"{model} on {device}: {doc['latency_ms']:.3f} ms predicted "
               f"(kernels {doc['kernel_ms']:.3f} ms + overhead {doc['overhead_ms']:.3f} ms, {doc['kernels']} kernels)")
    typer.echo(f"{100 * doc['measured_share']:.0f} % of the kernel time from measurements on {device}, the rest predicted")
    typer.echo("anchored on the uncompressed model timed end to end" if doc["anchored"] else
               f"not anchored: `hwsearch profile --local --for {model}` times the uncompressed model here")
    typer.echo(f"answered by: {doc['predictor']['detail']}")


@bench_app.command("repeat")
def bench_repeat(
    device: str = typer.Option(..., "--device", help="A stored device profiled on this machine."),
    sample: int = typer.Option(100, "--sample", min=1, help="Stored kernels to re-time."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Re-time a sample of stored kernels now: how well the device's measurements repeat."""
    from hwsearch.bench.repeat import run as run_repeat
    from hwsearch.profilers.progress import progress_bar

    with progress_bar(not as_json) as bar:
        task = bar.add_task(f"re-timing {device}", total=sample)
        doc = run_repeat(open_engine(db), device, sample=sample, seed=seed,
                         progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        emit_json(doc)
        return
    from rich.table import Table

    grid = Table(title=f"{device}: {doc['n']} stored kernels re-timed now ({doc['unstable']} stored unstable, "
                       f"{doc['legacy']} from before rounds)", caption=doc["statistic"], title_justify="left")
    for col in ("kernels", "n", "within ±5 %", "within ±10 %", "median |log ratio|", "ratio p10–p90"):
        grid.add_column(col, justify="left" if col == "kernels" else "right")
    for label, m in (("all", doc), ("stable only", doc["stable_only"]), *doc["per_op"].items()):
        if m["n"]:
            grid.add_row(label, str(m["n"]), f"{m['within_5pct']:.1%}", f"{m['within_10pct']:.1%}",
                         f"{m['median_abs_log_ratio']:.3f}", f"{m['ratio_p10']:.2f}–{m['ratio_p90']:.2f}")
    console = wide_console()
    console.print(grid)
    for ref in doc["references"]:
        console.print(f"  reference: {ref}")


@bench_app.command("predictors")
def bench_predictors(
    device: str = typer.Option(..., "--device", help="A stored device name."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Kernel-latency accuracy per op family: random and shape-extrapolation splits, noise floor."""
    from hwsearch.bench.predictors import run as run_bench

    doc = run_bench(open_engine(db), device, seed=seed)
    if as_json:
        emit_json(doc)
        return
    from rich.table import Table

    rounds = doc["noise_floor"].get("rounds") or {}
    floor = (f"; noise floor: two fastest rounds within ±10 % for {rounds['rounds_within_10pct']:.0%} of kernels"
             if rounds.get("rounds_within_10pct") is not None else "")
    grid = Table(title=f"Kernel latency predictor on {device} ({doc['rows']} kernels, "
                       f"{doc['noise_floor']['dropped_unstable']} unstable left out); median CoV "
                       f"{doc['noise_floor']['median_cov']:.3f}{floor}",
                 caption=f"published: {doc['published']['source']}; re-time kernels with `hwsearch bench repeat`",
                 title_justify="left")
    for col in ("split", "family", "n", "within ±10 %", "within ±5 %", "MAPE %", "Spearman"):
        grid.add_column(col, justify="left" if col in ("split", "family") else "right", no_wrap=True)
    for split, body in doc["splits"].items():
        for fam, m in body["scores"].items():
            if m["n"]:
                rho = "-" if m["spearman"] is None else f"{m['spearman']:.3f}"
                grid.add_row(split, fam, str(m["n"]), f"{m['within_10pct']:.1%}", f"{m['within_5pct']:.1%}",
                             f"{m['mape']:.1f}", rho)
    wide_console().print(grid)


@bench_app.command("quality")
def bench_quality_cmd(
    model: str = typer.Option("digits_vit", "--model", help="A model with weights: digits_vit or minilm."),
    plans: int = typer.Option(50, "--plans", help="Random plans to apply and score."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random plans."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """Sensitivity proxy vs. real quality of random plans (Spearman, MAE)."""
    from hwsearch.bench.quality import bench_quality

    with _BenchProgress(not as_json) as progress:
        doc = bench_quality(model, plans=plans, seed=seed, progress=progress)
    if as_json:
        emit_json(doc)
        return
    typer.echo(
        f"{doc['model']}: {plans} random plans, real {doc['metric']} {doc['real_min']:.3f}..{doc['real_max']:.3f} "
        f"(uncompressed {doc['base_quality']:.3f}); proxy Spearman {doc['spearman']:.3f}, MAE {doc['mae']:.4f} "
        f"(additive top-1 deltas: Spearman {doc['spearman_additive']:.3f}, MAE {doc['mae_additive']:.4f})"
    )


@bench_app.command("model-latency")
def bench_model_latency(
    device: str = typer.Option(..., "--device", help="A stored device profiled on this machine."),
    model: str = typer.Option("vit_base", "--model", help="A catalogue ViT (vit_tiny, vit_small, vit_base, digits_vit), or several joined by commas: the overhead is then fitted across them (it separates per-pass and per-kernel costs)."),
    plans: int = typer.Option(20, "--plans", help="Random plans to build, time and predict."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random plans."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads (default: the device's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Whole-model latency: random plans built with apply_plan, timed end to end vs predicted."""
    from hwsearch.bench.model_latency import run as run_bench
    from hwsearch.profilers.cluster import check_threads

    check_threads(threads)
    with _BenchProgress(not as_json) as progress:
        doc = run_bench(open_engine(db), device, model, plans=plans, seed=seed, threads=threads, progress=progress)
    if as_json:
        emit_json(doc)
        return
    typer.echo(f"{model} on {device}, {plans} random plans ({doc['predictor']['detail']}): MAPE {doc['mape']:.1f} %, "
               f"within ±10 % {doc['within_10pct']:.0%} (kernel sum alone: MAPE {doc['kernel_sum_only']['mape']:.1f} %); "
               f"noise floor (the same plans timed twice): MAPE {doc['noise_floor_mape']:.1f} %")
    for name, m in doc["per_model"].items():
        rho = "-" if m["spearman"] is None else f"{m['spearman']:.2f}"
        typer.echo(f"  {name}: {m['plans']} plans, MAPE {m['mape']:.1f} %, Spearman {rho}, worst under-prediction "
                   f"{m['worst_under_prediction_pct']:.1f} %; timed twice: MAPE {m['noise_floor_mape']:.1f} %")


class _BenchProgress:
    """A rich progress bar on stderr (or nothing): yields ``progress(stage, done, total)``."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self):
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.start()
        return self._update

    def _update(self, stage: str, done: int, total: int) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total)
        self._bar.update(self._tasks[stage], completed=done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@app.command("export")
def export_plan(
    job: int | None = typer.Argument(None, help="A search job id (see `hwsearch jobs list`)."),
    trial: int | None = typer.Option(None, "--trial", help="With JOB: this trial's plan."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="With JOB: its best Pareto plan under X ms."),
    max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="With JOB: its best Pareto plan under X MB."),
    min_quality: float | None = typer.Option(None, "--min-quality", help="With JOB: its best Pareto plan of quality >= X."),
    plan_file: str | None = typer.Option(None, "--plan", help="A hwsearch.plan/v1 JSON file (instead of JOB)."),
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

        handle = Client(db_url=db).job(job)
        number = trial if trial is not None else handle.best_trial(**budget)
        plan = handle.plan(number)
        said = {"max_latency_ms": "latency_ms <= {:g}", "max_size_mb": "size_mb <= {:g}", "min_quality": "quality >= {:g}"}
        why = "" if trial is not None else " (the best Pareto plan" + "".join(
            f"{' with' if i == 0 else ','} {said[k].format(v)}" for i, (k, v) in enumerate(bounds.items())) + ")"
        which = f"job {job} trial {number}{why}"
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


@app.command("search")
def search(
    model: str = typer.Option(..., "--model", help="A catalogue model, e.g. vit_base or digits_vit."),
    device: str = typer.Option(..., "--device", help="A stored device with a predictor (see `hwsearch devices`)."),
    objectives: str = typer.Option("latency,size", "--objectives", help="Comma list of latency, size, quality."),
    max_latency_ms: float | None = typer.Option(None, "--max-latency-ms", help="Constraint: predicted latency <= X ms."),
    max_size_mb: float | None = typer.Option(None, "--max-size-mb", help="Constraint: linear-layer size <= X MB."),
    min_quality: float | None = typer.Option(None, "--min-quality", help="Constraint: predicted quality >= X."),
    trials: int = typer.Option(500, "--trials", help="Trials in the study."),
    workers: int = typer.Option(1, "--workers", help="Parallel trial workers (Ray tasks)."),
    sampler: str = typer.Option("nsga2", "--sampler", help="nsga2 | tpe | gp | random"),
    seed: int = typer.Option(0, "--seed"),
    verify_top_k: int = typer.Option(3, "--verify-top-k", help="Pareto plans timed end to end on the device."),
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
                      verify_top_k=verify_top_k)
    client = Client(db, ray_address)
    if detach:
        job = client.submit(spec) if ray_address else client.create(spec)
        if not ray_address:
            _spawn_runner(client.db_url, job.id)
        emit_json({"job": job.id, "status": "started"}) if as_json else typer.echo(
            f"job {job.id} started; watch it with `hwsearch jobs show {job.id}`")
        return
    _run_and_show(client, client.submit(spec), as_json)


def _spawn_runner(db_url: str, job_id: int) -> None:
    """A background process that runs the job with its own local Ray (survives this command).

    The database URL (and any password in it) goes through that process's environment, never its
    command line, which every user of the machine can read."""
    import os
    import subprocess

    from hwsearch.config import data_dir

    log = data_dir() / "jobs" / f"job-{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "hwsearch.cli", "jobs", "run", str(job_id)],
                         env={**os.environ, "HWSEARCH_DB": db_url},
                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _run_and_show(client: Any, job: Any, as_json: bool) -> None:
    from hwsearch.search.report import JobProgress, print_front, print_verification, status_doc

    with JobProgress(not as_json) as on_poll:
        st = job.wait(on_poll=on_poll)
    if st.status != "done":
        raise HwsearchError(f"job {job.id} {st.status}: {st.error or 'no error recorded'}")
    front = job.pareto()
    if as_json:
        emit_json({**status_doc(st), "pareto": front.to_dict(orient="records")})
        return
    print_front(front, f"Pareto front of job {job.id} ({st.model} on {st.device}, {st.n_trials_done} trials, "
                       f"HV {st.result.get('hypervolume', 0):.4f})")
    print_verification(st.result)


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
    from hwsearch.search.report import print_front, print_jobs, print_verification, status_doc

    job = Client(db).job(job_id)
    st = job.status()
    front = job.pareto()
    if as_json:
        emit_json({**status_doc(st), "pareto": front.to_dict(orient="records"),
                   "verifications": job.verifications().to_dict(orient="records")})
        return
    print_jobs([st])
    if st.error:
        typer.echo(f"error: {st.error}")
    if len(front):
        print_front(front, f"Pareto front of job {job_id} so far" if not st.finished else f"Pareto front of job {job_id}")
    if st.result:
        print_verification(st.result)


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
    from hwsearch.search import jobs as jobs_mod
    from hwsearch.search.client import Client

    client = Client(db, ray_address)
    if ray_address:
        job = client.job(job_id).resume()
        if detach:
            emit_json({"job": job_id, "status": "resumed"}) if as_json else typer.echo(f"job {job_id} resumed")
            return
        _run_and_show(client, job, as_json)
        return
    jobs_mod.claim_resume(client.engine, job_id)
    if detach:
        _spawn_runner(client.db_url, job_id)
        emit_json({"job": job_id, "status": "resumed"}) if as_json else typer.echo(f"job {job_id} resumed")
        return
    client._launch(job_id, client.job(job_id).status().attempt, None)
    _run_and_show(client, client.job(job_id), as_json)


@jobs_app.command("run", hidden=True)
def jobs_run(job_id: int = typer.Argument(...), db: str | None = DB_OPTION) -> None:
    """Run a stored job's current attempt in this process (what --detach starts in the background)."""
    from hwsearch.search.client import Client

    Client(db).run(job_id)


@bench_app.command("search")
def bench_search(
    device: str = typer.Option(..., "--device", help="A stored device with a predictor."),
    model: str = typer.Option("vit_base", "--model"),
    trials: int = typer.Option(500, "--trials"),
    seeds: int = typer.Option(3, "--seeds"),
    samplers: str = typer.Option("nsga2,tpe", "--samplers", help="Comma list of samplers to compare with random."),
    objectives: str = typer.Option("latency,size", "--objectives", help="Two objectives (the exact reference is 2-D)."),
    verify: int = typer.Option(3, "--verify", help="Plans per sampler timed on the device for the violation rate."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Samplers vs random at equal trials against the exact reference front of a reduced space."""
    from hwsearch.bench.search import run as run_bench

    doc = run_bench(open_engine(db), device, model, trials=trials, seeds=seeds,
                    samplers=[s.strip() for s in samplers.split(",") if s.strip()],
                    objectives=[o.strip() for o in objectives.split(",")], verify=verify, show_progress=not as_json)
    if as_json:
        emit_json(doc)
        return
    from hwsearch.bench.search import print_report

    print_report(doc)


@app.command("demo")
def demo(db: str | None = DB_OPTION) -> None:
    """The main job end to end on this machine: profile, train, search two models, verify, export."""
    from hwsearch.search.demo import run_demo

    run_demo(db)


@app.command("dashboard")
def dashboard(
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="Port to serve on."),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to bind (default: this machine only)."),
    db: str | None = DB_OPTION,
) -> None:
    """Start the Streamlit dashboard (jobs, Pareto explorer, compare, devices) over the database.

    The dashboard only reads: it opens the database read-only and never migrates it."""
    import os
    import socket
    import subprocess
    from pathlib import Path

    from hwsearch.db.engine import database_url, open_db
    from hwsearch.processes import forwarding_signals

    url = database_url(db)
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        try:
            probe.bind((address, port))
        except OSError as err:
            raise HwsearchError(f"cannot serve on {address}:{port} ({err.strerror or err}); accepted: a free port "
                                "(--port) on an address of this machine (--address)") from None
    open_db(url, read_only=True).dispose()  # a database that does not answer is one line here, not a page later
    app_path = Path(__file__).with_name("dashboard") / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", address,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer",  # no "Deploy" button: this is a tool, not an app being written
           "--server.fileWatcherType", "none"]  # nor a "source file changed, rerun?" prompt when hwsearch is upgraded
    typer.echo(f"dashboard on http://{address}:{port} (Ctrl+C stops it)", err=True)
    proc = subprocess.Popen(cmd, env={**os.environ, "HWSEARCH_DB": url})
    with forwarding_signals(proc):  # SIGTERM, SIGHUP, Ctrl+C: Streamlit stops with this command
        code = proc.wait()
    raise SystemExit(128 - code if code < 0 else code)  # killed by signal N: the shell's 128 + N


cluster_app = typer.Typer(help="The Ray cluster devices are profiled in: start or stop its head, see its nodes.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


RAY_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("worker", context_settings=RAY_EXTRA)
def worker(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", help="Name this machine offers, as device:NAME (e.g. orin)."),
    address: str = typer.Option(..., "--address", help="The head's HOST:PORT (printed by `hwsearch cluster start`)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per kernel (default: all cores of this machine)."),
    backend: str = typer.Option("cpu", "--backend", help="cpu | cuda: which kernels this device runs."),
    num_cpus: int = typer.Option(0, "--num-cpus", min=0, help="CPU slots offered to other Ray work (0: only profiling runs here)."),
    detach: bool = typer.Option(False, "--detach", help="Return once the node runs (stop it with `hwsearch cluster stop`)."),
    node_ip: str | None = typer.Option(None, "--node-ip-address", help="Address other nodes reach this one on (default: this machine's interface toward the head)."),
    temp_dir: str | None = typer.Option(None, "--temp-dir", help="Ray's folder for this node (default: Ray's, /tmp/ray)."),
    insecure: bool = typer.Option(False, "--insecure", help="Join a head started with --insecure (no token authentication)."),
) -> None:
    """Join a Ray cluster as a node offering device:NAME, after checking that every kernel runs here.

    The node authenticates with the head's token: a copy of the head's `ray-auth-token` in this
    machine's hwsearch data folder (or RAY_AUTH_TOKEN_PATH). Options after `--` go to `ray start`
    unchanged (ports, object store size ...).
    """
    from hwsearch import ray_auth
    from hwsearch.profilers.cluster import check_device_name, check_reachable, check_threads
    from hwsearch.profilers.worker import self_check, start_worker

    check_device_name(device)
    check_threads(threads)
    check_reachable(address)
    ray_auth.ray_env(insecure, create=False)  # no token: one line now, not after the self-check
    typer.echo(f"self-check: every {backend} kernel against the fp64 reference ...", err=True)
    report = self_check(backend, threads)
    typer.echo(f"self-check passed: {len(report.kernels)} implementations on {report.cases} shapes", err=True)
    typer.echo(f"joining {address} as device:{device}" + ("" if detach else " (Ctrl+C stops this node)"), err=True)
    code = start_worker(device, address, threads=threads, num_cpus=num_cpus, backend=backend, block=not detach,
                        node_ip=node_ip, temp_dir=temp_dir, extra_args=list(ctx.args), insecure=insecure)
    if code != 0:
        raise HwsearchError(f"`ray start` exited with status {code} (its output is above); accepted: a reachable head "
                            "and a Ray version equal to the head's")
    if detach:
        typer.echo(f"device:{device} is offered; profile it with `hwsearch profile --device {device} --address {address}`")
    else:
        typer.echo(f"device:{device} left the cluster", err=True)


@cluster_app.command("start", context_settings=RAY_EXTRA)
def cluster_start(
    ctx: typer.Context,
    port: int = typer.Option(6379, "--port", min=1, max=65535, help="Port workers and drivers connect to."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=0, help="CPU slots of the head (default: its cores)."),
    node_ip: str | None = typer.Option(None, "--node-ip-address", help="Address workers reach the head on (default: this machine's outgoing interface)."),
    block: bool = typer.Option(False, "--block", help="Stay in the foreground (Ctrl+C stops the head)."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Also start Ray's dashboard."),
    temp_dir: str | None = typer.Option(None, "--temp-dir", help="Ray's folder for this node (default: Ray's, /tmp/ray)."),
    insecure: bool = typer.Option(False, "--insecure", help="No token authentication (only on a network you trust)."),
) -> None:
    """Start the head of a Ray cluster on this machine (`ray start --head`).

    Clients and workers must present this installation's Ray token (generated on first use in the
    hwsearch data folder, mode 0600) unless --insecure. Options after `--` go to `ray start`
    unchanged (ports, object store size ...).
    """
    from hwsearch import ray_auth
    from hwsearch.profilers.worker import reachable_ip, start_head

    node_ip = node_ip or reachable_ip()
    code = start_head(port=port, num_cpus=num_cpus, node_ip=node_ip, block=block, temp_dir=temp_dir, dashboard=dashboard,
                      extra_args=list(ctx.args), insecure=insecure)
    if code != 0:
        raise HwsearchError(f"`ray start --head` exited with status {code} (its output is above); accepted: a free --port")
    if not block:
        typer.echo(f"head running at {node_ip}:{port}; on each device run: "
                   f"hwsearch worker --device NAME --address {node_ip}:{port}")
        if not ray_auth.opted_out(insecure):
            typer.echo(f"token: {ray_auth.token_in_use()} (copy it, mode 0600, to `{ray_auth.TOKEN_FILE}` in each "
                       "device's hwsearch data folder, or point RAY_AUTH_TOKEN_PATH at a copy)")


@cluster_app.command("stop")
def cluster_stop() -> None:
    """Stop the Ray nodes this machine started with `hwsearch cluster start` or `hwsearch worker --detach`."""
    from hwsearch.profilers.worker import stop_recorded

    stopped = stop_recorded()
    if not stopped:
        typer.echo("no Ray node started by hwsearch runs on this machine")
    for node in stopped:
        what = f"device:{node['device']}" if node.get("role") == "worker" else "head"
        typer.echo(f"stopped {node.get('role')} ({what}, {node['processes']} processes)")


@cluster_app.command("status")
def cluster_status(
    address: str | None = typer.Option(None, "--address", help="The head's HOST:PORT (default: RAY_ADDRESS or the local cluster)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """The cluster's nodes and the devices they offer."""
    from hwsearch.profilers.worker import cluster_status as status

    doc = status(address)
    if as_json:
        emit_json(doc)
        return
    from rich.table import Table

    grid = Table(title=f"Ray cluster at {doc['address']}", title_justify="left")
    for col in ("node", "address", "alive", "devices", "CPUs"):
        grid.add_column(col)
    for node in doc["nodes"]:
        grid.add_row(node["node_id"][:12], node["address"], "yes" if node["alive"] else "[red]no",
                     ", ".join(node["devices"]) or "-", f"{node['cpus']:g}")
    wide_console().print(grid)
    if not doc["devices"]:
        typer.echo("no node offers a device yet; on the device run: "
                   f"hwsearch worker --device NAME --address {doc['address']}")


if __name__ == "__main__":
    main()
