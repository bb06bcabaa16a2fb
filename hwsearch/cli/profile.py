"""`hwsearch profile` and `hwsearch devices`: measure a device, list devices, move their measurements."""

from __future__ import annotations

import typer

from hwsearch.cli.common import DB_OPTION, emit_json, open_engine
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError


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
    from hwsearch.spaces.catalog import get_model, split_model_refs

    if local == (device is not None):
        raise HwsearchError("say where to profile; accepted: --local, or --device NAME (a Ray node offering device:NAME)")
    if device is not None and name is not None:
        raise HwsearchError("--name goes with --local; a --device is stored under its own NAME; accepted: --device NAME alone")
    parsed = parse_budget(budget)
    max_flops = None if max_gflops is None else max_gflops * 1e9
    models = split_model_refs(for_models or "")
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
    from hwsearch.profilers.report import print_device_table

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
