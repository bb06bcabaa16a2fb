"""Knobs and search spaces: what each layer of a model may be, on a given device.

Per linear layer: format (int4 with a group size, plain or AWQ-scaled), N:M sparsity, rank
(full, or multiples of `rank_step` up to `rank_fraction` of min(K, N)). AWQ is offered for dense
full-rank int4 (the weight-only setting it was made for; a plan may still combine it with N:M or
a rank, which `apply_plan` runs, but the search does not spend its sensitivity budget there). AWQ needs the model's
calibration data, which a space cannot see: `Knobs.scalings` None is decided by whoever knows
(`Knobs.with_calibration`: the search where its quality task has calibration inputs). Per decoder
block of a decode step: the KV cache's format (the model's dtype, int8, int4 with a group size).
Per model: a token-merge schedule (`r` per block from `start_block` on) for ViT-style models.
Group constraints come from the ModelSpec.

A device's capabilities are handed in as data (`spaces` imports nothing of ours): the formats
and N:M patterns it runs natively. Every choice is marked native or emulated; emulated choices
are only in the space when the user allows them (accuracy studies).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from hwsearch.errors import HwsearchError
from hwsearch.spaces.formats import (
    DEFAULT_KV_GROUP,
    FLOAT_DTYPES,
    FORMATS,
    INT4_GROUP_SIZES,
    KV_FORMATS,
    KV_QUANT_FORMATS,
    NAMED_SPARSITY,
    SCALINGS,
    canonical_sparsity,
    check_format,
    check_int4_group_size,
    check_kv_format,
    kv_group,
)
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice, MergePlan, Plan, validate_plan

MERGE_FRACTIONS = (0.04, 0.08, 0.12, 0.18)


@dataclass(frozen=True)
class Capabilities:
    """What a device runs natively: formats and N:M patterns (dense, low rank, merging always);
    KV-cache formats with a decode-attention kernel (`kv_kernels`) and those of them it runs
    natively (`kv_formats`)."""

    name: str = "any"
    formats: frozenset[str] = frozenset(FORMATS)
    sparsities: frozenset[str] = frozenset(NAMED_SPARSITY)
    kv_formats: frozenset[str] = frozenset(KV_FORMATS)
    kv_kernels: frozenset[str] = frozenset(KV_FORMATS)

    @classmethod
    def from_dict(cls, caps: Mapping[str, Any], name: str = "device") -> Capabilities:
        """From a backend's capability dict (`hwsearch.kernels.registry.capabilities`): each
        format flagged, and `nm` for 2:4, e.g. `{fp32: True, int8: True, fp8: False, nm: False}`,
        and `kv_cache`: each KV-cache format with a kernel, flagged native or not (absent: only
        the float dtypes, which plain attention reads). The backend decides the flags (a CUDA
        device's from its compute capability)."""
        formats = frozenset(f for f in FORMATS if caps.get(f))
        sparsities = {"dense"} | ({"2:4"} if caps.get("nm") else set())
        kv = caps.get("kv_cache") or {f: bool(caps.get(f)) for f in FLOAT_DTYPES}
        return cls(name, formats, frozenset(sparsities), frozenset(f for f, ok in kv.items() if ok), frozenset(kv))

    def native(self, choice: LayerChoice) -> bool:
        return choice.format in self.formats and choice.sparsity in self.sparsities | {"dense"}

    def kv_native(self, choice: KVCacheChoice, dtype: str) -> bool:
        """A cache in the model's `dtype` is plain attention; one in another float dtype is cast
        whole every step (emulated); int8/int4 as the device's kernels say."""
        if choice.format in FLOAT_DTYPES:
            return choice.format == dtype and dtype in self.kv_formats
        return choice.format in self.kv_formats


@dataclass(frozen=True)
class Knobs:
    """The values the search may pick (before the device filters them)."""

    formats: tuple[str, ...] = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
    group_sizes: tuple[int, ...] = INT4_GROUP_SIZES
    sparsities: tuple[str, ...] = ("dense", "2:4", "4:8", "1:4")
    rank_step: int = 32
    rank_fraction: float = 0.5
    low_rank: bool = True
    merge_r: tuple[int, ...] | None = None  # None: a few sizes relative to the model's tokens
    merge_start: tuple[int, ...] | None = None  # None: every block
    kv_formats: tuple[str, ...] = KV_QUANT_FORMATS  # besides the model's dtype, on decode blocks
    kv_group_sizes: tuple[int, ...] = (DEFAULT_KV_GROUP,)
    allow_emulated: bool = False
    scalings: tuple[str, ...] | None = None  # int4 weight scalings offered beside plain int4; None: decided by the search

    def __post_init__(self) -> None:
        for fmt in self.formats:
            check_format(fmt)
        for fmt in self.kv_formats:
            check_kv_format(fmt)
        for g in self.kv_group_sizes:
            kv_group("int8", g)
        for scaling in self.scalings or ():
            if scaling not in SCALINGS:
                raise HwsearchError(f"unknown int4 scaling {scaling!r}; accepted: {', '.join(SCALINGS)} (or none)")
        object.__setattr__(self, "sparsities", tuple(canonical_sparsity(s) for s in self.sparsities))
        for g in self.group_sizes:
            check_int4_group_size(g)
        if not 0 < self.rank_fraction < 1 or self.rank_step < 1:
            raise HwsearchError("rank_fraction must be in (0, 1) and rank_step >= 1; accepted: e.g. 0.5 and 32")

    def with_calibration(self, calibrated: bool) -> Knobs:
        """Scalings left open (None) decided: AWQ int4 beside plain int4 where the model has
        calibration data to compute its scales on, plain int4 only otherwise."""
        if self.scalings is not None:
            return self
        return replace(self, scalings=SCALINGS if calibrated else ())


@dataclass(frozen=True)
class LayerSpace:
    """The choices of one layer, each marked native or emulated."""

    name: str
    formats: tuple[str, ...]
    group_sizes: tuple[int, ...]
    sparsities: tuple[str, ...]
    ranks: tuple[int | None, ...]
    native: Mapping[LayerChoice, bool] = field(default_factory=dict, compare=False)
    scalings: tuple[str, ...] = ()  # beside plain int4 (always offered), for dense full-rank int4

    def choices(self) -> list[LayerChoice]:
        out = []
        for fmt in self.formats:
            int4 = fmt == "int4"
            for g in self.group_sizes if int4 else (None,):
                for sp in self.sparsities:
                    for rank in self.ranks:
                        out.append(LayerChoice(format=fmt, group_size=g, sparsity=sp, rank=rank))
                        if int4 and sp == "dense" and rank is None:  # AWQ: dense full-rank int4 (`scalings`)
                            out += [LayerChoice(format=fmt, group_size=g, scaling=s) for s in self.scalings]
        return out

    def why_not(self, choice: LayerChoice) -> str | None:
        for knob, value, accepted in (
            ("format", choice.format, self.formats),
            ("sparsity", choice.sparsity, self.sparsities),
            ("rank", choice.rank, self.ranks),
        ):
            if value not in accepted:
                shown = ", ".join("full" if a is None else str(a) for a in accepted)
                return f"{knob} {'full' if value is None else value} is not in the space; accepted: {shown}"
        if choice.format == "int4" and choice.group_size not in self.group_sizes:
            return f"int4 group size {choice.group_size} is not in the space; accepted: {', '.join(map(str, self.group_sizes))}"
        if choice.scaling is not None and choice.scaling not in self.scalings:
            offered = ", ".join(("none", *self.scalings))
            return f"int4 scaling {choice.scaling} is not in the space; accepted: {offered}"
        if choice.scaling is not None and (choice.sparsity != "dense" or choice.rank is not None):
            return (f"int4 scaling {choice.scaling} is in the space for dense full-rank layers only; "
                    f"accepted: {choice.scaling} without sparsity or rank")
        return None


class SearchSpace:
    """A model's layers with their knobs on one device, plus the merge schedules it may use."""

    def __init__(self, model: ModelSpec, caps: Capabilities | None = None, knobs: Knobs | None = None):
        self.model = model
        self.caps = caps or Capabilities()
        self.knobs = knobs or Knobs()
        self.layers = {layer.name: self._layer_space(layer) for layer in model.layers}
        self.kv = self._kv_options()
        self.merge_options = self._merge_options()

    # -- construction --------------------------------------------------------------------------
    def _allowed(self, values: Iterable[str], native: frozenset[str], always: str) -> tuple[str, ...]:
        return tuple(v for v in values if v == always or self.knobs.allow_emulated or v in native)

    def _layer_space(self, layer: Any) -> LayerSpace:
        k = self.knobs
        dtype = self.model.dtype
        formats = self._allowed(dict.fromkeys((dtype, *k.formats)), self.caps.formats, dtype)
        sparsities = self._allowed(dict.fromkeys(("dense", *k.sparsities)), self.caps.sparsities, "dense")
        limit = int(k.rank_fraction * min(layer.K, layer.N))
        ranks: tuple[int | None, ...] = (None,)
        if k.low_rank:
            ranks += tuple(r for r in range(k.rank_step, limit + 1, k.rank_step) if r < min(layer.K, layer.N))
        scalings = tuple(k.scalings or ())
        space = LayerSpace(layer.name, formats, k.group_sizes, sparsities, ranks, scalings=scalings)
        native = {c: self.caps.native(c) for c in space.choices()}
        return LayerSpace(layer.name, formats, k.group_sizes, sparsities, ranks, native, scalings)

    def _kv_options(self) -> dict[str, tuple[KVCacheChoice, ...]]:
        """Per decoder block of a decode step (it reads a cache: `kv_tokens`), the KV-cache choices:
        the model's dtype first, then the knob's formats that have a kernel here (native ones, or
        every one with `allow_emulated`)."""
        k, dtype = self.knobs, self.model.dtype
        options = [KVCacheChoice(format=dtype)]
        for fmt in dict.fromkeys(k.kv_formats):
            for g in k.kv_group_sizes if fmt in KV_QUANT_FORMATS else (None,):
                choice = KVCacheChoice(format=fmt, group_size=g)
                if fmt != dtype and (self.caps.kv_native(choice, dtype) or (k.allow_emulated and fmt in self.caps.kv_kernels)):
                    options.append(choice)
        return {b.prefix: tuple(options) for b in self.model.blocks if b.kind == "llama" and b.kv_tokens is not None}

    def _merge_options(self) -> tuple[MergePlan, ...]:
        spec = self.model
        if not spec.mergeable:
            return (MergePlan(),)
        rs = self.knobs.merge_r
        if rs is None:
            rs = tuple(sorted({max(1, round(spec.tokens * f)) for f in MERGE_FRACTIONS}))
        starts = self.knobs.merge_start if self.knobs.merge_start is not None else tuple(range(len(spec.blocks)))
        options = [MergePlan()]
        for r in rs:
            for start in starts:
                if r == 0:
                    continue
                try:
                    spec.merge_schedule(MergePlan(r=r, start_block=start))
                except HwsearchError:
                    continue
                options.append(MergePlan(r=r, start_block=start))
        return tuple(options)

    # -- queries ---------------------------------------------------------------------------------
    def identity(self) -> LayerChoice:
        return LayerChoice(format=self.model.dtype)

    def check_choice(self, layer: str, choice: LayerChoice) -> None:
        if layer not in self.layers:
            self.model.layer(layer)  # raises the unknown-layer error
        reason = self.layers[layer].why_not(choice)
        if reason:
            raise HwsearchError(f"plan layer {layer!r}: {reason}")

    def check_kv(self, block: str, choice: KVCacheChoice) -> None:
        """A block's KV-cache choice is in the space (the model's dtype always is)."""
        if choice.is_identity(self.model.dtype):
            return
        options = self.kv.get(block)
        if not options:
            raise HwsearchError(f"plan KV cache of {block!r}: the block reads no cache in this model (a prefill); "
                                f"accepted: {self.model.dtype} or no entry")
        if choice not in options:
            raise HwsearchError(f"plan KV cache of {block!r}: {choice.label()} is not in the space; accepted: "
                                + ", ".join(c.label() for c in options))

    def check_plan(self, plan: Plan) -> None:
        """One-line error for the first problem; also checks the merge schedule and KV caches are in the space."""
        validate_plan(plan, self.model, self)
        for block, choice in (plan.kv_cache or {}).items():
            self.check_kv(block, choice)
        merge = plan.merge
        if isinstance(merge, MergePlan) and merge.r and merge not in self.merge_options:
            shown = ", ".join(f"r={m.r}@{m.start_block}" for m in self.merge_options if m.r)
            raise HwsearchError(f"merge r={merge.r} from block {merge.start_block} is not in the space; accepted: none or {shown}")

    def native(self, plan: Plan) -> bool:
        """Whether every layer of the plan runs on a native path of the device."""
        dtype = self.model.dtype
        return (all(self.caps.native(plan.choice(n, dtype)) for n in self.layers)
                and all(self.caps.kv_native(plan.kv_choice(b, dtype), dtype) for b in self.kv))

    def _assign(self, chosen: dict[str, LayerChoice], name: str, pick: LayerChoice) -> None:
        """`pick` for layer `name`, and the knobs its groups share for their other members."""
        chosen[name] = pick
        for group in self.model.groups_of(name):
            for member in group.members:
                if member == name:
                    continue
                base = chosen.get(member) or self.identity()
                shared = {knob: getattr(pick, knob) for knob in group.shared}
                merged = {**base.model_dump(), **shared}
                if merged["format"] != "int4":  # a member's AWQ goes with its int4 format
                    merged["scaling"] = None
                chosen[member] = LayerChoice(**merged)

    def covering_plans(self, device: str | None = None, max_plans: int | None = None) -> list[Plan]:
        """Few plans (no merging) that together run every compressed choice of every layer shape at
        least once: the layers of one shape (tokens, K, N) take its choices in turn, plan after plan,
        so one timing of each plan measures, in place, each kernel the space can put there.
        Layers a group ties to another follow it (their shared knobs). With `max_plans`, at most
        that many (a shape with few layers, such as a classifier head, then has only as many of
        its choices covered)."""
        by_shape: dict[tuple[int, int, int, bool], list[str]] = {}
        for layer in self.model.layers:
            if layer.name in self.layers:
                by_shape.setdefault((layer.tokens, layer.K, layer.N, layer.bias), []).append(layer.name)
        # compressed choices only (the uncompressed layers are timed in every plan that leaves one alone):
        # a layer's in-place time depends on what streams around it, and a search's plans compress
        options = {shape: [c for c in self.layers[names[0]].choices() if c != self.identity()] or [self.identity()]
                   for shape, names in by_shape.items()}
        n_plans = max((-(-len(options[s]) // len(names)) for s, names in by_shape.items()), default=0)
        n_plans = n_plans if max_plans is None else min(n_plans, max_plans)
        plans = []
        for j in range(n_plans):
            chosen: dict[str, LayerChoice] = {}
            for shape, names in by_shape.items():
                opts = options[shape]
                for i, name in enumerate(names):
                    if name not in chosen:
                        self._assign(chosen, name, opts[(j * len(names) + i) % len(opts)])
            layers = {n: c for n, c in chosen.items() if not c.is_identity(self.model.dtype)}
            plans.append(Plan(model=self.model.name, device=device or self.caps.name, layers=layers))
        return plans

    def size(self) -> int:
        """Number of distinct plans (per-layer choices × merge schedules), ignoring groups."""
        total = len(self.merge_options)
        for space in self.layers.values():
            total *= len(space.choices())
        for options in self.kv.values():
            total *= len(options)
        return total

    def sample(self, rng: random.Random, aggressiveness: float = 0.5, device: str | None = None) -> Plan:
        """A random plan: each layer (group) is compressed with probability `aggressiveness`
        by a uniformly drawn choice, honouring group constraints; a random merge schedule with
        the same probability. Used to cover a wide range of quality in benchmarks."""
        chosen: dict[str, LayerChoice] = {}
        for name, space in self.layers.items():
            if name not in chosen:
                self._assign(chosen, name, rng.choice(space.choices()) if rng.random() < aggressiveness else self.identity())
        merge = None
        if len(self.merge_options) > 1 and rng.random() < aggressiveness:
            merge = rng.choice(self.merge_options[1:])
        layers = {n: c for n, c in chosen.items() if not c.is_identity(self.model.dtype)}
        kv = {b: rng.choice(opts[1:]) for b, opts in self.kv.items() if len(opts) > 1 and rng.random() < aggressiveness}
        return Plan(model=self.model.name, device=device or self.caps.name, layers=layers, merge=merge,
                    kv_cache=kv or None)
