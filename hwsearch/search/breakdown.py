"""A plan's predicted latency layer by layer: where its time goes, as nn-Meter reports per kernel.

Every kernel one forward pass runs under the plan (`ModelLatency.kernels`) is predicted by the
device's predictor and summed per owner: a linear layer, or one kind of a block's other kernels
(attention, norms, element-wise ops, token merging). The end-to-end overhead term (per forward,
per launch, casts) is one more row, so the rows add up to the plan's predicted latency as
`ModelLatency.plan` composes it.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine

from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan

COLUMNS = ["layer", "block", "op", "choice", "kernels", "predicted_ms", "share %"]
OVERHEAD_ROW = "overhead (whole forward)"


def model_latency(engine: Engine, device: str, model: ModelSpec) -> Any:
    """The device's best predictor and stored overhead term, composed for `model` (a `ModelLatency`)."""
    from hwsearch.predictors.model_latency import ModelLatency, device_overhead
    from hwsearch.predictors.registry import best_predictor

    predictor = best_predictor(engine, device)
    overhead, _ = device_overhead(engine, predictor.device_id)
    return ModelLatency(model, predictor, overhead)


def _block(owner: str) -> int | None:
    parts = owner.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def layer_latency(ml: Any, plan: Plan) -> pd.DataFrame:
    """One row per owner of kernels (in model order, blocks first then the layers outside them)
    and one for the overhead: predicted ms and its share of the plan's total."""
    kernels = ml.kernels(plan)
    ms = ml.predictor.predict_specs([spec for _, spec in kernels])
    dtype = ml.model.dtype
    rows: dict[str, dict[str, Any]] = {}
    for (owner, spec), t in zip(kernels, ms, strict=True):
        row = rows.setdefault(owner, {"layer": owner, "block": _block(owner), "op": spec.op,
                                      "choice": plan.choice(owner, dtype).label() if spec.op == "linear" else spec.op,
                                      "kernels": 0, "predicted_ms": 0.0})
        if spec.op == "linear":  # a layer's row names its GEMM (an AWQ layer's input scale comes first)
            row["op"], row["choice"] = "linear", plan.choice(owner, dtype).label()
        row["kernels"] += 1
        row["predicted_ms"] += float(t)
    total = ml.plan(plan)
    frame = pd.DataFrame(list(rows.values()), columns=COLUMNS[:-1])
    frame["order"] = range(len(frame))
    frame = frame.sort_values(["block", "order"], na_position="last").drop(columns="order")
    overhead = {"layer": OVERHEAD_ROW, "block": None, "op": "overhead", "choice": "end-to-end term",
                "kernels": 0, "predicted_ms": total.total_ms - float(frame["predicted_ms"].sum())}
    frame = pd.concat([frame, pd.DataFrame([overhead])], ignore_index=True)
    frame["block"] = frame["block"].astype("Int64")
    frame["share %"] = 100.0 * frame["predicted_ms"] / total.total_ms if total.total_ms else 0.0
    return frame[COLUMNS]
