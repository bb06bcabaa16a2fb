"""Objectives, decision variables and the per-layer tables every trial is scored from.

A plan's latency, size and (proxy) quality are additive over layers once the merge schedule is
fixed: latency is the device overhead term plus the sum of predicted kernel latencies (the
overhead is linear in its inputs, so it folds into the per-layer entries), size is the sum of
exact layer bytes, and quality is a monotone function of an additive sum: the per-layer output
divergences (KL) from the sensitivity table add up, and the table's fitted curve maps their sum
to quality (its Spearman with measured quality beat the sum of top-1 deltas, which also runs past
1.0). The tables hold the additive sums; `Tables.outputs` holds the monotone maps.
So a search builds, once per job, a table per objective of shape (merge, variable, choice) and
scores any batch of plans with one fancy-indexed sum. The same tables drive the warm start
(Lagrangian knapsack) and the exact reference front (dynamic programming).

Decision variables are the layers, except that a group constraint (q/k/v share a format,
gate/up are fused) makes its members one variable whose choice applies to all of them: the
search only proposes plans where grouped layers agree on every knob, a subset of the valid ones.
A decode step's decoder block adds one more: its KV-cache format (`Variable.kv_block`), which
costs its attention kernel's latency. The size objective is the weights' bytes only (a cache
grows with the context: its bytes are reported beside, as the plan's `kv_cache_mb`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from hwsearch.errors import HwsearchError, unknown
from hwsearch.search.quality_metrics import QualityMetric, model_metric, quality_metric
from hwsearch.spaces.knobs import SearchSpace
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice, MergePlan, Plan
from hwsearch.spaces.size import MB, layer_bytes


@dataclass(frozen=True)
class Objective:
    """One objective: its name in a SearchSpec, its column in a Pareto table, unit and direction."""

    name: str
    column: str
    unit: str
    direction: str  # "minimize" | "maximize"

    @property
    def sign(self) -> float:
        """Multiply by this to get a value to minimise."""
        return 1.0 if self.direction == "minimize" else -1.0


OBJECTIVES: dict[str, Objective] = {
    "latency": Objective("latency", "latency_ms", "ms", "minimize"),
    "size": Objective("size", "size_mb", "MB", "minimize"),
    "quality": Objective("quality", "quality", "", "maximize"),
}
# constraint key -> (objective, bound kind) for the default directions: "max" means value <= bound,
# "min" value >= bound. Every constraint is "no worse than the bound", so the kind follows the
# objective's direction: `constraint(key, metric)` gives it for a quality metric such as perplexity.
CONSTRAINTS: dict[str, tuple[str, str]] = {
    "latency_ms": ("latency", "max"),
    "size_mb": ("size", "max"),
    "min_quality": ("quality", "min"),
}
MERGE_PARAM = "merge"


def objective(name: str, metric: QualityMetric | str | None = None) -> Objective:
    """The objective `name`; the quality objective takes the direction of its `metric` (a
    `QualityMetric` or its name; None keeps higher-is-better)."""
    if name not in OBJECTIVES:
        raise unknown("objective", name, OBJECTIVES)
    found = OBJECTIVES[name]
    if name != "quality" or metric is None:
        return found
    metric = quality_metric(metric) if isinstance(metric, str) else metric
    return replace(found, direction=metric.direction)


def constraint(key: str, metric: QualityMetric | str | None = None) -> tuple[str, str]:
    """(objective, bound kind) of a constraint key: "max" (value <= bound) for an objective to
    minimise, "min" (value >= bound) for one to maximise."""
    if key not in CONSTRAINTS:
        raise unknown("constraint", key, CONSTRAINTS)
    name = CONSTRAINTS[key][0]
    return name, "max" if objective(name, metric).direction == "minimize" else "min"


def model_objective(name: str, model: str | None) -> Objective:
    """The objective `name` for a search of `model` (a catalogue reference, None for a torch model)."""
    return objective(name, model_metric(model))


@dataclass(frozen=True)
class Variable:
    """One decision: the layers it sets (one, or a constrained group) and the choices it may take."""

    name: str
    layers: tuple[str, ...]
    choices: tuple[Any, ...]  # LayerChoice; KVCacheChoice for a block's KV cache
    kv_block: str | None = None  # the decoder block whose KV-cache format this variable sets

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(c.label() for c in self.choices)


def assign(variables: Sequence[Variable], picks: Sequence[Any], dtype: str) -> tuple[dict[str, LayerChoice],
                                                                                     dict[str, KVCacheChoice] | None]:
    """A plan's `layers` and `kv_cache` from one choice per variable (identities left out)."""
    layers: dict[str, LayerChoice] = {}
    kv: dict[str, KVCacheChoice] = {}
    for var, choice in zip(variables, picks, strict=True):
        if choice.is_identity(dtype):
            continue
        if var.kv_block is not None:
            kv[var.kv_block] = choice
        else:
            layers.update(dict.fromkeys(var.layers, choice))
    return layers, kv or None


def decision_variables(space: SearchSpace) -> tuple[Variable, ...]:
    """The variables of a space: one per layer, one per group constraint (members move together)."""
    model = space.model
    taken: set[str] = set()
    out: list[Variable] = []
    for layer in model.layer_names:
        if layer in taken:
            continue
        members = [layer]
        for group in model.groups_of(layer):
            members += [m for m in group.members if m not in members]
        taken.update(members)
        shared = [c for c in space.layers[members[0]].choices()
                  if all(space.layers[m].why_not(c) is None for m in members[1:])]
        identity = space.identity()
        choices = [identity] + [c for c in dict.fromkeys(shared) if c != identity]
        name = layer if len(members) == 1 else next(g.name for g in model.groups_of(layer))
        out.append(Variable(name, tuple(members), tuple(choices)))
    out += [Variable(f"{block}.kv_cache", (), options, block) for block, options in space.kv.items() if len(options) > 1]
    return tuple(out)


@dataclass
class Tables:
    """Per (merge, variable, choice) objective entries; `score` evaluates batches of encoded plans.

    Encoded plan: `idx` (batch, n_var) choice indices and `merge` (batch,) merge indices.
    Entries beyond a variable's number of choices are NaN and never indexed.
    """

    model: ModelSpec
    device: str
    variables: tuple[Variable, ...]
    merges: tuple[MergePlan, ...]
    terms: dict[str, np.ndarray]  # objective -> (n_merge, n_var, width)
    base: dict[str, np.ndarray]  # objective -> (n_merge,)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    # objective -> increasing map from its additive sum to its value (identity where absent);
    # increasing, so fronts, extremes and knapsack solutions of the sums are those of the values
    outputs: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    metric: str | None = None  # the quality metric (its direction is the quality objective's)

    def objective(self, name: str) -> Objective:
        """An objective of these tables, the quality one in the direction of their metric."""
        return objective(name, self.metric)

    @property
    def directions(self) -> list[str]:
        return [self.objective(o).direction for o in self.objectives]

    def finish(self, name: str, sums: np.ndarray) -> np.ndarray:
        """An objective's values from its additive sums."""
        out = self.outputs.get(name)
        return np.asarray(sums, dtype=float) if out is None else np.asarray(out(np.asarray(sums, dtype=float)))

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.terms)

    def margin(self, name: str) -> float:
        """What an objective's value is multiplied by before a bound is checked: the latency's
        calibrated upper bound (`Overhead.band_pct`), so a budget holds on the device, not just
        on the estimate; 1 for everything else."""
        band = self.provenance.get(name, {}).get("band_pct") if name == "latency" else None
        return 1.0 + (band or 0.0) / 100.0

    @property
    def n_choices(self) -> np.ndarray:
        return np.array([len(v.choices) for v in self.variables])

    def score(self, idx: np.ndarray, merge: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(idx, dtype=np.int64).reshape(-1, len(self.variables))
        merge = np.asarray(merge, dtype=np.int64).reshape(-1)
        cols = np.arange(len(self.variables))[None, :]
        rows = merge[:, None]
        return {name: self.finish(name, self.base[name][merge] + t[rows, cols, idx].sum(1))
                for name, t in self.terms.items()}

    # -- plans <-> encodings ---------------------------------------------------------------------
    def params(self, idx: Sequence[int], merge: int) -> dict[str, str]:
        """Optuna parameters (categorical labels) of an encoded plan."""
        out = {v.name: v.labels[int(i)] for v, i in zip(self.variables, idx, strict=True)}
        if len(self.merges) > 1:
            out[MERGE_PARAM] = self.merges[int(merge)].label()
        return out

    def encode_params(self, params: Mapping[str, Any]) -> tuple[np.ndarray, int]:
        idx = np.array([v.labels.index(params[v.name]) for v in self.variables], dtype=np.int64)
        merge = 0
        if len(self.merges) > 1:
            merge = [m.label() for m in self.merges].index(params[MERGE_PARAM])
        return idx, merge

    def plan(self, idx: Sequence[int], merge: int) -> Plan:
        picks = [var.choices[int(i)] for var, i in zip(self.variables, idx, strict=True)]
        layers, kv = assign(self.variables, picks, self.model.dtype)
        m = self.merges[int(merge)]
        return Plan(model=self.model.name, device=self.device, layers=layers, merge=m if m.r else None, kv_cache=kv)

    # -- bounds ----------------------------------------------------------------------------------
    def extreme(self, name: str, best: bool = True, additive: bool = False) -> float:
        """The best (or worst) value of an objective over the whole space (exact: additive);
        `additive` gives its additive sum instead of its value."""
        sign = self.objective(name).sign * (1 if best else -1)
        t = self.terms[name] * sign
        per_merge = self.base[name] * sign + np.nanmin(t, axis=2).sum(1)
        total = float(per_merge.min() * sign)
        return total if additive else float(self.finish(name, np.array([total]))[0])


# ----------------------------------------------------------------------------------------------
# building the tables
# ----------------------------------------------------------------------------------------------
def _pad(rows: list[list[float]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), np.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def size_terms(model: ModelSpec, variables: Sequence[Variable]) -> np.ndarray:
    """Exact storage (MB) of each variable's layers under each choice; (n_var, width)."""
    width = max(len(v.choices) for v in variables)
    rows = []
    for var in variables:
        layers = [model.layer(n) for n in var.layers]  # none for a KV cache: weights only
        rows.append([
            sum(layer_bytes(L, c) for L in layers) / MB
            for c in var.choices
        ])
    return _pad(rows, width)


def latency_terms(
    model: ModelSpec, variables: Sequence[Variable], merges: Sequence[MergePlan], predictor: Any, overhead: Any
) -> tuple[np.ndarray, np.ndarray, float]:
    """Latency (ms) per (merge, variable, choice), per merge for untouched kernels, and the share
    of the (merge, layer, choice) entries the device's measurements answer (the rest predicted).

    Built on the predictor package's `PlanTable`; the overhead term (linear in kernel ms,
    launches and cast elements) is folded into each entry so a plan's latency stays a sum.
    """
    from hwsearch.predictors.model_latency import ModelLatency

    layer_choices = {layer: var.choices for var in variables for layer in var.layers}
    kv_choices = {var.kv_block: var.choices for var in variables if var.kv_block is not None}
    table = ModelLatency(model, predictor, overhead).table(layer_choices, list(merges), kv_choices)
    entry, base = table.entries()
    measured_share = float(table.measured.mean()) if table.measured.size else 0.0
    width = max(len(v.choices) for v in variables)
    terms = np.full((len(merges), len(variables), width), np.nan)
    for j, var in enumerate(variables):
        positions = [table.kv_position[var.kv_block]] if var.kv_block is not None else [table.position[n] for n in var.layers]
        for p in positions:
            cols = [table.offsets[p] + table.index[p][c] for c in var.choices]
            terms[:, j, : len(cols)] = np.nan_to_num(terms[:, j, : len(cols)]) + entry[:, cols]
    return terms, base, measured_share


def quality_terms(
    table: Any, model: ModelSpec, variables: Sequence[Variable], merges: Sequence[MergePlan]
) -> tuple[np.ndarray, np.ndarray]:
    """The output divergence per (variable, choice), broadcast over merges, and per merge, signed
    so the quality objective's value increases with their sum: minus the divergence for a
    higher-is-better metric, plus it for a lower-is-better one (`QualityMetric.sign`)."""
    sign = quality_metric(table.metric).sign
    dtype = model.dtype
    width = max(len(v.choices) for v in variables)
    rows = []
    for var in variables:
        row = []
        for c in var.choices:
            if c.is_identity(dtype):
                row.append(0.0)
            elif var.kv_block is not None:  # a block's KV-cache format, measured alone like a layer's choice
                row.append(sign * table.kv_divergence[var.kv_block][c.label()])
            else:
                row.append(sign * sum(table.divergence[n][c.label()] for n in var.layers))
        rows.append(row)
    per_var = _pad(rows, width)
    base = np.array([sign * table.merge_divergence[m.label()] if m.r else 0.0 for m in merges])
    return np.broadcast_to(per_var, (len(merges), *per_var.shape)).copy(), base


def divergence_curve(
    divergence: float | np.ndarray, floor: float, base: float, alpha: float, metric: QualityMetric | str | None = None
) -> float | np.ndarray:
    """Quality from a summed output divergence D: floor + (base - floor)·exp(sign·alpha·D), worse
    as D grows: decays towards `floor` for a higher-is-better metric (sign -1), grows from `base`
    for a lower-is-better one (sign +1: perplexity = base·exp(alpha·D), as cross-entropy rises by
    about the KL)."""
    sign = quality_metric(metric).sign if not isinstance(metric, QualityMetric) else metric.sign
    return floor + (base - floor) * np.exp(sign * alpha * np.clip(divergence, 0.0, None))


def quality_from_sum(
    signed_divergence: np.ndarray, floor: float, base: float, alpha: float, metric: str | None = None
) -> np.ndarray:
    """The quality objective's output map: its additive sum is the summed divergence times the
    metric's sign (`quality_terms`)."""
    sign = quality_metric(metric).sign
    return np.asarray(divergence_curve(sign * np.asarray(signed_divergence), floor, base, alpha, metric))


def build_tables(
    space: SearchSpace,
    objectives: Sequence[str],
    device: str,
    predictor: Any = None,
    overhead: Any = None,
    sensitivity: Any = None,
    provenance: Mapping[str, dict[str, Any]] | None = None,
) -> Tables:
    """Tables for `objectives` on `space`: `predictor` (with `predict_specs`) answers latency,
    `sensitivity` (a `SensitivityTable` measured on this space) answers quality."""
    variables = decision_variables(space)
    merges = tuple(space.merge_options)
    model = space.model
    terms: dict[str, np.ndarray] = {}
    base: dict[str, np.ndarray] = {}
    outputs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for name in objectives:
        objective(name)
        if name == "latency":
            if predictor is None:
                raise HwsearchError(f"the latency objective needs a predictor for device {device!r}")
            terms[name], base[name], share = latency_terms(model, variables, merges, predictor, overhead)
            # how much of the space the device's measurements answer (the rest is predicted)
            provenance = {**(provenance or {})}
            from hwsearch.predictors.model_latency import anchor_key

            # anchored: the uncompressed model was timed here (`hwsearch profile --local --for MODEL`)
            anchored = overhead is not None and anchor_key(model) in overhead.anchors
            provenance["latency"] = {**provenance.get("latency", {}), "measured_share": share, "anchored": anchored}
        elif name == "size":
            per_var = size_terms(model, variables)
            terms[name] = np.broadcast_to(per_var, (len(merges), *per_var.shape)).copy()
            base[name] = np.zeros(len(merges))
        else:
            if sensitivity is None:
                raise HwsearchError(f"the quality objective needs a sensitivity table for model {model.name!r}")
            terms[name], base[name] = quality_terms(sensitivity, model, variables, merges)
            outputs[name] = partial(quality_from_sum, floor=sensitivity.floor, base=sensitivity.base_test,
                                    alpha=sensitivity.alpha, metric=sensitivity.metric)
    metric = sensitivity.metric if sensitivity is not None else None
    return Tables(model, device, variables, merges, terms, base, dict(provenance or {}), outputs, metric)

