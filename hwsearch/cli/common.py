"""What every command group shares: the --db option, the engine, JSON output, a progress bar."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout (the contract of every --json flag)."""
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def show(doc: Any, as_json: bool, printer: Callable[[], None]) -> None:
    """A command's result: one JSON document with --json, else what `printer` prints for a person."""
    if as_json:
        emit_json(doc)
    else:
        printer()


DB_OPTION = typer.Option(None, "--db", help="SQLAlchemy URL (default: HWSEARCH_DB or the SQLite file in the data folder).")


def open_engine(db: str | None):
    """The database engine, schema brought to head; one-line error if it does not answer."""
    from hwsearch.db.engine import open_db

    return open_db(db)


class BenchProgress:
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
