"""Where exports are written, and how: whole files or nothing.

A target file and the plan kept beside it are both written to a temporary file in the same
folder and moved into place, so an interrupted export never leaves a half-written file where a
tool (or a person) would read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hwsearch.errors import HwsearchError

PLAN_SUFFIX = ".plan.json"


def plan_path_for(path: Path) -> Path:
    """The plan kept next to an export: `quant.json` -> `quant.plan.json`, `cfg.yaml` -> `cfg.plan.json`."""
    return path.with_name(path.stem + PLAN_SUFFIX)


def check_out_path(path: Path) -> None:
    """Refuse an output path that names a folder; its parent folders are created when writing."""
    if path.is_dir():
        raise HwsearchError(f"--out {str(path)!r} is a folder; accepted: a file path (its folder is created if missing)")


def file_mode() -> int:
    """The mode a new file gets from `open()` under this process's umask (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and an atomic rename; the file
    is readable as any file the user writes (a temporary file starts private, 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            os.fchmod(fh.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
