"""`hwsearch dashboard`: the Streamlit app over the database, read-only."""

from __future__ import annotations

import sys

import typer

from hwsearch.cli.common import DB_OPTION
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError


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
    app_path = Path(__file__).parents[1] / "dashboard" / "app.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path), "--server.address", address,
           "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--client.toolbarMode", "viewer",  # no "Deploy" button: this is a tool, not an app being written
           "--server.fileWatcherType", "none"]  # nor a "source file changed, rerun?" prompt when hwsearch is upgraded
    typer.echo(f"dashboard on http://{address}:{port} (Ctrl+C stops it)", err=True)
    proc = subprocess.Popen(cmd, env={**os.environ, "HWSEARCH_DB": url})
    with forwarding_signals(proc):  # SIGTERM, SIGHUP, Ctrl+C: Streamlit stops with this command
        code = proc.wait()
    raise SystemExit(128 - code if code < 0 else code)  # killed by signal N: the shell's 128 + N
