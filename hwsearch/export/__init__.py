"""hwsearch.export: a plan -> other tools' formats, saying plainly what each cannot express.

`export(plan, format, path)` writes one of `FORMATS`:
- `plan`: the `hwsearch.plan/v1` JSON itself (lossless);
- `compressed-tensors`: a `quantization_config` (JSON) that compressed-tensors' pydantic
  models accept (see `hwsearch.export.compressed_tensors`);
- `modelopt`: an NVIDIA ModelOpt quantization config (YAML; see `hwsearch.export.modelopt`).

A target that cannot express a knob (N:M other than 2:4, low-rank ranks, the token-merge
schedule, ...) gets a one-line warning per knob in the result, and the full plan is always
written next to a non-plan export (`quant.json` -> `quant.plan.json`) so nothing is lost. Both
files are rendered before either is written, and each is written atomically.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsearch.errors import unknown
from hwsearch.export import compressed_tensors, modelopt
from hwsearch.export.files import check_out_path, plan_path_for, write_text_atomic
from hwsearch.export.plan_file import plan_text
from hwsearch.export.plan_view import PlanView
from hwsearch.spaces.plan import Plan

FORMATS: tuple[str, ...] = ("plan", "compressed-tensors", "modelopt")
_RENDERERS = {"compressed-tensors": compressed_tensors.render, "modelopt": modelopt.render}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the target file, where the full plan is kept, and what was lost."""

    path: Path
    format: str
    plan_path: Path
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "plan_path": str(self.plan_path),
                "warnings": list(self.warnings)}


def export(plan: Plan | Mapping[str, Any], format: str, path: str | Path) -> ExportResult:
    """Write `plan` in `format` to `path` (and the plan beside it); one-line HwsearchError on bad input."""
    if format not in FORMATS:
        raise unknown("export format", format, FORMATS)
    plan = plan if isinstance(plan, Plan) else Plan.parse(plan)
    out = Path(path)
    check_out_path(out)
    view = PlanView.of(plan)
    if format == "plan":
        write_text_atomic(out, plan_text(plan))
        return ExportResult(out, format, out, ())
    kept = plan_path_for(out)
    text, warnings = _RENDERERS[format](view, out, str(kept))
    write_text_atomic(kept, plan_text(plan))
    write_text_atomic(out, text)
    return ExportResult(out, format, kept, tuple(warnings))


__all__ = ["FORMATS", "ExportResult", "export"]


class _CallableModule(types.ModuleType):
    """`hwsearch.export` is both this package and the function: importing the package binds it
    as the attribute `export` of `hwsearch`, so `hw.export(plan, format, path)` calls through."""

    def __call__(self, plan: Plan | Mapping[str, Any], format: str, path: str | Path) -> ExportResult:
        return export(plan, format, path)


sys.modules[__name__].__class__ = _CallableModule
