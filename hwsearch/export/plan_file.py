"""The plan file: the `hwsearch.plan/v2` JSON document itself, the one lossless export.

Every other target drops something (ranks, a merge schedule, N:M patterns it has no word for),
so the plan file is also what is kept next to those exports: `Plan.model_validate_json` (or
`Plan.from_json`) reads it back to the same plan.
"""

from __future__ import annotations

from pathlib import Path

from hwsearch.export.files import write_text_atomic
from hwsearch.spaces.plan import Plan


def plan_text(plan: Plan) -> str:
    """The plan as its published JSON (aliases, no nulls), ending with a newline."""
    return plan.to_json(indent=2) + "\n"


def write_plan(plan: Plan, path: Path) -> None:
    write_text_atomic(path, plan_text(plan))
