"""What to measure: sampling plans and budgets.

Three sources, in this order in every plan:
(a) the reference set: ~30 fixed kernels every device measures. Their latencies are the
    device's hardware embedding (the meta-predictor's input) and give its roofline (peak
    compute from large GEMMs, bandwidth from decode GEMMs and element-wise ops);
(b) the kernels catalogue models really run, across formats × sparsity × ranks (decoders'
    decode attention at several cached contexts × KV-cache formats);
(c) random shapes across ranges, so predictors learn shapes nobody listed.

Budgets: `quick` (≤ 5 minutes on 2 cores), `standard`, `full`, or a number of configurations.
Plans are deterministic (a seed), so an interrupted run and its re-run agree on what to measure.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from hwsearch.errors import HwsearchError
from hwsearch.kernels.expand import model_kernels
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.formats import DEFAULT_KV_GROUP, KV_QUANT_FORMATS
from hwsearch.spaces.knobs import Knobs
from hwsearch.spaces.model import ModelSpec

BUDGETS = ("quick", "standard", "full")
MAX_BUDGET = 100_000  # kernel configurations; the full plan holds a few thousand
# The shapes the kernel benchmark reports: a ViT-B MLP and an LLM decode GEMM.
BENCH_SHAPES: tuple[tuple[int, int, int], ...] = ((197, 768, 3072), (1, 4096, 4096))
BENCH_FORMATS = ("bf16", "int8", "int4", "fp8")
BENCH_RANK_FRACTION = 4  # low-rank rows use rank = min(K, N) / 4
# Decode attention over a KV cache (Llama-3-8B: 32 query heads, 8 kv heads, head dim 128) at
# these contexts, the cache in the compute dtype and quantised: the KV-cache knob's kernels.
KV_CONTEXTS: tuple[int, ...] = (512, 2048, 8192)
BENCH_KV_FORMATS: tuple[str | None, ...] = (None, "int8", "int4")


def reference_set() -> list[OpSpec]:
    """The fixed hardware-embedding kernels (never change their order: embeddings depend on it)."""
    specs: list[OpSpec] = []
    for m, k, n in ((1, 4096, 4096), (8, 4096, 4096), (64, 1024, 1024), (197, 768, 3072), (512, 2048, 2048), (16, 768, 768)):
        specs.append(LinearSpec(m, k, n, "bf16"))
    for m, k, n in ((1, 4096, 4096), (197, 768, 3072), (512, 2048, 2048)):
        specs.append(LinearSpec(m, k, n, "int8"))
        specs.append(LinearSpec(m, k, n, "int4"))
    specs += [
        LinearSpec(197, 768, 3072, "fp32"),
        LinearSpec(1, 4096, 4096, "fp32"),
        LinearSpec(197, 768, 3072, "fp8"),
        LinearSpec(197, 768, 3072, "bf16", sparsity="2:4"),
        LinearSpec(197, 768, 3072, "bf16", rank=192),
        LinearSpec(1, 4096, 4096, "int8", rank=1024),
        AttentionSpec(197, 12, 64, "bf16"),
        AttentionSpec(1, 32, 128, "bf16", kv_tokens=2048, kv_heads=8),
        AttentionSpec(512, 32, 128, "bf16", causal=True, kv_heads=8),
        NormSpec("layernorm", 197, 768, "bf16"),
        NormSpec("rmsnorm", 512, 4096, "bf16"),
        ElementwiseSpec("gelu", 197, 3072, "bf16"),
        ElementwiseSpec("silu_mul", 512, 14336, "bf16"),
        ElementwiseSpec("add", 197, 768, "bf16"),
        TomeMergeSpec(197, 768, 16, "bf16"),
    ]
    return specs


def bench_set() -> list[OpSpec]:
    """The kernels `hwsearch bench kernels` reports (bf16 dense baselines first)."""
    specs: list[OpSpec] = []
    for m, k, n in BENCH_SHAPES:
        rank = min(k, n) // BENCH_RANK_FRACTION
        specs += [LinearSpec(m, k, n, fmt) for fmt in BENCH_FORMATS]
        specs += [LinearSpec(m, k, n, "bf16", rank=rank), LinearSpec(m, k, n, "int8", rank=rank)]
        specs += [LinearSpec(m, k, n, "bf16", sparsity="2:4")]
    for context in KV_CONTEXTS:
        specs += [AttentionSpec(1, 32, 128, "bf16", kv_tokens=context, kv_heads=8, kv_format=fmt) for fmt in BENCH_KV_FORMATS]
    return specs


def kv_variants(spec: OpSpec, contexts: Sequence[int], formats: Sequence[str], groups: Sequence[int]) -> list[OpSpec]:
    """A decode attention (it reads a cache: `kv_tokens` set) at each context, its cache in each
    KV format (int8/int4 at each group size); any other kernel is itself."""
    if not isinstance(spec, AttentionSpec) or spec.kv_tokens is None:
        return [spec]
    out: list[OpSpec] = []
    for context in contexts:
        for fmt in formats:
            for group in groups if fmt in KV_QUANT_FORMATS else (None,):
                out.append(replace(spec, kv_tokens=context + spec.tokens, kv_format=fmt, kv_group=group))
    return out


@dataclass(frozen=True)
class CatalogueSweep:
    """Which catalogue models, and which knob values, a budget sweeps."""

    models: tuple[str, ...]
    formats: tuple[str, ...]
    sparsities: tuple[str, ...]
    rank_fractions: tuple[int, ...]  # rank = min(K, N) // fraction, rounded down to a multiple of 32
    group_sizes: tuple[int, ...] = (128,)
    # decode attention: the cached contexts and KV-cache formats (int8/int4 at `kv_groups`) swept
    kv_contexts: tuple[int, ...] = KV_CONTEXTS
    kv_formats: tuple[str, ...] = ("bf16", "int8", "int4")
    kv_groups: tuple[int, ...] = (DEFAULT_KV_GROUP,)


SWEEPS = {
    # quick covers what `hwsearch demo` searches: vit_base and digits_vit in their own fp32 too
    "quick": CatalogueSweep(("vit_base", "digits_vit", "llama3_8b:tokens=1"), ("fp32", "bf16", "int8", "int4"),
                            ("dense",), (4,)),
    "standard": CatalogueSweep(
        ("vit_tiny", "vit_small", "vit_base", "llama3_8b:tokens=1", "llama3_8b:tokens=8", "llama3_8b:tokens=128"),
        ("fp32", "bf16", "fp16", "int8", "int4", "fp8"),
        ("dense", "2:4", "1:4", "4:8"),
        (2, 4, 8),
        (32, 64, 128),
    ),
    "full": CatalogueSweep(
        ("vit_tiny", "vit_small", "vit_base", "vit_large", "llama3_8b:tokens=1", "llama3_8b:tokens=8",
         "llama3_8b:tokens=16", "llama3_8b:tokens=128", "llama3_8b:tokens=512"),
        ("fp32", "bf16", "fp16", "int8", "int4", "fp8"),
        ("dense", "2:4", "1:4", "4:8"),
        (2, 4, 8, 16),
        (32, 64, 128),
    ),
}
RANDOM_COUNT = {"quick": 60, "standard": 600, "full": 3000}
# FLOP ceiling of a random kernel, so a budget's time stays bounded.
RANDOM_MAX_FLOPS = {"quick": 2e9, "standard": 2e10, "full": 1e11}


def _rank(k: int, n: int, fraction: int) -> int | None:
    rank = (min(k, n) // fraction) // 32 * 32
    return rank if 32 <= rank < min(k, n) else None


def catalogue_set(sweep: CatalogueSweep) -> list[OpSpec]:
    """Every distinct kernel the sweep's models run, under every knob value of the sweep."""
    specs: list[OpSpec] = []
    for ref in sweep.models:
        for _, spec in model_kernels(get_model(ref)):
            if not isinstance(spec, LinearSpec):
                specs.append(spec)
                continue
            m, k, n = spec.M, spec.K, spec.N
            for fmt in sweep.formats:
                groups = sweep.group_sizes if fmt == "int4" else (None,)
                for group in groups:
                    for sparsity in sweep.sparsities:
                        specs.append(LinearSpec(m, k, n, fmt, group, sparsity))
                for fraction in sweep.rank_fractions:
                    rank = _rank(k, n, fraction)
                    if rank is not None:
                        specs.append(LinearSpec(m, k, n, fmt, groups[-1], "dense", rank))
    for ref in sweep.models:  # non-GEMM kernels in the model's own dtype too (a ViT runs them in fp32)
        model = get_model(ref)
        specs += [s for _, s in model_kernels(model, dtype=model.dtype) if not isinstance(s, LinearSpec)]
    return [v for s in specs for v in kv_variants(s, sweep.kv_contexts, sweep.kv_formats, sweep.kv_groups)]


def _log_uniform(rng: random.Random, low: int, high: int, multiple: int = 1) -> int:
    value = int(round(low * (high / low) ** rng.random()))
    return max(low, value // multiple * multiple)


def random_set(count: int, seed: int = 0, max_flops: float = 2e10) -> list[OpSpec]:
    """`count` random kernels: mostly GEMMs over formats/sparsity/rank, some other ops."""
    rng = random.Random(seed)
    formats = ("fp32", "bf16", "fp16", "int8", "int4", "fp8")
    sparsities = ("dense", "dense", "dense", "2:4", "1:4", "4:8")
    specs: list[OpSpec] = []
    while len(specs) < count:
        roll = rng.random()
        tokens = _log_uniform(rng, 1, 2048)
        if roll < 0.75:
            k, n = _log_uniform(rng, 64, 8192, 32), _log_uniform(rng, 64, 8192, 32)
            fmt = rng.choice(formats)
            rank = _rank(k, n, rng.choice((2, 4, 8))) if rng.random() < 0.2 else None
            spec: OpSpec = LinearSpec(tokens, k, n, fmt, rng.choice((32, 64, 128)) if fmt == "int4" else None,
                                      rng.choice(sparsities) if rank is None else "dense", rank)
        elif roll < 0.85:
            heads = rng.choice((4, 8, 12, 16, 32))
            kv = _log_uniform(rng, tokens, 4096) if rng.random() < 0.5 else None
            spec = AttentionSpec(tokens, heads, rng.choice((32, 64, 128)), "bf16", kv_tokens=kv, causal=rng.random() < 0.3)
        elif roll < 0.92:
            spec = ElementwiseSpec(rng.choice(("gelu", "silu_mul", "add")), tokens, _log_uniform(rng, 64, 16384, 32), "bf16")
        elif roll < 0.97:
            spec = NormSpec(rng.choice(("layernorm", "rmsnorm")), tokens, _log_uniform(rng, 64, 8192, 32), "bf16")
        else:
            t = max(tokens, 17)
            spec = TomeMergeSpec(t, _log_uniform(rng, 64, 1024, 32), rng.randint(1, (t - 1) // 4 + 1), "bf16")
        if spec.flops <= max_flops:
            specs.append(spec)
    return specs


def dedupe(specs: Iterable[OpSpec]) -> list[OpSpec]:
    seen: set[OpSpec] = set()
    out = []
    for spec in specs:
        if spec not in seen:
            seen.add(spec)
            out.append(spec)
    return out


def parse_budget(budget: str | int) -> str | int:
    """'quick' | 'standard' | 'full' | a positive number of configurations."""
    if isinstance(budget, int) or str(budget).strip().lstrip("-").isdigit():
        n = int(budget)
        if not 1 <= n <= MAX_BUDGET:
            raise HwsearchError(f"budget {budget!r} is out of range; accepted: quick, standard, full or a positive number "
                                f"of configurations up to {MAX_BUDGET} (more than any plan holds)")
        return n
    if budget not in BUDGETS:
        raise HwsearchError(f"unknown budget {budget!r}; accepted: quick, standard, full or a positive number")
    return budget


def plan_specs(budget: str | int, seed: int = 0, max_flops: float | None = None) -> list[OpSpec]:
    """The kernels a budget measures: reference set, benchmark set, catalogue sweep, random.

    A number N takes the first N of: the reference and benchmark sets, then a seeded shuffle of
    the standard plan. `max_flops` drops larger kernels (slow devices, quick checks).
    """
    budget = parse_budget(budget)
    head = dedupe(reference_set() + bench_set())
    if isinstance(budget, int):
        seen = set(head)
        rest = [s for s in plan_specs("standard", seed) if s not in seen]
        random.Random(seed).shuffle(rest)
        specs = head + rest
    else:
        specs = dedupe(head + catalogue_set(SWEEPS[budget]) + random_set(RANDOM_COUNT[budget], seed, RANDOM_MAX_FLOPS[budget]))
    if max_flops is not None:
        specs = [s for s in specs if s.flops <= max_flops]
    return specs[:budget] if isinstance(budget, int) else specs


def describe(specs: Sequence[OpSpec]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.op] = counts.get(spec.op, 0) + 1
    return counts


def _anchors(values: Iterable[int], max_ratio: float) -> set[int]:
    """A subset of `values` (smallest and largest kept) in which every value lies between two
    kept neighbours at most `max_ratio` apart (where `values` allow it)."""
    vals = sorted(set(values))
    kept = [vals[0]]
    for i, v in enumerate(vals[1:], 1):
        nxt = vals[i + 1] if i + 1 < len(vals) else None
        if (nxt is None or nxt > kept[-1] * max_ratio) and v != kept[-1]:
            kept.append(v)
    return set(kept)


def model_plan(model: str | ModelSpec, backend: str = "cpu", knobs: Knobs | None = None) -> list[OpSpec]:
    """What a model's search needs measured on this machine (`hwsearch profile --for MODEL`).

    Every kernel family the model's search space scores (each layer under each native choice, the
    attention (over each native KV cache of a decode block), norms, activations and merges of every
    merge schedule), on a grid of anchor token
    counts and ranks close enough that `MeasuredTable` interpolates every other kernel of the
    space between measured neighbours.
    """
    from hwsearch.kernels import registry
    from hwsearch.kernels.expand import space_kernels
    from hwsearch.kernels.interpolation import MAX_RANK_RATIO, MAX_TOKEN_RATIO, family_key, token_axis
    from hwsearch.spaces.knobs import Capabilities, SearchSpace

    spec = get_model(model) if isinstance(model, str) else model
    # a model with weights may be searched for quality, whose space has AWQ int4 (its input scale is a kernel)
    knobs = (knobs or Knobs()).with_calibration(spec.has_weights)
    space = SearchSpace(spec, Capabilities.from_dict(registry.capabilities(backend)), knobs)
    choices = {name: [c for c in ls.choices() if ls.native.get(c, True)] for name, ls in space.layers.items()}
    kv = {block: [c for c in options if space.caps.kv_native(c, spec.dtype)] for block, options in space.kv.items()}
    kernels = space_kernels(spec, choices, space.merge_options, dtype=spec.dtype, kv_choices=kv)
    groups: dict[object, list[OpSpec]] = {}
    for k in kernels:
        groups.setdefault(family_key(k), []).append(k)
    keep: list[OpSpec] = []
    for members in groups.values():
        tokens = _anchors((getattr(k, token_axis(k)) for k in members), MAX_TOKEN_RATIO)
        ranks = [k.rank for k in members if isinstance(k, LinearSpec) and k.rank is not None]
        rank_anchors = _anchors(ranks, MAX_RANK_RATIO) if ranks else set()
        keep += [k for k in members if getattr(k, token_axis(k)) in tokens
                 and (not isinstance(k, LinearSpec) or k.rank is None or k.rank in rank_anchors)]
    return keep
