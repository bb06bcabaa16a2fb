"""Anchors: each model's uncompressed latency, timed end to end on the device.

A plan's estimate is its model's measured uncompressed latency plus the composed difference
the plan's choices make (`predictors.model_latency.Overhead.anchors`): what a composition of
kernels cannot see of one model (its glue ops, its per-forward cost) is in the measurement and
cancels out of the difference. `hwsearch profile --local --for MODEL` and
`Client.profile(for_models=...)` time the anchors beside the kernels; `hwsearch bench
model-latency` times them as part of its calibration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from hwsearch.errors import HwsearchError
from hwsearch.predictors.dataset import device_dispatch
from hwsearch.predictors.model_latency import add_anchors, anchor_key
from hwsearch.profilers.coverage import local_fingerprint
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan


def _model(request: Any) -> tuple[ModelSpec, Any, Any]:
    """(spec, torch module or None, example inputs) of a catalogue name, ModelSpec or SearchSpec."""
    from hwsearch.search.spec import SearchSpec

    if isinstance(request, SearchSpec):
        spec = request.model_description()
        return spec, (request.model if request.custom else None), request.example_inputs
    if isinstance(request, ModelSpec):
        return request, None, None
    return get_model(str(request)), None, None


def measure_anchors(engine: Engine, device: str, requests: Sequence[Any],
                    warn: Callable[[str], None] | None = None) -> dict[str, float]:
    """Time each requested model uncompressed on this machine and store the anchors; a model that
    cannot be built here (no torch module for it) is said and skipped. Returns key -> ms."""
    from hwsearch.search.verify import time_plans

    fp = local_fingerprint(engine, device, "measuring a model's anchor")
    threads = int(fp.get("threads") or 1)
    dispatch = device_dispatch(engine, device)
    found: dict[str, float] = {}
    for request in requests:
        spec, module, inputs = _model(request)
        try:
            timing = time_plans(spec, [Plan(model=spec.name, device=device, layers={})], threads,
                                fp.get("backend", "cpu"), module, inputs, dispatch)[0]
        except HwsearchError as exc:
            if warn is not None:
                warn(f"{spec.name}: no anchor ({exc})")
            continue
        found[anchor_key(spec)] = timing["measured_ms"]
    if found:
        add_anchors(engine, device, found)
    return found
