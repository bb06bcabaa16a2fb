"""The `hwsearch` application: the Typer app every command group joins, its global options, and
`main`, which turns every error a user can cause into one line."""

from __future__ import annotations

import typer

from hwsearch.errors import HwsearchError

app = typer.Typer(
    help="Hardware-aware compression search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's help: flags shown as flags (rich help shows `--detach <bool>`)
)


@app.callback()
def options(verbose: bool = typer.Option(False, "--verbose", help="Also show third-party log lines (Ray's start-up, ...).")) -> None:
    """Options of every command (before its name: `hwsearch --verbose search ...`)."""
    if verbose:
        import os

        from hwsearch.config import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"  # the processes a command starts inherit it


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


@app.command("version")
def version() -> None:
    """Print the hwsearch version."""
    from hwsearch import __version__

    typer.echo(__version__)
