"""The `hwsearch` command. Thin: parses options, calls the library, prints what it returns.

One module per command group (`profile`, `bench`, `jobs`, ...), each adding its commands to the
one Typer `app` (`root`); importing this package registers them all, in the order `--help` lists
them. Heavy libraries (torch, xgboost, ray) are imported inside the commands so `hwsearch --help`
stays fast.
"""

from hwsearch.cli import bench, plan, profile, predict, export, jobs, demo, dashboard, cluster  # noqa: F401, I001 - registration order
from hwsearch.cli.root import app, main

__all__ = ["app", "main"]
