"""hwsearch.export: a plan -> other tools' formats, saying plainly what each cannot express.

`export(plan, format, path)` writes one of `formats()` (the registered targets, `targets`):
- `plan`: the `hwsearch.plan/v2` JSON itself (lossless);
- `compressed-tensors`: a `quantization_config` (JSON) that compressed-tensors' pydantic
  models accept (see `hwsearch.export.compressed_tensors`);
- `modelopt`: an NVIDIA ModelOpt quantization config (YAML; see `hwsearch.export.modelopt`).

A target that cannot express a knob (N:M other than 2:4, low-rank ranks, the token-merge
schedule, ...) gets a one-line warning per knob, issued through Python's `warnings` (an
`ExportWarning`, shown on stderr unless filtered) and kept in the result; the full plan is always
written next to a non-plan export (`quant.json` -> `quant.plan.json`) so nothing is lost. Both
files are rendered before either is written, and each is written atomically with the mode any
file the user writes gets. The result also carries the plan's predicted and measured figures,
so whoever exports can say what was exported.
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsearch.export.files import check_out_path, plan_path_for, write_text_atomic
from hwsearch.export.plan_file import plan_text
from hwsearch.export.plan_view import PlanView
from hwsearch.export.targets import formats, get_target
from hwsearch.spaces.plan import Plan


class ExportWarning(UserWarning):
    """Something the export target cannot express (it is kept in the plan file beside the export)."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the target file, where the full plan is kept, what was lost, and the
    plan's figures ({"latency_ms": 33.2, ...}) as predicted and as measured on the device."""

    path: Path
    format: str
    plan_path: Path
    warnings: tuple[str, ...] = field(default=())
    predicted: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "plan_path": str(self.plan_path),
                "warnings": list(self.warnings), "predicted": self.predicted, "measured": self.measured}

    def figures(self) -> str:
        """The plan's figures in words: `predicted latency_ms 33.2, size_mb 120.3; measured latency_ms 35.1`."""
        parts = [f"{kind} " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
                 for kind, values in (("predicted", self.predicted), ("measured", self.measured)) if values]
        return "; ".join(parts) or "no predicted or measured figures in the plan"


def export(plan: Plan | Mapping[str, Any], format: str, path: str | Path) -> ExportResult:
    """Write `plan` in `format` to `path` (and the plan beside it); one-line HwsearchError on bad
    input; an `ExportWarning` for each thing the format cannot express.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import hwsearch as hw
    >>> plan = hw.Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": hw.LayerChoice(format="int8")})
    >>> result = hw.export(plan, "compressed-tensors", Path(tempfile.mkdtemp()) / "plan.ct.json")
    >>> result.format, result.path.name, result.plan_path.name, result.warnings
    ('compressed-tensors', 'plan.ct.json', 'plan.ct.plan.json', ())
    """
    return _export(plan, format, path)


def _export(plan: Plan | Mapping[str, Any], format: str, path: str | Path) -> ExportResult:
    """`export`, called by it or by the module itself, so warnings point at the caller (3 frames up)."""
    target = get_target(format)
    plan = plan if isinstance(plan, Plan) else Plan.parse(plan)
    out = Path(path)
    check_out_path(out)
    view = PlanView.of(plan)
    figures = {"predicted": {k: f.value for k, f in plan.predicted.items()},
               "measured": {k: f.value for k, f in plan.measured.items()}}
    if target.render is None:
        write_text_atomic(out, plan_text(plan))
        return ExportResult(out, format, out, (), **figures)
    kept = plan_path_for(out)
    text, lost = target.render(view, out, str(kept))
    write_text_atomic(kept, plan_text(plan))
    write_text_atomic(out, text)
    for line in lost:
        warnings.warn(f"{format} export {out}: {line}", ExportWarning, stacklevel=3)
    return ExportResult(out, format, kept, tuple(lost), **figures)


__all__ = ["ExportResult", "ExportWarning", "export", "formats"]


class _CallableModule(types.ModuleType):
    """`hwsearch.export` is both this package and the function: importing the package binds it
    as the attribute `export` of `hwsearch`, so `hw.export(plan, format, path)` calls through."""

    def __call__(self, plan: Plan | Mapping[str, Any], format: str, path: str | Path) -> ExportResult:
        return _export(plan, format, path)


sys.modules[__name__].__class__ = _CallableModule
