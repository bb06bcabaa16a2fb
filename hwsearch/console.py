"""Rich consoles for what a person reads: tables as wide as the terminal, or fixed width off one."""

from __future__ import annotations

import sys

from rich.console import Console

FILE_WIDTH = 200


def wide_console(stderr: bool = False) -> Console:
    """A console as wide as the terminal, or FILE_WIDTH columns when output goes to a file or pipe:
    rich's 80-column default there squeezes tables and splits paths mid-name."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=FILE_WIDTH)
