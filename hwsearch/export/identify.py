"""What a file is: a plan, or a file `export` wrote for another tool (whose plan is kept beside it).

`hwsearch plan validate` is pointed at exports too (they sit next to the plans they came from);
recognising them turns "bad plan field model" into a sentence saying what the file is and
where its plan went.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hwsearch.export import compressed_tensors, modelopt
from hwsearch.export.files import plan_path_for

MODELOPT_HEADER = "# NVIDIA ModelOpt quantization config"


def identify(text: str) -> str | None:
    """The export format of `text` ("compressed-tensors" or "modelopt"), or None for anything else."""
    if text.lstrip().startswith(MODELOPT_HEADER):
        return "modelopt"
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        try:
            doc = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):  # nesting too deep is no export either
            return None
        return "modelopt" if isinstance(doc, dict) and "quant_cfg" in doc else None
    if isinstance(doc, dict) and doc.get("quant_method") == compressed_tensors.QUANT_METHOD:
        return "compressed-tensors"
    return None


def describe(path: Path, fmt: str) -> str:
    """One line: what the export file is for, and where its full plan is kept."""
    what = {"compressed-tensors": f"a {compressed_tensors.TARGET} quantization_config (JSON)",
            "modelopt": f"an NVIDIA {modelopt.TARGET} quantization config (YAML)"}[fmt]
    return f"{path} is {what} written by `hwsearch export`, not a plan; its full plan is kept in {plan_path_for(path)}"
