"""`hwsearch train` and `hwsearch predict`: latency predictors for a device, and what they predict."""

from __future__ import annotations

import typer

from hwsearch.cli.common import DB_OPTION, BenchProgress, emit_json, open_engine
from hwsearch.cli.root import app


@app.command("train")
def train(
    device: str = typer.Option(..., "--device", help="A stored device name (see `hwsearch devices`)."),
    kind: str = typer.Option("xgboost", "--kind", help="A predictor kind (xgboost, meta, ...; an unknown one is "
                             "answered with the list), or all: every kind the device has enough kernels for."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out split (and of meta-training)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Train latency predictors for a device, score them on held-out kernels, store them."""
    from hwsearch.predictors.registry import train as train_predictors

    with BenchProgress(not as_json) as progress:
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
    plan_file: str | None = typer.Option(None, "--plan", help="A hwsearch.plan JSON file (v2, or v1) (default: uncompressed)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
    db: str | None = DB_OPTION,
) -> None:
    """Predicted latency of a model (under a plan) on a device, and which predictor answered."""
    from hwsearch.predictors.registry import predict_model

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
