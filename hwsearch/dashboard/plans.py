"""A chosen plan as a person reads it: per-layer rows, the merge schedule, and export files.

The catalogue model is looked up so every layer appears in model order (layers the plan leaves
out stay in the model's dtype, and a table that hid them would mislead), each with its block,
role and shape, and the size it keeps relative to the uncompressed layer (exact bytes, from
`hwsearch.spaces.size`). Exports go through `hwsearch.export.export` into a temporary folder,
so the bytes offered for download are exactly what `hwsearch export` writes.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from hwsearch.errors import HwsearchError
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan
from hwsearch.spaces.size import linear_bytes

LAYER_COLUMNS = ["layer", "block", "role", "shape (K×N)", "choice", "format", "group_size", "sparsity", "rank",
                 "size %"]
def model_of(plan: Plan) -> ModelSpec | None:
    """The plan's catalogue model, or None for a model outside the catalogue (a traced one)."""
    try:
        return get_model(plan.model)
    except HwsearchError:
        return None


def layer_table(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per linear layer: block, role, shape, the choice and the size kept (% of dtype)."""
    plan = Plan.parse(doc)
    spec = model_of(plan)
    dtype = spec.dtype if spec is not None else "fp32"
    rows = []
    layers = spec.layers if spec is not None else ()
    names = [layer.name for layer in layers] or list(plan.layers)
    by_name = {layer.name: layer for layer in layers}
    for name in names:
        choice = plan.choice(name, dtype)
        layer = by_name.get(name)
        row = {"layer": name, "block": None, "role": None, "shape (K×N)": None, "choice": choice.label(),
               "format": choice.format, "group_size": choice.group_size, "sparsity": choice.sparsity,
               "rank": choice.rank, "size %": None}
        if layer is not None:
            full = linear_bytes(layer.K, layer.N, dtype, bias=layer.bias).total
            kept = linear_bytes(layer.K, layer.N, choice.format, choice.group_size, choice.sparsity, choice.rank,
                                bias=layer.bias, scaling=choice.scaling).total
            row.update({"block": layer.block, "role": layer.role, "shape (K×N)": f"{layer.K}×{layer.N}",
                        "size %": round(100.0 * kept / full, 1)})
        rows.append(row)
    df = pd.DataFrame.from_records(rows, columns=LAYER_COLUMNS)
    df["block"] = df["block"].astype("Int64")
    df["group_size"] = df["group_size"].astype("Int64")
    df["rank"] = df["rank"].astype("Int64")
    return df


def merge_table(doc: dict[str, Any]) -> pd.DataFrame | None:
    """Tokens merged per block and the tokens entering/leaving it; None when the model cannot merge."""
    plan = Plan.parse(doc)
    spec = model_of(plan)
    if spec is None or not spec.mergeable:
        return None
    merged = spec.with_merge(plan.merge)
    return pd.DataFrame([{"block": b.index, "r (merged)": b.merged, "tokens in": b.tokens,
                          "tokens out": b.mlp_tokens} for b in merged.blocks])


@dataclass(frozen=True)
class ExportFile:
    """One download: the bytes `hwsearch export` would write, and what the format cannot express."""

    format: str
    filename: str
    mime: str
    data: bytes
    warnings: tuple[str, ...]


@st.cache_data(ttl=3600, show_spinner=False)
def export_files(plan_json: str) -> list[ExportFile]:
    """The plan in every export format (a format that refuses the plan is left out with its reason)."""
    from hwsearch.export import ExportWarning, export
    from hwsearch.export.targets import formats, get_target

    plan = Plan.from_json(plan_json)
    out = []
    with tempfile.TemporaryDirectory(prefix="hwsearch-dash-") as tmp:
        for fmt in formats():
            filename, mime = get_target(fmt).filename, get_target(fmt).mime
            try:
                with warnings.catch_warnings():  # shown on the page, from the result
                    warnings.simplefilter("ignore", ExportWarning)
                    result = export(plan, fmt, Path(tmp) / fmt / filename)
            except HwsearchError as err:
                out.append(ExportFile(fmt, filename, mime, b"", (f"cannot export: {err}",)))
                continue
            # Warnings name where the full plan was kept: the temporary folder means nothing to a user.
            folder = f"{Path(tmp) / fmt}/"
            lost = tuple(w.replace(folder, "") for w in result.warnings)
            out.append(ExportFile(fmt, filename, mime, result.path.read_bytes(), lost))
    return out
