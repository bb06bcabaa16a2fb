"""`hwsearch plan`: the plan documents' JSON Schema, and validation of a plan or an export."""

from __future__ import annotations

import json

import typer

from hwsearch.cli.common import emit_json
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError

plan_app = typer.Typer(help="Plan documents (hwsearch.plan/v2; v1 is read): their JSON Schema, and validation.", no_args_is_help=True)
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
    from hwsearch.spaces.catalog import check_plan_model
    from hwsearch.spaces.plan import PLAN_SCHEMA, Plan, read_plan_text

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
    check_plan_model(plan)
    typer.echo(f"{path}: valid plan for {plan.model} ({len(plan.layers)} compressed layers)")
