"""From isolated kernels to a model's latency: in-model family scales, the overhead, a safe band.

Three things are learned per device from a few compressed models timed end to end:

* **family scales**: each layer is also timed in place (`hwsearch.profilers.inmodel`); the
  median ratio of in-model to isolated latency per layer family (`layer_family`: format, N:M,
  low rank) is how much that family's kernels cost more (casts, reshapes, cold activations) or
  less (warm caches) inside a model. Many layers per plan make this well determined even from
  a handful of plans, where an end-to-end fit of one scale per family would not be.
* **the overhead** (`Overhead.fit`): what the scaled layers leave of the measured latency,
  as a scale on the other kernels plus per-forward and per-kernel terms.
* **the band** (`conformal_band`): how far measured latency lands above the estimate on
  plans held out of the fit, as a split-conformal quantile. Conformal because it needs no
  assumption on the shape of the error and gives finite-sample coverage whatever the model
  got wrong; a quantile regression would need far more timed plans than a calibration has.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import LinearSpec, TomeMergeSpec
from hwsearch.predictors.model_latency import (
    ModelLatency,
    Overhead,
    PlanLatency,
    anchor_key,
    cast_melems,
    full_choices,
    inplace_key,
    layer_family,
    merge_blocks,
    plan_weight_mb,
    sibling_specs,
)
from hwsearch.spaces.plan import Plan

COVERAGE = 0.9
# The re-timing band is the margin a verified plan's measurement keeps below its budget; a user
# is promised at most 2 % of picks broken on a fresh timing, so it covers 98 % of re-timings
# (with fewer than 49 re-timed plans: the largest drift seen).
RETIME_COVERAGE = 0.98
MIN_LAYERS = 3  # a family needs this many in-place timings for a scale of its own
MODEL_MIN_LAYERS = 2 * MIN_LAYERS  # ... and this many of one model for that model's own line
MIN_SLOPE_POINTS = 4  # timed plans of one model for its own ms per MB of weights (`weight_slope`)
MIN_GAIN_POINTS = 4  # anchored timed plans of one model for its own gain (`model_gains`)
GAIN_RANGE = (0.5, 2.0)  # a model's gain past these says the composition is broken, not off
SLOPE_SPAN = 1.5  # ... spanning at least this ratio of weight MB


def family_scales(records: Iterable[Sequence[Any]], min_layers: int = MIN_LAYERS) -> dict[str, float]:
    """Median in-model / isolated ratio per family from (family, in-model ms, isolated ms) records."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for fam, inside, alone, *_ in records:
        if alone > 0 and math.isfinite(inside) and inside > 0:
            ratios[fam].append(inside / alone)
    return {f: float(np.median(r)) for f, r in sorted(ratios.items()) if len(r) >= min_layers}


def family_lines(records: Iterable[Sequence[Any]], min_layers: int = MIN_LAYERS
                 ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per family, in-model ms = scale · isolated ms + offset + cast · cast elements (the fixed
    cost of one call in place, and the activation casts into the kernel's dtype and back, which
    grow with tokens·(K+N) rather than with the kernel's time), by non-negative least squares on
    relative error. Records are (family, in-model ms, isolated ms[, millions of cast elements]);
    returns (scales, offsets, cast ms per million elements)."""
    points: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for fam, inside, alone, *rest in records:
        if alone > 0 and math.isfinite(inside) and inside > 0:
            points[fam].append((alone, inside, float(rest[0]) if rest else 0.0))
    scales: dict[str, float] = {}
    offsets: dict[str, float] = {}
    casts: dict[str, float] = {}
    for fam, pts in sorted(points.items()):
        if len(pts) < min_layers:
            continue
        alone, inside, cast = np.array(pts).T
        w = 1.0 / inside
        (a, b, c), _ = nnls(np.stack([alone, np.ones_like(alone), cast], 1) * w[:, None], inside * w)
        # no slope (every layer of the family the same size, say): the median ratio alone, not that
        # ratio on top of the offset NNLS put the whole in-model time into
        scales[fam], offsets[fam] = (float(a), float(b)) if a > 0 else (float(np.median(inside / alone)), 0.0)
        if c > 0:
            casts[fam] = float(c)
    return scales, offsets, casts


def inplace_table(records: Iterable[Sequence[Any]]) -> dict[str, float]:
    """Per `inplace_key`, the median in-model ms of the layers timed in place with that kernel,
    from (family, in-model ms, isolated ms, cast elements, key) records."""
    seen: dict[str, list[float]] = defaultdict(list)
    for _fam, inside, _alone, *rest in records:
        if len(rest) > 1 and rest[1] and math.isfinite(inside) and inside > 0:
            seen[rest[1]].append(float(inside))
    return {k: float(np.median(v)) for k, v in sorted(seen.items())}


def eviction_ceiling(bandwidth_gbs: float | None) -> float:
    """The most one MB of streamed weights can add to the rest of a pass (ms): the bytes it evicts,
    read back once from memory at the device's measured bandwidth (`Roofline.bandwidth_gbs`;
    1 MB at B GB/s is 1/B ms). Without a bandwidth, no ceiling."""
    return 1.0 / bandwidth_gbs if bandwidth_gbs and bandwidth_gbs > 0 else math.inf


def weight_slope(weight_mb: np.ndarray, rest_ms: np.ndarray, groups: Sequence[str],
                 min_points: int = MIN_SLOPE_POINTS, whole_rest_ms: np.ndarray | None = None,
                 ceiling_ms_per_mb: float = math.inf) -> tuple[float, dict[str, float]]:
    """(ms per MB of layer weights, pooled over the groups, each group's own where it has
    `min_points` plans spanning its weights) of what a forward pass spends beside its layers.

    Theil-Sen (robust to a disturbed timing), within each group (a model's own intercept: its
    attention and norms), never below zero (weights do not speed the rest up) and never above
    what a plan's whole rest (`whole_rest_ms`, default `rest_ms`) could pay for its weights:
    fitted on the differences of a few noisy timings of a small model (digits_vit, under 1 MB),
    a slope of 1.5 ms/MB would take more out of its compressed plans than their rest holds and
    predict them below zero. Nor above `ceiling_ms_per_mb` (`eviction_ceiling`): on a 2-vCPU Xeon
    the plans of digits_vit (0.5 MB of weights, all in cache) fitted 1.3 ms/MB, 40x what evicted
    bytes could cost at the measured 33 GB/s, and its compressed plans were predicted 37 % too fast."""
    from scipy.stats import theilslopes

    mb, rest, groups = np.asarray(weight_mb, float), np.asarray(rest_ms, float), np.asarray(groups, dtype=object)
    whole = rest if whole_rest_ms is None else np.asarray(whole_rest_ms, float)
    own: dict[str, float] = {}
    dx, dy = [], []
    ceiling = ceiling_ms_per_mb
    for g in dict.fromkeys(groups.tolist()):
        x, yv, w = mb[groups == g], rest[groups == g], whole[groups == g]
        if len(x) < 2 or np.ptp(x) <= 0:
            continue
        cap = max(0.0, float(np.min(w / x)))
        ceiling = min(ceiling, cap)
        dx.append(x - x.mean())
        dy.append(yv - yv.mean())
        if len(x) >= min_points and x.max() >= SLOPE_SPAN * x.min():
            own[g] = min(cap, ceiling_ms_per_mb, max(0.0, float(theilslopes(yv, x).slope)))
    if not dx:
        return 0.0, own
    pooled = min(ceiling, max(0.0, float(theilslopes(np.concatenate(dy), np.concatenate(dx)).slope)))
    return pooled, own


def split_by_family(per_layer: Mapping[str, float], families: Mapping[str, str],
                    scales: Mapping[str, float], offsets: Mapping[str, float] | None = None,
                    casts: Mapping[str, float] | None = None, layer_casts: Mapping[str, float] | None = None,
                    inplace: Mapping[str, float] | None = None, keys: Mapping[str, str] | None = None,
                    extra: Mapping[str, float] | None = None,
                    siblings: Mapping[str, tuple[str, float]] | None = None) -> tuple[float, float, float]:
    """(Σ of the layers' in-place times where measured (`inplace`, by `keys`; else by `siblings`:
    the unmerged kernel's time at the isolated ratio), Σ of the others' in-model ms where their
    family has a line (scaled, plus per-call offset and casts), Σ ms of the rest). `extra`: a
    layer's other kernels (an AWQ input scale), which its in-place time includes."""
    timed_ms = fixed = free = 0.0
    inplace = inplace or {}
    for name, ms in per_layer.items():
        fam = families[name]
        timed = inplace.get((keys or {}).get(name, ""))
        if timed is None and name in (siblings or {}):
            key, ratio = siblings[name]  # type: ignore[index]
            timed = None if key not in inplace else inplace[key] * ratio
        if timed is not None:
            timed_ms += timed
            continue
        free += (extra or {}).get(name, 0.0)
        s = scales.get(fam)
        if s is None:
            free += ms
        else:
            fixed += s * ms + (offsets or {}).get(fam, 0.0) + (casts or {}).get(fam, 0.0) * (layer_casts or {}).get(name, 0.0)
    return timed_ms, fixed, free


def conformal_band(predicted: np.ndarray, measured: np.ndarray, coverage: float = COVERAGE) -> float:
    """Per cent above the estimate that measured latency stays under with probability `coverage`
    (split conformal on held-out relative errors; the largest error when too few plans)."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(predicted) == 0:
        raise HwsearchError("a latency band needs at least one held-out timed plan")
    if not 0 < coverage < 1:
        raise HwsearchError(f"coverage {coverage} is out of range; accepted: between 0 and 1")
    over = np.sort(measured / predicted - 1.0)
    n = len(over)
    k = min(n, math.ceil((n + 1) * coverage))
    return float(max(0.0, 100.0 * over[k - 1]))


# -- composing a plan's latency from its parts ----------------------------------------------------
VARIANTS = ("kernel_sum", "overhead", "in_model", "in_model_affine", "per_model", "per_model_affine", "in_place")  # simplest first
PER_MODEL = ("per_model", "per_model_affine", "in_place")  # the compositions with lines of each calibrated model's own
TIE_POINTS = 1.0


SIGNIFICANCE = 0.05  # a richer composition is dropped only on errors this unlikely to be a tie


def choose_composition(held_out_mape: Mapping[str, float], tie_points: float = TIE_POINTS,
                       noise_floor_mape: float | None = None,
                       errors: Mapping[str, np.ndarray] | None = None) -> str:
    """The richest composition whose held-out MAPE is within `tie_points` of the best, or within
    the noise floor (the same plans timed twice) where that is wider: a difference the machine's
    own re-timing makes is no evidence for the poorer model. With `errors` (per variant, each
    plan's held-out relative error, the same plans in the same order), a composition within the
    noise floor but past `tie_points` must also not be shown worse than the best: its absolute
    errors not larger in a one-sided paired Wilcoxon test at `SIGNIFICANCE`.

    Every composition is scored against the same timings, so their noise is shared and paired
    errors can show what the noise floor hides: on a noisy 2-core VM (noise floor 11.7 %) the
    noise floor alone kept the in-place table at a held-out MAPE of 13.4 % beside
    in_model_affine's 5.0 %. With few plans the test cannot reject (4 plans: p >= 1/16), and the
    noise floor rule stands as it was.

    Random calibration plans mix every family, so one overall scale can tie with per-family
    scales on them; a search then picks extreme plans (every layer int8, say), where only the
    per-family scales know that int8 layers cost 1.8x their isolated time in place, and only the
    in-place table knows what each of the model's own kernels costs there. On a tie the
    composition that models more of the physics is kept."""
    scored = [v for v in VARIANTS if v in held_out_mape]
    best_v = min(scored, key=lambda v: (held_out_mape[v], -VARIANTS.index(v)))
    best = held_out_mape[best_v]

    def tied(v: str) -> bool:
        if held_out_mape[v] <= best + tie_points:
            return True
        if held_out_mape[v] > best + (noise_floor_mape or 0.0):
            return False
        if errors is None:
            return True
        from scipy.stats import wilcoxon

        diff = np.abs(errors[v]) - np.abs(errors[best_v])
        return bool(np.all(diff == 0) or wilcoxon(diff, alternative="greater").pvalue >= SIGNIFICANCE)

    return max((v for v in scored if tied(v)), key=VARIANTS.index)


@dataclass
class PlanParts:
    """A plan's isolated latencies, split as the compositions need them."""

    layer_ms: dict[str, float]  # layer name (or a block's `tome_merge`) -> its kernel's isolated ms
    family: dict[str, str]  # layer name -> `layer_family`
    rest_ms: float  # every other kernel (attention, norms, element-wise)
    launches: int
    cast_melems: float
    merge_blocks: int = 0  # blocks run with token merging (`model_latency.merge_blocks`)
    model_key: str = ""  # `model_latency.anchor_key` of the plan's model (which family lines it takes)
    layer_casts: dict[str, float] = field(default_factory=dict)  # layer -> millions of activation elements it casts
    layer_keys: dict[str, str] = field(default_factory=dict)  # layer -> `inplace_key` of its kernel
    layer_extra: dict[str, float] = field(default_factory=dict)  # layer -> ms of its other kernels (AWQ input scale)
    weight_mb: float = 0.0  # MB of layer weights the plan streams (`model_latency.plan_weight_mb`)
    # layer -> (`inplace_key` of its kernel at the layer's unmerged token count, isolated ms here /
    # there), for layers a merge schedule shrank: not timed in place at their own count, they take
    # the unmerged kernel's in-place time at that ratio (`ModelLatency.inplace_ms`)
    layer_siblings: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def kernel_ms(self) -> float:
        return float(sum(self.layer_ms.values()) + sum(self.layer_extra.values()) + self.rest_ms)


def plan_parts(ml: ModelLatency, plan: Plan | None, est: PlanLatency | None = None) -> PlanParts:
    """Split one plan's kernels into its layers (by name) and the rest."""
    est = est or ml.plan(plan)
    kernels = ml.kernels(plan)
    ms = ml.predictor.predict_specs([s for _, s in kernels])
    layers = set(ml.model.layer_names)
    choices = full_choices(ml.model, plan)
    layer_ms: dict[str, float] = {}
    family: dict[str, str] = {}
    casts: dict[str, float] = {}
    keys: dict[str, str] = {}
    extra: dict[str, float] = {}
    shrunk: list[tuple[str, LinearSpec, float]] = []  # layers a merge schedule shrank, at their unmerged count
    rest = 0.0
    for (owner, spec), t in zip(kernels, ms, strict=True):
        if owner in layers and isinstance(spec, LinearSpec):
            layer_ms[owner] = layer_ms.get(owner, 0.0) + float(t)
            family[owner] = layer_family(spec)
            casts[owner] = cast_melems(spec, ml.model.dtype)
            keys[owner] = inplace_key(spec, choices[owner])
            unmerged = sibling_specs(spec, ml.tokens[owner])[:1]  # merged: its unmerged kernel
            shrunk += [(owner, u, float(t)) for u in unmerged]
        elif owner in layers:
            extra[owner] = extra.get(owner, 0.0) + float(t)
        elif isinstance(spec, TomeMergeSpec):  # timed in place as its block's `TokenMerge`, like a layer
            layer_ms[owner], family[owner] = float(t), layer_family(spec)
        else:
            rest += float(t)
    there = ml.predictor.predict_specs([u for _, u, _ in shrunk]) if shrunk else []
    siblings = {owner: (inplace_key(u, choices[owner]), t / iso) for (owner, u, t), iso in zip(shrunk, there, strict=True)
                if iso > 0}
    merging = merge_blocks(ml.model, None if plan is None else plan.merge)
    return PlanParts(layer_ms, family, rest, est.kernels, est.cast_melems, merging, anchor_key(ml.model), casts,
                     keys, extra, plan_weight_mb(ml.model, choices), siblings)


def in_place_records(part: PlanParts, inside: Mapping[str, float]) -> list[tuple[str, float, float, float, str]]:
    """One plan's records for the fits: (family, in-model ms, isolated ms, millions of cast
    elements, `inplace_key` or "") of every layer and token merge in `part`, given each one's
    in-place ms (`profilers.inmodel.layer_times`)."""
    return [(part.family[n], inside[n], part.layer_ms[n], part.layer_casts.get(n, 0.0), part.layer_keys.get(n, ""))
            for n in part.layer_ms]


@dataclass
class Composition:
    """A fitted way to compose parts into end-to-end latency (its `Overhead`)."""

    overhead: Overhead

    def predict(self, part: PlanParts, anchor: tuple[PlanParts, float] | None = None) -> float:
        """End-to-end ms of a plan; with `anchor` (the uncompressed model's parts and its measured
        ms), that measurement plus the composed difference the plan makes (`Overhead.anchors`),
        times the model's gain (`Overhead.model_gain`), as `ModelLatency.plan` composes it."""
        oh = self.overhead.for_model(part.model_key)  # resolved once: the anchor is the same model's
        total = self._composed(part, oh)
        if anchor is None:
            return total
        base, measured_ms = anchor
        return measured_ms + oh.gain * (total - self._composed(base, oh))

    @staticmethod
    def _composed(part: PlanParts, oh: Overhead) -> float:
        """A plan's parts composed with one model's resolved overhead (`Overhead.for_model`)."""
        timed, fixed, free = split_by_family(part.layer_ms, part.family, oh.family_scale, oh.family_offset_ms,
                                             oh.family_cast_ms, part.layer_casts, oh.inplace_ms, part.layer_keys,
                                             part.layer_extra, part.layer_siblings)
        fixed += oh.inplace_scale * timed + oh.weight_ms_per_mb * part.weight_mb
        return float(oh.apply(np.array([free + part.rest_ms]), np.array([part.launches]),
                              np.array([part.cast_melems]), fixed, part.merge_blocks)[0])


def model_gains(composition: Composition, parts: Sequence[PlanParts], measured: np.ndarray,
                anchors: Sequence[tuple[PlanParts, float] | None], min_points: int = MIN_GAIN_POINTS
                ) -> dict[str, float]:
    """Per model with `min_points` anchored plans, the factor on the composed difference from its
    anchor that fits its measured differences best (least squares on relative error, through the
    origin: the uncompressed model is its own anchor), within `GAIN_RANGE`.

    The family lines and in-place entries are shared by a model's plans, so what they miss of
    one model they miss alike in all its plans: on a 2-vCPU EPYC every vit_tiny plan measured
    slower than composed, by 2-11 %, its speed-ups from the anchor smaller than composed."""
    by_model: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    base_ms: dict[str, float] = {}  # each model's uncompressed parts, composed once
    for part, y, anchor in zip(parts, np.asarray(measured, float), anchors, strict=True):
        if anchor is not None and y > 0:
            base, anchor_ms = anchor
            if part.model_key not in base_ms:
                base_ms[part.model_key] = composition.predict(base)
            by_model[part.model_key].append((composition.predict(part) - base_ms[part.model_key], y - anchor_ms, y))
    gains = {}
    for key, pts in sorted(by_model.items()):
        dp, dm, y = np.array(pts).T
        w = 1.0 / y**2
        if len(pts) >= min_points and np.sum(w * dp * dp) > 0:
            gains[key] = float(np.clip(np.sum(w * dp * dm) / np.sum(w * dp * dp), *GAIN_RANGE))
    return gains


def fit_compose(variant: str, parts: Sequence[PlanParts], records: Sequence[Sequence[tuple[str, float, float]]],
                measured: np.ndarray, train: np.ndarray, bandwidth_gbs: float | None = None,
                anchors: Sequence[tuple[PlanParts, float] | None] | None = None) -> Composition:
    """Fit `variant` on the plans selected by the boolean mask `train`.

    kernel_sum: the isolated kernels summed; overhead: one scale on all kernels plus per-forward,
    per-kernel and per-cast terms (NNLS); in_model: layer families scaled by their in-place
    ratios (`family_scales` of the training plans' layers), the rest by NNLS; in_model_affine: the
    same with a fixed per-call cost per family (`family_lines`); per_model: in_model, each model with
    enough layers of a family in the training plans taking its own scale for it, and the rest of
    the pass growing with the MB of weights it streams; per_model_affine: the same with lines, each
    model with enough layers of a family in the training plans taking its own line for it, and the
    rest of the pass growing with the MB of weights it streams (`weight_slope`, at most what evicted
    bytes cost at the device's `bandwidth_gbs`: `eviction_ceiling`); in_place: the
    same, and a layer whose kernel the training plans timed in place in its model
    (`inplace_table`) takes that time as is. Given `anchors` (per plan, its model's uncompressed
    parts and measured ms, or None), the compositions with lines of each model's own also fit each
    model's gain on the composed difference from its anchor (`model_gains`).
    """
    if variant not in VARIANTS:
        raise HwsearchError(f"unknown composition {variant!r}; accepted: {', '.join(VARIANTS)}")
    idx = np.flatnonzero(train)
    y = np.asarray(measured, float)[idx]
    chosen = [parts[i] for i in idx]
    n = np.array([p.launches for p in chosen], dtype=float)
    merging = np.array([p.merge_blocks for p in chosen], dtype=float)
    if variant == "kernel_sum":
        return Composition(Overhead(fitted_on=len(idx)))
    if variant == "overhead":
        k = np.array([p.kernel_ms for p in chosen])
        c = np.array([p.cast_melems for p in chosen])
        return Composition(Overhead.fit(k, n, c, y, merge_blocks=merging))
    training = [r for i in idx for r in records[i]]
    affine = variant in ("in_model_affine", "per_model_affine", "in_place")
    scales, offsets, casts = family_lines(training) if affine else (family_scales(training), {}, {})
    lines = Overhead(family_scale=scales, family_offset_ms=offsets, family_cast_ms=casts)
    if variant in PER_MODEL:
        for key in sorted({p.model_key for p in chosen}):
            own = [r for i in idx if parts[i].model_key == key for r in records[i]]
            (lines.model_family_scale[key], lines.model_family_offset_ms[key],
             lines.model_family_cast_ms[key]) = (family_lines(own, MODEL_MIN_LAYERS) if affine
                                                 else (family_scales(own, MODEL_MIN_LAYERS), {}, {}))
            if variant == "in_place":
                lines.model_inplace_ms[key] = inplace_table(own)
    if variant in PER_MODEL:
        # what each plan's forward pass spends beside its layers, timed in place, against the MB of
        # weights it streams: observed per plan, so its slope is fitted on its own. Weights evict
        # what the rest reads (a decoder's KV cache, its activations): tiny_llama's decode step
        # spent 1.36 ms beside its fp32 layers and 1.00 ms beside the same layers in int4, so a
        # composition without the slope promised heavy compression 40-55 % too little
        inside = np.array([sum(r[1] for r in records[i] if math.isfinite(r[1])) for i in idx])
        lines.weight_ms_per_mb, lines.model_weight_ms_per_mb = weight_slope(
            np.array([p.weight_mb for p in chosen]), y - inside, [p.model_key for p in chosen],
            ceiling_ms_per_mb=eviction_ceiling(bandwidth_gbs))
    split = []
    for p in chosen:
        oh = lines.for_model(p.model_key)
        split.append(split_by_family(p.layer_ms, p.family, oh.family_scale, oh.family_offset_ms,
                                     oh.family_cast_ms, p.layer_casts, oh.inplace_ms, p.layer_keys, p.layer_extra,
                                     p.layer_siblings))
    timed = np.array([t for t, _, _ in split])
    fixed = np.array([f + lines.for_model(p.model_key).weight_ms_per_mb * p.weight_mb
                      for (_, f, _), p in zip(split, chosen, strict=True)])
    free = np.array([fr + p.rest_ms for (_, _, fr), p in zip(split, chosen, strict=True)])
    fitted = Overhead.fit(free, n, np.zeros(len(idx)), y, fixed, scales, merging, offsets, timed)
    fitted.model_family_scale, fitted.model_family_offset_ms = lines.model_family_scale, lines.model_family_offset_ms
    fitted.family_cast_ms, fitted.model_family_cast_ms = casts, lines.model_family_cast_ms
    fitted.model_inplace_ms = lines.model_inplace_ms
    fitted.weight_ms_per_mb, fitted.model_weight_ms_per_mb = lines.weight_ms_per_mb, lines.model_weight_ms_per_mb
    if variant in PER_MODEL and anchors is not None:
        fitted.model_gain = model_gains(Composition(fitted), chosen, y, [anchors[i] for i in idx])
    return Composition(fitted)
