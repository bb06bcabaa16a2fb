"""What a file is: a plan, or a file `export` wrote for another tool (whose plan is kept beside it).

`hwsearch plan validate` is pointed at exports too (they sit next to the plans they came from);
recognising them turns "bad plan field model" into a sentence saying what the file is and
where its plan went. Each export target recognises its own files (`export.targets`).
"""

from __future__ import annotations

from pathlib import Path

from hwsearch.export.files import plan_path_for
from hwsearch.export.targets import formats, get_target


def identify(text: str) -> str | None:
    """The export format of `text` (a registered target's name), or None for anything else."""
    for name in formats():
        recognise = get_target(name).recognise
        if recognise is not None and recognise(text):
            return name
    return None


def describe(path: Path, fmt: str) -> str:
    """One line: what the export file is for, and where its full plan is kept."""
    return (f"{path} is {get_target(fmt).what} written by `hwsearch export`, not a plan; its full plan is kept in "
            f"{plan_path_for(path)}")
