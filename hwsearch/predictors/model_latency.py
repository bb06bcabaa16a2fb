"""Whole-model latency: the sum of predicted kernel latencies plus a per-device overhead term.

A plan on a ModelSpec expands to kernels with `model_kernels` (a low-rank layer is one
`LinearSpec` with a rank, i.e. its two GEMMs; merged tokens shrink every later kernel; the merge
itself is a `tome_merge` kernel). Each distinct kernel spec is predicted once and cached.

For search, where thousands of plans are scored, a plan is one choice per layer plus a merge
schedule, so `PlanTable` precomputes, per merge schedule, the latency of every (layer, choice)
and of the kernels no knob touches; a batch of plans is then one fancy-indexed sum in numpy.

End-to-end, a model costs more than its kernels: framework dispatch per kernel, dtype casts
where a layer's activation dtype differs from the model's, and a constant per forward pass.
`Overhead` maps (kernel sum, kernels launched, cast elements) to measured end-to-end latency with
non-negative least squares, fitted per device from timed plans and stored as a predictor row
(kind "overhead", target "model-overhead").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from scipy.optimize import nnls

from hwsearch.errors import HwsearchError
from hwsearch.kernels.expand import attention_spec, input_scale_kernel, layer_kernel, model_kernels
from hwsearch.kernels.specs import LinearSpec, OpSpec, TomeMergeSpec
from hwsearch.predictors.base import pack, unpack
from hwsearch.predictors.kinds import PredictorKind, register_kind
from hwsearch.predictors.store import latest, store_predictor
from hwsearch.spaces.formats import ACT_DTYPE
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice, Plan
from hwsearch.spaces.size import MB, layer_bytes

OVERHEAD_KIND = "overhead"
_RANK = re.compile(r", rank=(\d+)")  # a low-rank kernel's rank in its in-place key (`LinearSpec.describe`)
OVERHEAD_TERMS = ("kernel_ms", "forward", "kernels", "cast_melems")


class KernelPredictor(Protocol):
    """What whole-model latency needs from a predictor: ms for a list of specs (cached), as
    `hwsearch.predictors.registry.Answer` provides."""

    def predict_specs(self, specs: Sequence[OpSpec]) -> np.ndarray: ...


def measured_mask(predictor: KernelPredictor, specs: Sequence[OpSpec]) -> np.ndarray:
    """Which specs the predictor answers from a stored measurement (none, for a bare predictor)."""
    mask = getattr(predictor, "measured_mask", None)
    return np.zeros(len(specs), dtype=bool) if mask is None else np.asarray(mask(specs), dtype=bool)


MERGE_FAMILY = "tome_merge"


def layer_family(spec: LinearSpec | TomeMergeSpec) -> str:
    """The calibration family of a layer's kernel (format, N:M pattern, low rank or not), or of a
    block's token merge: both are timed in place (`profilers.inmodel`; a merge is the block's
    `TokenMerge` module, where the matching metric and the stacking add to the isolated kernel:
    1.4-1.7x it, on digits_vit as on vit_small, on a 2-vCPU Xeon)."""
    if isinstance(spec, TomeMergeSpec):
        return MERGE_FAMILY
    sparse = "" if spec.sparsity in (None, "dense") else f"/{spec.sparsity}"
    return f"linear/{spec.format}{sparse}" + ("/lowrank" if spec.rank is not None else "")


@dataclass
class Overhead:
    """How isolated kernel latencies compose into a model's end-to-end latency (ms):

        Σ_layers (family_scale[f]·t + family_offset_ms[f]) + scale·Σ_other kernels + per_forward + per_kernel·launches
        + per_cast_melem·cast elements + per_merge_block·blocks run with token merging

    `family_scale` is the in-model / isolated ratio of each layer family, timed in place (with
    `family_offset_ms`, where fitted, the fixed cost of one call of such a layer in place)
    (`hwsearch.predictors.calibration`); a family without one is scaled by `scale` like the
    other kernels. `band_pct` is the calibrated upper bound: measured latency stays at most that
    many per cent above the estimate (conformal, on held-out timed plans); None: uncalibrated.
    """

    scale: float = 1.0
    per_forward_ms: float = 0.0
    per_kernel_ms: float = 0.0
    per_cast_melem_ms: float = 0.0
    fitted_on: int = 0
    family_scale: dict[str, float] = field(default_factory=dict)
    family_offset_ms: dict[str, float] = field(default_factory=dict)
    band_pct: float | None = None
    # a block from the first merging one on runs as a `TomeBlock` (size-weighted attention, the
    # matching itself under vmap): in place it costs far more than the isolated merge kernel
    per_merge_block_ms: float = 0.0
    # measured end-to-end ms of uncompressed models (`anchor_key` -> ms): a plan of an anchored
    # model is predicted as that measurement plus the composed *difference* its choices make, so
    # what the composition cannot see (glue ops, per-forward costs of this model) cancels out
    anchors: dict[str, float] = field(default_factory=dict)
    # how far the same built plan measures above its first timing when timed again minutes later
    # (conformal, on the calibration's re-timed plans): the margin a verified plan's measurement needs
    retime_band_pct: float | None = None
    # the same, each timing first brought to the machine state it was taken in (its uncompressed
    # model timed beside it): the margin where both timings are judged at one state (`bench search`)
    retime_state_band_pct: float | None = None
    # family lines of one model (`anchor_key` -> family -> scale / offset), fitted on that model's
    # own layers timed in place where it has enough of them: a family's in-place cost depends on
    # what runs around it (MiniLM's bf16 layers do not cost what ViT's do), so a calibrated model
    # uses its own lines and every other model the pooled ones (`for_model`)
    model_family_scale: dict[str, dict[str, float]] = field(default_factory=dict)
    model_family_offset_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    # ms per million activation elements a layer of the family casts in place (into its kernel's
    # activation dtype and back), where fitted: a bf16 layer of an fp32 model pays casts that
    # grow with tokens·(K+N), which neither a scale on its kernel nor a fixed cost per call follows
    family_cast_ms: dict[str, float] = field(default_factory=dict)
    model_family_cast_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    # measured first, at the model level: a layer kernel's own time *in place* in one model
    # (`anchor_key` -> `inplace_key` -> ms, the median of its floors over the timed plans that ran
    # it there). Where a plan's layer has one, it is used as is instead of a family line: what
    # the device did with that kernel in that model, not a fit that must also serve other shapes.
    model_inplace_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    inplace_scale: float = 1.0  # what the in-place times are multiplied by (fitted: `fit`)
    # ms the rest of the forward pass (attention, norms, activations: everything but the layers)
    # costs per MB of layer weights the plan streams: weights evict the activations from cache.
    # Timed in place on a 2-core Xeon VM, vit_base's rest took 41.5 ms with its 343 MB of fp32
    # weights and 20-28 ms in plans of 30-60 MB; fitted on the rest each timed plan leaves beside
    # its layers (`weight_slope`), its own model's where it has one (`for_model`)
    weight_ms_per_mb: float = 0.0
    model_weight_ms_per_mb: dict[str, float] = field(default_factory=dict)
    # how a model without family lines of its own composes (another Overhead; stored nested), where
    # the calibration found a way that transfers better to models it did not time (lowest
    # leave-one-model-out error): lines fitted on MiniLM's small layers put a held-out vit_base 3x
    # off. Such a model keeps its anchor, in-place entries and weight slope (`for_model`).
    unseen: Overhead | None = None
    # per model (`anchor_key`), the factor on the composed difference a plan makes from the model's
    # anchor, fitted on that model's own timed plans (`calibration.model_gains`): what the family
    # lines get wrong about one model alike in all its plans (on a 2-vCPU EPYC every vit_tiny plan
    # measured 2-11 % slower than composed, its speed-ups smaller than its kernels promised)
    model_gain: dict[str, float] = field(default_factory=dict)
    # the resolved table of the model this overhead was resolved for (`for_model`); not stored
    inplace_ms: dict[str, float] = field(default_factory=dict)
    gain: float = 1.0  # the resolved model's `model_gain` (`for_model`); not stored

    def __post_init__(self) -> None:
        if isinstance(self.unseen, dict):  # read back from `as_dict`
            self.unseen = Overhead(**self.unseen)

    def for_model(self, key: str | None) -> Overhead:
        """The overhead a model composes with: the pooled family lines, with its own where fitted,
        and its in-place layer table; a model without lines of its own takes the `unseen`
        composition where there is one (with this one's anchors and what refits learned of it)."""
        key = key or ""
        if self.unseen is not None and not self.model_family_scale.get(key):
            learned = {name: {key: table[key]} if key in table else {}
                       for name, table in (("model_inplace_ms", self.model_inplace_ms),
                                           ("model_weight_ms_per_mb", self.model_weight_ms_per_mb),
                                           ("model_gain", self.model_gain))}
            return replace(self.unseen, anchors=self.anchors, band_pct=self.band_pct,
                           retime_band_pct=self.retime_band_pct, retime_state_band_pct=self.retime_state_band_pct,
                           **learned).for_model(key)
        own = self.model_family_scale.get(key)
        table = self.model_inplace_ms.get(key, {})
        slope = self.model_weight_ms_per_mb.get(key, self.weight_ms_per_mb)
        gain = self.model_gain.get(key, 1.0)
        if not own and not table:
            return replace(self, weight_ms_per_mb=slope, gain=gain) if (slope, gain) != (self.weight_ms_per_mb, self.gain) else self
        return replace(self, family_scale={**self.family_scale, **(own or {})}, weight_ms_per_mb=slope,
                       family_offset_ms={**self.family_offset_ms, **self.model_family_offset_ms.get(key, {})},
                       family_cast_ms={**self.family_cast_ms, **self.model_family_cast_ms.get(key, {})},
                       inplace_ms=dict(table), gain=gain)

    def inplace_of(self, spec: OpSpec, choice: Any = None, layer: bool = True) -> float | None:
        """A layer kernel's measured in-place ms in the resolved model (`for_model`), or None."""
        if not layer or not self.inplace_ms or not isinstance(spec, LinearSpec):
            return None
        return self.inplace_ms.get(inplace_key(spec, choice))

    def scaled(self, factor: float) -> Overhead:
        """The same composition on a machine `factor` times slower throughout (every term in ms,
        every scale on a kernel's ms, every in-place time and anchor): what a refit applies when
        the uncompressed model, timed again, has moved."""
        def times(d: Mapping[str, float]) -> dict[str, float]:
            return {k: v * factor for k, v in d.items()}

        def nested(d: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
            return {k: times(v) for k, v in d.items()}

        return replace(self, scale=self.scale * factor, per_forward_ms=self.per_forward_ms * factor,
                       per_kernel_ms=self.per_kernel_ms * factor, per_cast_melem_ms=self.per_cast_melem_ms * factor,
                       per_merge_block_ms=self.per_merge_block_ms * factor, family_scale=times(self.family_scale),
                       family_offset_ms=times(self.family_offset_ms), family_cast_ms=times(self.family_cast_ms),
                       model_family_scale=nested(self.model_family_scale),
                       model_family_offset_ms=nested(self.model_family_offset_ms),
                       model_family_cast_ms=nested(self.model_family_cast_ms),
                       model_inplace_ms=nested(self.model_inplace_ms), anchors=times(self.anchors), inplace_ms={},
                       weight_ms_per_mb=self.weight_ms_per_mb * factor,
                       model_weight_ms_per_mb=times(self.model_weight_ms_per_mb),
                       unseen=None if self.unseen is None else self.unseen.scaled(factor))

    def with_inplace(self, key: str, table: Mapping[str, float]) -> Overhead:
        """A copy whose in-place table for model `key` has `table`'s entries added (newer wins)."""
        merged = {**self.model_inplace_ms, key: {**self.model_inplace_ms.get(key, {}), **dict(table)}}
        return replace(self, model_inplace_ms=merged, inplace_ms={})

    def scale_of(self, spec: OpSpec, layer: bool = True) -> float | None:
        """A layer kernel's (or a token merge's) own family scale, or None where `scale` applies."""
        if not (layer and isinstance(spec, LinearSpec)) and not isinstance(spec, TomeMergeSpec):
            return None
        return self.family_scale.get(layer_family(spec))  # type: ignore[arg-type]

    def offset_of(self, spec: OpSpec, layer: bool = True) -> float:
        """A layer kernel's fixed in-place cost per call (ms) where its family has a scale of its own."""
        if self.scale_of(spec, layer) is None:
            return 0.0
        return self.family_offset_ms.get(layer_family(spec), 0.0)  # type: ignore[arg-type]

    def cast_ms_of(self, spec: OpSpec, layer: bool = True) -> float:
        """A layer kernel's in-place cost per million activation elements it casts (ms), where its
        family has a scale of its own (`cast_melems` gives the elements)."""
        if self.scale_of(spec, layer) is None:
            return 0.0
        return self.family_cast_ms.get(layer_family(spec), 0.0)  # type: ignore[arg-type]

    def apply(self, kernel_ms: np.ndarray, kernels: np.ndarray, cast_melems: np.ndarray,
              fixed_ms: np.ndarray | float = 0.0, merge_blocks: np.ndarray | float = 0.0) -> np.ndarray:
        """End-to-end ms from the kernel ms scaled by `scale` and the already-scaled `fixed_ms`."""
        return (np.asarray(fixed_ms) + self.scale * np.asarray(kernel_ms) + self.per_forward_ms
                + self.per_kernel_ms * np.asarray(kernels) + self.per_cast_melem_ms * np.asarray(cast_melems)
                + self.per_merge_block_ms * np.asarray(merge_blocks))

    def upper(self, total_ms: np.ndarray | float) -> np.ndarray | float:
        """The calibrated upper bound of an estimate (the estimate itself when uncalibrated)."""
        return np.asarray(total_ms) * (1.0 + (self.band_pct or 0.0) / 100.0)

    @classmethod
    def fit(cls, kernel_ms: np.ndarray, kernels: np.ndarray, cast_melems: np.ndarray, measured_ms: np.ndarray,
            fixed_ms: np.ndarray | float = 0.0, family_scale: dict[str, float] | None = None,
            merge_blocks: np.ndarray | float = 0.0, family_offset_ms: dict[str, float] | None = None,
            inplace_ms: np.ndarray | float = 0.0) -> Overhead:
        """Non-negative least squares on relative error (each plan weighs the same) of what the
        fixed, family-scaled part leaves of the measured latency. `inplace_ms`: each plan's layers
        timed in place, summed; their scale (`inplace_scale`: a sum of per-layer floors is not
        the floor of the model's forward pass) is fitted beside the other terms."""
        kernel_ms, measured_ms = np.asarray(kernel_ms, float), np.asarray(measured_ms, float)
        if len(measured_ms) < 2:
            raise HwsearchError(f"fitting the overhead needs at least 2 timed plans; got {len(measured_ms)}")
        target = measured_ms - np.broadcast_to(np.asarray(fixed_ms, float), measured_ms.shape)
        merges = np.broadcast_to(np.asarray(merge_blocks, float), measured_ms.shape)
        inplace = np.broadcast_to(np.asarray(inplace_ms, float), measured_ms.shape)
        A = np.stack([kernel_ms, np.ones_like(kernel_ms), np.asarray(kernels, float), np.asarray(cast_melems, float),
                      merges, inplace], 1)
        w = 1.0 / measured_ms
        coef, _ = nnls(A * w[:, None], target * w)
        if coef[0] <= 0:  # no scale left for the other kernels: keep them at their own cost, refit the rest
            rest, _ = nnls(A[:, 1:] * w[:, None], (target - kernel_ms) * w)
            coef = np.concatenate([[1.0], rest])
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]), int(len(measured_ms)),
                   dict(family_scale or {}), dict(family_offset_ms or {}), per_merge_block_ms=float(coef[4]),
                   inplace_scale=float(coef[5]) if inplace.any() else 1.0)

    def with_anchors(self, anchors: Mapping[str, float]) -> Overhead:
        """A copy with `anchors` added (a new measurement of a model replaces the old one)."""
        return replace(self, anchors={**self.anchors, **{k: float(v) for k, v in anchors.items()}})

    def to_bytes(self) -> bytes:
        return pack({"kind": OVERHEAD_KIND}, json.dumps(self.as_dict(), sort_keys=True).encode())

    @classmethod
    def from_bytes(cls, data: bytes) -> Overhead:
        _, payload = unpack(data, OVERHEAD_KIND)
        return cls(**json.loads(payload.decode()))

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "per_forward_ms": self.per_forward_ms, "per_kernel_ms": self.per_kernel_ms,
                "per_cast_melem_ms": self.per_cast_melem_ms, "fitted_on": self.fitted_on,
                "family_scale": dict(self.family_scale), "family_offset_ms": dict(self.family_offset_ms),
                "band_pct": self.band_pct,
                "per_merge_block_ms": self.per_merge_block_ms, "anchors": dict(self.anchors),
                "retime_band_pct": self.retime_band_pct, "retime_state_band_pct": self.retime_state_band_pct,
                "model_family_scale": {k: dict(v) for k, v in self.model_family_scale.items()},
                "model_family_offset_ms": {k: dict(v) for k, v in self.model_family_offset_ms.items()},
                "family_cast_ms": dict(self.family_cast_ms),
                "model_family_cast_ms": {k: dict(v) for k, v in self.model_family_cast_ms.items()},
                "model_inplace_ms": {k: dict(v) for k, v in self.model_inplace_ms.items()},
                "inplace_scale": self.inplace_scale, "weight_ms_per_mb": self.weight_ms_per_mb,
                "model_weight_ms_per_mb": dict(self.model_weight_ms_per_mb), "model_gain": dict(self.model_gain),
                "unseen": None if self.unseen is None else self.unseen.as_dict()}


def inplace_key(spec: LinearSpec, choice: Any = None) -> str:
    """Which in-place entry a layer kernel takes: its spec (shape at its token count, format,
    group, N:M, rank) and its input scaling (an AWQ layer scales its input inside the layer)."""
    scaling = (choice.get("scaling") if isinstance(choice, Mapping) else getattr(choice, "scaling", None)) if choice else None
    return spec.describe() + (f"|{scaling}" if scaling else "")


def sibling_specs(spec: LinearSpec, tokens: int, ranks: Sequence[int] = ()) -> list[LinearSpec]:
    """The kernels whose in-place time stands in for a layer kernel's where that was not timed,
    nearest first: the same layer and choice at the layer's unmerged token count `tokens`, then
    (a low-rank kernel) the same at each of `ranks`, nearest rank first. Merging changes a layer's
    rows and a rank its inner size, nothing else, so the kernel keeps its sibling's in-place /
    isolated ratio (`ModelLatency.inplace_ms`, `calibration.plan_parts`)."""
    here = replace(spec, M=tokens)
    out = [here] if here != spec else []
    if spec.rank is not None:
        out += [replace(here, rank=r) for r in sorted(ranks, key=lambda r: abs(np.log(r / spec.rank))) if r != spec.rank]
    return out


def plan_inplace_keys(model: ModelSpec, plan: Plan | None) -> dict[str, str]:
    """Each layer's `inplace_key` under a plan (at the token count its merge schedule leaves it)."""
    choices = full_choices(model, plan)
    layers = set(model.layer_names)
    kernels = model_kernels(model, choices, None if plan is None else plan.merge, dtype=model.dtype,
                            kv_cache=None if plan is None else plan.kv_cache)
    return {owner: inplace_key(spec, choices[owner]) for owner, spec in kernels
            if owner in layers and isinstance(spec, LinearSpec)}


def plan_weight_mb(model: ModelSpec, choices: Mapping[str, Any]) -> float:
    """MB of layer weights a forward pass streams under `choices` (`full_choices`: every layer)."""
    return sum(layer_bytes(layer, choices[layer.name]) for layer in model.layers) / MB


def anchor_key(model: ModelSpec) -> str:
    """Which anchor a model takes: its name and a digest of its shapes (a retraced or resized
    model with the same name is another model)."""
    digest = hashlib.sha1(repr((model.layers, model.blocks, model.dtype)).encode()).hexdigest()[:12]
    return f"{model.name}@{digest}"


def merge_blocks(model: ModelSpec, merge: Any) -> int:
    """Blocks that run with token merging: every block from the first that merges on."""
    if not model.blocks or merge is None:
        return 0
    schedule = model.merge_schedule(merge)
    first = next((i for i, r in enumerate(schedule) if r), None)
    return 0 if first is None else len(schedule) - first


def full_choices(model: ModelSpec, plan: Plan | None) -> dict[str, LayerChoice]:
    """Every layer's choice; layers a plan leaves out run uncompressed in the model's dtype."""
    identity = LayerChoice(format=model.dtype)
    if plan is None:
        return {name: identity for name in model.layer_names}
    return {name: plan.choice(name, model.dtype) for name in model.layer_names}


def _launches(spec: OpSpec) -> int:
    return len(spec.factors()) if isinstance(spec, LinearSpec) else 1


def cast_melems(spec: OpSpec, dtype: str) -> float:
    """Activation elements cast in and out when a layer's act dtype is not the model's (millions);
    none for any other kernel."""
    if not isinstance(spec, LinearSpec) or ACT_DTYPE[spec.format] == dtype:
        return 0.0
    return spec.M * (spec.K + spec.N) / 1e6


@dataclass
class PlanLatency:
    total_ms: float
    kernel_ms: float
    overhead_ms: float
    kernels: int
    cast_melems: float
    by_op: dict[str, float]
    measured_ms: float = 0.0  # the part of kernel_ms that came from stored measurements
    fixed_ms: float = 0.0  # layers with a family scale of their own, scaled
    free_ms: float = 0.0  # the other kernels, before `Overhead.scale`

    @property
    def measured_share(self) -> float:
        """Share of the kernel sum answered by measurements rather than predictions."""
        return self.measured_ms / self.kernel_ms if self.kernel_ms > 0 else 0.0


class ModelLatency:
    """Predicted latency of plans on one model for one device's predictor."""

    def __init__(self, model: ModelSpec, predictor: KernelPredictor, overhead: Overhead | None = None) -> None:
        self.model = model
        self.predictor = predictor
        self.overhead = (overhead or Overhead()).for_model(anchor_key(model))
        self.offset_ms = 0.0  # measured anchor minus the composed uncompressed model (0: not anchored)
        self.gain = 1.0  # the factor on the composed difference from the anchor (`Overhead.model_gain`)
        self.tokens = {layer.name: layer.tokens for layer in model.layers}  # each layer's unmerged rows
        # the ranks timed in place per layer kernel (its in-place key without the rank)
        self._ranks: dict[str, list[int]] = {}
        for key in self.overhead.inplace_ms:
            if (m := _RANK.search(key)) is not None:
                self._ranks.setdefault(_RANK.sub("", key), []).append(int(m.group(1)))
        anchor = self.overhead.anchors.get(anchor_key(model))
        if anchor is not None:
            # anchor + gain · (composed plan - composed uncompressed model)
            self.gain = self.overhead.gain
            self.offset_ms = float(anchor) - self.plan(None).total_ms

    @property
    def anchored(self) -> bool:
        """Whether this model's uncompressed latency was measured (`Overhead.anchors`)."""
        return anchor_key(self.model) in self.overhead.anchors

    def inplace_ms(self, spec: OpSpec, choice: Any, tokens: int) -> float | None:
        """A layer kernel's in-place ms: measured at its own token count where it was; else its
        nearest sibling timed in place (`sibling_specs`; the layer's unmerged count is `tokens`),
        scaled by the ratio of the two kernels' isolated times. Without it a search over merge
        schedules and ranks the calibration did not time falls back on family lines fitted on
        one rank at one token count (on a 2-vCPU EPYC they put vit_base's int8 layers at merged
        counts 1.6x above the same layers unmerged, and its plans with merging and rank 96 38 %
        too slow)."""
        oh = self.overhead
        found = oh.inplace_of(spec, choice)
        if found is not None or not oh.inplace_ms or not isinstance(spec, LinearSpec):
            return found
        ranks = self._ranks.get(_RANK.sub("", inplace_key(replace(spec, M=tokens), choice)), [])
        for sibling in sibling_specs(spec, tokens, ranks):
            there = oh.inplace_of(sibling, choice)
            if there is not None:
                iso = self.predictor.predict_specs([spec, sibling])
                return float(there * iso[0] / iso[1]) if iso[1] > 0 else None
        return None

    def kernels(self, plan: Plan | None) -> list[tuple[str, OpSpec]]:
        return model_kernels(self.model, full_choices(self.model, plan), None if plan is None else plan.merge,
                             dtype=self.model.dtype, kv_cache=None if plan is None else plan.kv_cache)

    def plan(self, plan: Plan | None) -> PlanLatency:
        """One plan, kernel by kernel (with a per-op breakdown)."""
        ks = self.kernels(plan)
        specs = [s for _, s in ks]
        layers = set(self.model.layer_names)
        choices = full_choices(self.model, plan)
        ms = self.predictor.predict_specs(specs)
        by_op: dict[str, float] = {}
        for s, t in zip(specs, ms, strict=True):
            by_op[s.op] = by_op.get(s.op, 0.0) + float(t)
        launches = sum(_launches(s) for s in specs)
        casts = sum(cast_melems(s, self.model.dtype) for s in specs)
        oh = self.overhead
        # layers timed in place in this model: that time as is (an AWQ layer's input scale included)
        inplace = {owner: t for owner, s in ks if owner in layers
                   and (t := self.inplace_ms(s, choices[owner], self.tokens[owner])) is not None}
        covered = np.array([owner in inplace for owner, _ in ks], dtype=bool)
        own = np.array([np.nan if owner in inplace else (oh.scale_of(s, owner in layers) or np.nan) for (owner, s) in ks])
        fixed = oh.inplace_scale * float(sum(inplace.values())) + float(np.nansum(own * ms)) + sum(
            oh.offset_of(s, owner in layers) + oh.cast_ms_of(s, owner in layers) * cast_melems(s, self.model.dtype)
            for owner, s in ks if owner not in inplace)
        fixed += oh.weight_ms_per_mb * plan_weight_mb(self.model, choices)
        free = float(ms[np.isnan(own) & ~covered].sum())
        kernel_ms = float(ms.sum())
        merging = merge_blocks(self.model, None if plan is None else plan.merge)
        total = float(self.overhead.apply(np.array([free]), np.array([launches]), np.array([casts]), fixed, merging)[0])
        total = self.gain * total + self.offset_ms
        from_measurements = float(ms[measured_mask(self.predictor, specs)].sum())
        return PlanLatency(total, kernel_ms, total - kernel_ms, launches, casts, by_op, from_measurements,
                           fixed, free)

    def plans(self, plans: Sequence[Plan | None]) -> np.ndarray:
        """Total latency (ms) of each plan, kernel by kernel (see `table` for many plans)."""
        return np.array([self.plan(p).total_ms for p in plans])

    def table(self, layer_choices: Mapping[str, Sequence[LayerChoice]], merges: Sequence[Any] = (None,),
              kv_choices: Mapping[str, Sequence[KVCacheChoice]] | None = None) -> PlanTable:
        return PlanTable(self, layer_choices, merges, kv_choices)


class PlanTable:
    """Per-merge, per-(layer, choice) latency tables: a batch of plans is one vectorised sum.

    `layer_choices` lists the choices each layer may take (e.g. a SearchSpace's
    ``{name: space.choices()}``); layers not listed stay uncompressed. `merges` lists the merge
    schedules (None, a MergePlan, or a per-block list). `kv_choices` lists the KV-cache choices
    of decoder blocks (by prefix): each such block's attention kernel is then a column per choice
    (after the layers' columns), not part of the base.
    """

    def __init__(self, ml: ModelLatency, layer_choices: Mapping[str, Sequence[LayerChoice]],
                 merges: Sequence[Any] = (None,), kv_choices: Mapping[str, Sequence[KVCacheChoice]] | None = None) -> None:
        model = ml.model
        self.ml = ml
        blocks = {b.prefix: b for b in model.blocks}
        self.kv_blocks = [b for b in (kv_choices or {}) if b in blocks]
        self.layers = list(model.layer_names)
        identity = LayerChoice(format=model.dtype)
        self.choices: list[list[Any]] = []
        for name in self.layers:
            opts = list(dict.fromkeys(layer_choices.get(name, ())))
            if identity not in opts:
                opts.insert(0, identity)
            self.choices.append(opts)
        kv_identity = KVCacheChoice(format=model.dtype)
        for block in self.kv_blocks:
            opts = list(dict.fromkeys((kv_choices or {})[block]))
            if kv_identity not in opts:
                opts.insert(0, kv_identity)
            self.choices.append(opts)
        self.index = [{c: i for i, c in enumerate(opts)} for opts in self.choices]
        self.offsets = np.cumsum([0] + [len(c) for c in self.choices[:-1]])
        self.position = {name: j for j, name in enumerate(self.layers)}
        self.kv_position = {block: len(self.layers) + j for j, block in enumerate(self.kv_blocks)}
        self.identity_cols = self.offsets + np.array([ix[identity] for ix in self.index[: len(self.layers)]]
                                                     + [ix[kv_identity] for ix in self.index[len(self.layers):]])
        self.schedules = [model.merge_schedule(m) for m in merges]
        self.merge_index = {s: i for i, s in enumerate(self.schedules)}
        n_m, width = len(self.schedules), sum(len(c) for c in self.choices)
        self.ms = np.zeros((n_m, width))
        self.launches = np.zeros((n_m, width))
        self.casts = np.zeros((n_m, width))
        self.measured = np.zeros((n_m, width), dtype=bool)
        self.scale_ms = np.zeros((n_m, width))  # an AWQ choice's input-scale kernel (scaled like the other kernels)
        self.base_ms = np.zeros(n_m)
        base_composed = np.zeros(n_m)  # the same kernels composed: `scale`, or their family's line (token merges)
        self.base_measured_ms = np.zeros(n_m)
        self.base_launches = np.zeros(n_m)
        self.inplace = np.full((n_m, width), np.nan)  # a column's time in place in this model, where measured
        oh = ml.overhead
        names = set(self.layers) | {f"{b}.attention" for b in self.kv_blocks}
        for mi, sched in enumerate(self.schedules):
            merged = model.with_merge(list(sched)) if model.blocks else model
            rest = [s for owner, s in model_kernels(model, full_choices(model, None), list(sched) if model.blocks else None,
                                                    dtype=model.dtype) if owner not in names]
            rest_ms = ml.predictor.predict_specs(rest) if rest else np.zeros(0)
            self.base_ms[mi] = float(rest_ms.sum())
            base_composed[mi] = sum(oh.scale * t if (own := oh.scale_of(k, False)) is None
                                    else own * t + oh.offset_of(k, False) for k, t in zip(rest, rest_ms, strict=True))
            self.base_measured_ms[mi] = float(rest_ms[measured_mask(ml.predictor, rest)].sum()) if rest else 0.0
            self.base_launches[mi] = len(rest)
            specs: list[OpSpec] = []
            scales: list[OpSpec] = []  # AWQ layers' input scales, and the column each belongs to
            scale_cols: list[int] = []
            for layer, unmerged, opts in zip(merged.layers, model.layers, self.choices, strict=False):
                for c in opts:
                    scale = input_scale_kernel(layer.tokens, layer.K, c)
                    if scale is not None:
                        scales.append(scale)
                        scale_cols.append(len(specs))
                    spec = layer_kernel(layer, layer.tokens, c)
                    self.inplace[mi, len(specs)] = ml.inplace_ms(spec, c, unmerged.tokens) or np.nan
                    specs.append(spec)
            merged_blocks = {b.prefix: b for b in merged.blocks}
            for block, opts in zip(self.kv_blocks, self.choices[len(self.layers):], strict=True):
                specs += [attention_spec(merged_blocks[block], model.dtype, c) for c in opts]
            self.ms[mi] = ml.predictor.predict_specs(specs)
            self.launches[mi] = [_launches(s) for s in specs]
            self.casts[mi] = [cast_melems(s, model.dtype) for s in specs]
            self.measured[mi] = measured_mask(ml.predictor, specs)
            if scales:
                scale_ms = ml.predictor.predict_specs(scales)
                self.scale_ms[mi] = np.bincount(scale_cols, weights=scale_ms, minlength=width)
                self.launches[mi] += np.bincount(scale_cols, minlength=width)
        kv_cols = sum(len(c) for c in self.choices[len(self.layers):])  # attention kernels: `scale` applies
        own = np.array([[oh.scale_of(layer_kernel(layer, layer.tokens, c)) or np.nan
                         for layer, opts in zip(model.layers, self.choices, strict=False) for c in opts]
                        + [np.nan] * kv_cols])
        self.own = np.broadcast_to(own, self.ms.shape)  # a layer family's own scale, NaN where `scale` applies
        kernels = [layer_kernel(layer, layer.tokens, c) for layer, opts in zip(model.layers, self.choices, strict=False)
                   for c in opts]
        offsets = np.array([[oh.offset_of(k) for k in kernels] + [0.0] * kv_cols])
        # a family's in-place casts, per merge schedule's token counts (`self.casts`)
        per_cast = np.array([[oh.cast_ms_of(k) for k in kernels] + [0.0] * kv_cols])
        offsets = offsets + per_cast * self.casts
        # the overhead folded into the entries once: scoring a batch of plans is then only sums
        scaled = np.where(np.isnan(self.own), oh.scale * self.ms, np.nan_to_num(self.own) * self.ms + offsets)
        timed = ~np.isnan(self.inplace)  # measured in place: as is, its input scale included
        scaled = np.where(timed, oh.inplace_scale * self.inplace, scaled)
        weight_mb = np.array([[layer_bytes(layer, c) / MB for layer, opts in zip(model.layers, self.choices, strict=False)
                               for c in opts] + [0.0] * kv_cols])
        self._entry = ml.gain * (scaled + oh.scale * np.where(timed, 0.0, self.scale_ms) + oh.per_kernel_ms * self.launches
                                 + oh.per_cast_melem_ms * self.casts + oh.weight_ms_per_mb * weight_mb)
        merging = np.array([merge_blocks(model, list(s)) for s in self.schedules], dtype=float)
        self._base = ml.gain * (base_composed + oh.per_forward_ms + oh.per_kernel_ms * self.base_launches
                                + oh.per_merge_block_ms * merging) + ml.offset_ms

    def encode(self, plans: Sequence[Plan]) -> tuple[np.ndarray, np.ndarray]:
        """(merge index per plan, global column per plan and layer) for `predict_encoded`."""
        m_idx = np.empty(len(plans), dtype=np.int64)
        cols = np.empty((len(plans), len(self.choices)), dtype=np.int64)
        for p, plan in enumerate(plans):
            sched = self.ml.model.merge_schedule(plan.merge)
            if sched not in self.merge_index:
                raise HwsearchError(f"plan {p}: merge schedule {list(sched)} is not in this table; accepted: the merges it was built with")
            m_idx[p] = self.merge_index[sched]
            cols[p] = self.identity_cols
            for name, choice in plan.layers.items():
                j = self.position.get(name)
                k = None if j is None else self.index[j].get(choice)
                if k is None:
                    raise HwsearchError(f"plan {p}: layer {name!r} choice {choice.label()} is not in this table; "
                                        "accepted: the model's layers and the choices the table was built with")
                cols[p, j] = self.offsets[j] + k
            for block, choice in (plan.kv_cache or {}).items():
                j = self.kv_position.get(block)
                k = None if j is None else self.index[j].get(choice)
                if k is None:
                    if j is None and choice.is_identity(self.ml.model.dtype):
                        continue
                    raise HwsearchError(f"plan {p}: KV cache of {block!r} choice {choice.label()} is not in this table; "
                                        "accepted: the decoder blocks and KV-cache choices the table was built with")
                cols[p, j] = self.offsets[j] + k
        return m_idx, cols

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(per (merge, column) end-to-end ms, per merge ms of the rest): the overhead folded in,
        so a plan's estimate is its merge's base plus one entry per layer."""
        return self._entry, self._base

    def predict_encoded(self, m_idx: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Total ms per encoded plan: base + Σ layer-choice latencies, overhead folded in."""
        entry, base = self.entries()
        return base[m_idx] + entry[m_idx[:, None], cols].sum(1)

    def predict(self, plans: Sequence[Plan]) -> np.ndarray:
        return self.predict_encoded(*self.encode(plans))

    def measured_share(self, plans: Sequence[Plan]) -> np.ndarray:
        """Per plan, the share of its kernel sum answered by measurements (not predictions)."""
        m_idx, cols = self.encode(plans)
        rows = m_idx[:, None]
        total = self.base_ms[m_idx] + (self.ms + self.scale_ms)[rows, cols].sum(1)
        measured = self.base_measured_ms[m_idx] + (self.ms * self.measured)[rows, cols].sum(1)
        return measured / np.maximum(total, 1e-12)


def store_overhead(engine: Any, device: str, overhead: Overhead, metrics: dict[str, Any], summary: dict[str, Any]) -> int:
    """Store a device's fitted overhead term as a predictor row (target "model-overhead")."""
    from hwsearch.predictors.dataset import device_backend

    dev_id, _ = device_backend(engine, device)
    return store_predictor(engine, kind=OVERHEAD_KIND, name=f"overhead-{device}", device_id=dev_id, devices=[device],
                           target="model-overhead", train_summary={**summary, **overhead.as_dict()}, metrics=metrics,
                           artefact=overhead.to_bytes())


def add_anchors(engine: Any, device: str, anchors: Mapping[str, float]) -> int:
    """Store the device's overhead term again with `anchors` (measured uncompressed models) added;
    the composition and its metrics are kept as they were. Returns the new row's id."""
    from hwsearch.predictors.dataset import device_backend

    dev_id, _ = device_backend(engine, device)
    row = latest(engine, OVERHEAD_KIND, dev_id, target="model-overhead")
    overhead = (Overhead() if row is None else row.load()).with_anchors(anchors)
    summary = {} if row is None else {k: v for k, v in row.train_summary.items() if k not in overhead.as_dict()}
    return store_overhead(engine, device, overhead, {} if row is None else row.metrics,
                          {**summary, "anchors_added": sorted(anchors)})


def device_overhead(engine: Any, device_id: int) -> tuple[Overhead, int | None]:
    """The device's latest overhead term and its row id; none fitted yet: no overhead (scale 1)."""
    row = latest(engine, OVERHEAD_KIND, device_id, target="model-overhead")
    return (Overhead(), None) if row is None else (row.load(), row.id)


register_kind(PredictorKind(OVERHEAD_KIND, Overhead.from_bytes, "json",
                            help="a device's whole-model overhead term (fitted from timed plans)"))
