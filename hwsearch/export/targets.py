"""The registry of export targets: a plan -> another tool's file.

Each target joins from its own module with `register_target` (compressed-tensors in
`compressed_tensors`, ModelOpt in `modelopt`); the modules in `TARGET_MODULES` (the one list of
them) are imported on first use, so this module imports none of them. The plan file itself is
the one built-in target (lossless, nothing to render). A new target is a new module with a
`render(view, path, kept_in) -> (text, what it cannot express)` plus its entry here.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hwsearch.errors import HwsearchError, unknown

if TYPE_CHECKING:
    from hwsearch.export.plan_view import PlanView

PLAN = "plan"
TARGET_MODULES: tuple[str, ...] = ("hwsearch.export.compressed_tensors", "hwsearch.export.modelopt")

# (the plan's view, the file to write, where the full plan is kept) -> (text, lines of what is lost)
Renderer = Callable[["PlanView", Path, str], tuple[str, list[str]]]


@dataclass(frozen=True)
class Target:
    """One export format: how to render it, and the file name and MIME type a download gets."""

    name: str
    render: Renderer | None  # None: the plan file itself
    filename: str
    mime: str = "application/json"
    what: str = ""  # what its files are, in words: "a compressed-tensors quantization_config (JSON)"
    recognise: Callable[[str], bool] | None = None  # whether a file's text is one of its files (`identify`)


_TARGETS: dict[str, Target] = {PLAN: Target(PLAN, None, "plan.json")}


def register_target(target: Target) -> Target:
    """Add a target (its module calls this on import); a name registered twice is an error."""
    if target.name in _TARGETS:
        raise HwsearchError(f"export target {target.name!r} is registered twice")
    _TARGETS[target.name] = target
    return target


def unregister_target(name: str) -> None:
    """Remove a target (for tests that register a toy one); the plan file stays."""
    if name != PLAN:
        _TARGETS.pop(name, None)


@functools.cache
def _load_target_modules() -> None:
    for module in TARGET_MODULES:
        importlib.import_module(module)


def formats() -> tuple[str, ...]:
    """Every export format, the plan file first."""
    _load_target_modules()
    return tuple(_TARGETS)


def get_target(name: str) -> Target:
    """A target by name; an unknown one is one line listing the formats."""
    accepted = formats()
    if name not in _TARGETS:
        raise unknown("export format", name, accepted)
    return _TARGETS[name]
