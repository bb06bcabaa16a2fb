"""A search problem: a spec resolved against the database into a space and its tables.

Everything a spec can get wrong is found here, before a job is stored: an unknown device, a
device with no predictor (the error says how to train one), quality asked of a model without
weights, a constraint nothing in the space can meet (the error gives the best reachable value).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device
from hwsearch.errors import HwsearchError
from hwsearch.search.objectives import CONSTRAINTS, OBJECTIVES, Tables, build_tables, constraint
from hwsearch.search.spec import SearchSpec
from hwsearch.spaces.knobs import Capabilities, SearchSpace


@dataclass
class Problem:
    spec: SearchSpec
    space: SearchSpace
    tables: Tables
    device_id: int
    fingerprint: dict[str, Any]
    predictor: dict[str, Any] | None = None
    overhead_id: int | None = None
    quality_task: Any = field(default=None, repr=False)
    dispatch: Any = field(default=None, repr=False)  # the device's `Dispatch`: what plans are built with
    latency_predictor: Any = field(default=None, repr=False)  # the `Answer` the latency table was built from
    overhead: Any = field(default=None, repr=False)  # the `Overhead` it composed with (a refit adds to it)

    @property
    def local(self) -> bool:
        """Whether the device is the machine this runs on."""
        return self.fingerprint.get("host") == socket.gethostname()


def device_capabilities(name: str, fingerprint: dict[str, Any]) -> Capabilities:
    """What the device runs natively, from its stored fingerprint (the local reading on its own host);
    a CPU elsewhere is read from its recorded flags by the same rule as on its host."""
    from hwsearch.kernels import registry
    from hwsearch.kernels.cpu import capabilities_from_flags

    backend = fingerprint.get("backend", "cpu")
    if fingerprint.get("host") == socket.gethostname():
        return Capabilities.from_dict(registry.capabilities(backend), name)
    if "sm" in fingerprint:
        from hwsearch.kernels.cuda import capabilities_at

        caps = capabilities_at(int(fingerprint["sm"]))
    else:
        caps = capabilities_from_flags(fingerprint.get("cpu_flags", ()), fingerprint.get("arch", ""))
    return Capabilities.from_dict({**caps, "kv_cache": registry.kv_cache_formats(backend, caps)}, name)


def _custom_task(spec: SearchSpec, model_spec: Any) -> Any:
    from hwsearch.search.quality_tasks import QualityTask, weights_hash

    evaluate = spec.evaluate

    def score(module: Any, split: str) -> float:
        return float(evaluate(module))  # type: ignore[misc]

    return QualityTask(model_spec.name, "custom", model_spec, spec.model, score, weights_hash(spec.model))


def build_problem(engine: Engine, spec: SearchSpec, progress: Callable[[int, int], None] | None = None) -> Problem:
    """Resolve `spec` on the database: device, predictor, sensitivity table, tables; checks constraints."""
    from hwsearch.predictors.dataset import device_backend

    dev_id, _ = device_backend(engine, spec.device)  # unknown device: one line listing stored ones
    with session_scope(engine) as session:
        fp = dict(session.get(Device, dev_id).fingerprint or {})  # type: ignore[union-attr]
    model = spec.model_description()
    space = SearchSpace(model, device_capabilities(spec.device, fp), spec.knob_values())
    needed = list(dict.fromkeys([*spec.objectives, *(CONSTRAINTS[k][0] for k in spec.constraints)]))
    predictor = overhead = sensitivity = task = None
    provenance: dict[str, dict[str, Any]] = {}
    answer_doc = None
    overhead_id = None
    if "latency" in needed or spec.verify_top_k:
        from hwsearch.predictors.model_latency import device_overhead
        from hwsearch.predictors.registry import best_predictor

        try:
            predictor = best_predictor(engine, spec.device)
        except HwsearchError:
            if "latency" in needed:
                raise
        if predictor is not None:
            overhead, overhead_id = device_overhead(engine, predictor.device_id)
            answer_doc = predictor.describe()
            provenance["latency"] = {"source": "predictor", "device": spec.device, "predictor_id": predictor.predictor_id,
                                     "band_pct": overhead.band_pct, "retime_band_pct": overhead.retime_band_pct,
                                     "retime_state_band_pct": overhead.retime_state_band_pct,
                                     "kind": predictor.kind, "detail": predictor.detail, "overhead_id": overhead_id}
            if "latency" not in needed:
                needed.append("latency")
    if "quality" in needed:
        from hwsearch.search.quality_tasks import quality_task
        from hwsearch.search.sensitivity import measure_sensitivity, sensitivity_table

        task = _custom_task(spec, model) if spec.custom else quality_task(spec.model)
        if spec.custom:
            sensitivity = measure_sensitivity(task, space, progress)
        else:
            sensitivity = sensitivity_table(task, space, progress)
        provenance["quality"] = {"source": "sensitivity", "kind": task.metric,
                                 "detail": f"base {sensitivity.base_test:.4f} + per-layer calibration deltas"}
    provenance["size"] = {"source": "analytic", "detail": "exact bytes of the compressed linear layers"}
    tables = build_tables(space, needed, spec.device, predictor, overhead, sensitivity, provenance)
    latency = tables.provenance.get("latency", {})
    if predictor is not None and spec.profile_missing and not (latency["measured_share"] >= 1.0 and latency["anchored"]):
        predictor, (overhead, overhead_id) = _profile_missing(engine, spec, model, fp, progress)
        provenance["latency"].update(predictor_id=predictor.predictor_id, overhead_id=overhead_id)
        tables = build_tables(space, needed, spec.device, predictor, overhead, sensitivity, provenance)
    if predictor is not None:
        _mark_extrapolated(tables.provenance["latency"], spec)
    check_reachable(tables, spec)
    dispatch = predictor.dispatch if predictor is not None else None
    return Problem(spec, space, tables, dev_id, fp, answer_doc, overhead_id, task, dispatch, predictor, overhead)


def _profile_missing(engine: Engine, spec: SearchSpec, model: Any, fingerprint: dict[str, Any],
                     progress: Callable[[int, int], None] | None) -> Any:
    """Measure what `profile --local --for` adds for this search (the kernels it scores that the
    device has no measurement of, and the uncompressed model end to end), here: only the
    device's own machine can measure it. Returns the new predictor and overhead."""
    from hwsearch.predictors.registry import best_predictor
    from hwsearch.profilers.runner import profile_local

    if fingerprint.get("host") != socket.gethostname():
        raise HwsearchError(
            f"profile_missing: device {spec.device!r} is not this machine ({socket.gethostname()}); accepted: submit "
            f"from the device's host, or run `hwsearch profile --device {spec.device} --for {spec.model_name}` first"
        )
    from hwsearch.predictors.model_latency import device_overhead
    from hwsearch.search.anchors import measure_anchors

    profile_local(engine, name=spec.device, budget=None, threads=fingerprint.get("threads"),
                  backend=fingerprint.get("backend", "cpu"), models=[(model, spec.knob_values())],
                  show_progress=progress is not None)
    measure_anchors(engine, spec.device, [spec])
    predictor = best_predictor(engine, spec.device)
    return predictor, device_overhead(engine, predictor.device_id)


def _mark_extrapolated(latency: dict[str, Any], spec: SearchSpec) -> None:
    """Say, wherever the latency estimate is shown, how much of it no measurement backs."""
    share = float(latency.get("measured_share", 0.0))
    latency["extrapolated"] = share < 1.0
    if share < 1.0:
        note = (f"{100 * (1 - share):.0f} % of the latency table predicted, not measured on {spec.device}; "
                f"`hwsearch profile --local --for {spec.model_name}` (or profile_missing=True) measures it")
        latency["detail"] = "; ".join(filter(None, [latency.get("detail"), note]))


def check_reachable(tables: Tables, spec: SearchSpec) -> None:
    """A constraint no plan in the space meets is an error naming the best reachable value."""
    for key, bound in spec.constraints.items():
        name, kind = constraint(key, tables.metric)
        best = tables.extreme(name, True) * (tables.margin(name) if kind == "max" else 1.0)
        unit = OBJECTIVES[name].unit
        if (kind == "max" and best > bound) or (kind == "min" and best < bound):
            sign = ">=" if kind == "max" else "<="
            raise HwsearchError(
                f"constraint {key}={bound:g} cannot be met by {tables.model.name} on {spec.device}: the best plan in the "
                f"space reaches {best:.4g} {unit}".rstrip() + f"; accepted: {key} {sign} {best:.4g}"
            )
