"""Plan -> compressed-tensors `quantization_config` (the dict a Hugging Face `config.json` holds).

The document follows compressed-tensors' own pydantic models (checked against 0.20.0 in the
tests, `QuantizationConfig.model_validate`): `config_groups` maps a group name to a
`QuantizationScheme` (targets, weights, input_activations, format); `ignore` names the layers
left in floating point; `format` is the scheme format when all groups share one and
`mixed-precision` otherwise (the rule of `QuantizationConfig.merge` and `infer_model_format`).

Our formats map onto compressed-tensors' presets:
- int8 = `W8A8`: int8 symmetric per-channel weights, int8 symmetric per-token dynamic inputs,
  stored `int-quantized`;
- int4 = `W4A16_ASYM` with the plan's group size: int4 asymmetric per-group weights (scale and
  zero point), bf16 inputs, stored `pack-quantized`;
- fp8 = `FP8_DYNAMIC`: e4m3 per-channel weights, per-token dynamic inputs, `float-quantized`.

The KV cache is `kv_cache_scheme`: one `QuantizationArgs` for every attention module's keys and
values alike (compressed-tensors applies it to each cached attention module). The plan's int8/int4
caches are written as asymmetric dynamic per-token groups of `group_size` channels, which is
exactly how the plan quantises values; what it cannot say is a warning: keys quantised per channel
over groups of tokens (KIVI), the residual group kept unquantised, blocks with different formats
(the widest quantised one is written, for every block), and that vLLM serves no asymmetric cache.

AWQ int4 layers are written as the same `W4A16_ASYM` group scheme: compressed-tensors has no
AWQ field (llm-compressor's `AWQModifier` folds the scales into the preceding norm or linear
and then quantises, so an AWQ checkpoint is a plain pack-quantized one with pre-scaled
weights). The config cannot say that a layer is scaled nor carry the 1/s input scale; the
export says so in a warning.

Targets are `re:` regexes matching each module under any parent prefix, so one config fits the
bare stack and its causal-LM wrapper (see `plan_view.module_regex`). 2:4 sparsity is written as
`sparsity_config` in the `sparse-24-bitmask` format of compressed-tensors'
`SparsityCompressionConfig` registry; compressed-tensors > 0.14 no longer loads sparse-24
checkpoints, which the export says in a warning. Other N:M patterns, ranks, the merge schedule
and per-layer float dtypes have no field here: they are warnings, and the full plan is kept in
the plan file. compressed-tensors is a test dependency only: this module builds plain dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hwsearch.export.plan_view import KEPT, PlanView, module_regex, summarize
from hwsearch.export.targets import Target, register_target
from hwsearch.spaces.plan import KVCacheChoice, LayerChoice

TARGET = "compressed-tensors"
QUANT_METHOD = "compressed-tensors"
MIXED = "mixed-precision"
SPARSE_24 = "sparse-24-bitmask"


def _args(num_bits: int, type_: str, strategy: str, *, symmetric: bool = True, dynamic: bool = False,
          group_size: int | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {"num_bits": num_bits, "type": type_, "symmetric": symmetric, "strategy": strategy,
                            "dynamic": dynamic}
    if group_size is not None:
        args["group_size"] = group_size
    return args


def scheme(choice: LayerChoice) -> tuple[dict[str, Any], str]:
    """(QuantizationScheme fields without targets, compression format) for a quantised layer."""
    if choice.format == "int8":
        return {
            "weights": _args(8, "int", "channel"),
            "input_activations": _args(8, "int", "token", dynamic=True),
        }, "int-quantized"
    if choice.format == "int4":
        return {
            "weights": _args(4, "int", "group", symmetric=False, group_size=choice.group_size),
        }, "pack-quantized"
    if choice.format == "fp8":
        return {
            "weights": _args(8, "float", "channel"),
            "input_activations": _args(8, "float", "token", dynamic=True),
        }, "float-quantized"
    raise ValueError(f"format {choice.format!r} is not quantised")


def quantization_config(view: PlanView, kept_in: str = "the plan file") -> tuple[dict[str, Any], list[str]]:
    """The `quantization_config` dict for the plan, and one warning per knob it cannot express."""
    groups: dict[tuple[str, int | None], list[str]] = {}
    for name, choice in view.quantized.items():
        groups.setdefault((choice.format, choice.group_size), []).append(name)
    config_groups: dict[str, Any] = {}
    formats: list[str] = []
    for i, ((fmt, group_size), names) in enumerate(groups.items()):
        fields, compression = scheme(LayerChoice(format=fmt, group_size=group_size))
        config_groups[f"group_{i}"] = {"targets": [f"re:{module_regex(n)}" for n in names], **fields,
                                       "format": compression}
        formats.append(compression)
    distinct = sorted(set(formats))
    doc: dict[str, Any] = {
        "quant_method": QUANT_METHOD,
        "format": distinct[0] if len(distinct) == 1 else (MIXED if distinct else "dense"),
        "quantization_status": "initialized",
        "config_groups": config_groups,
        "ignore": [f"re:{module_regex(n)}" for n in view.unquantized],
    }
    warnings = view.warnings(TARGET, kept_in, sparsity_ok=("2:4",))
    kv = view.kv_quantized
    if kv:
        doc["kv_cache_scheme"], lost = kv_cache_scheme(view, kv, kept_in)
        warnings += lost
    if not config_groups:
        warnings.append(f"the plan quantises no layer: {TARGET} config_groups is empty")
    if view.awq:
        warnings.append(
            f"{TARGET} has no AWQ field: AWQ int4 layers ({summarize(view.awq)}) are written as plain W4A16_ASYM "
            f"groups; their checkpoint must hold the scaled weights W·diag(s) with 1/s folded into the preceding norm "
            f"or linear (llm-compressor's AWQModifier does this); {KEPT} {kept_in}"
        )
    sparse = view.with_sparsity().get("2:4", [])
    if sparse:
        doc["sparsity_config"] = _sparsity_24(view, sparse)
        warnings.append(
            f"2:4 sparsity ({summarize(sparse)}) is written as sparsity_config in the {SPARSE_24} format, which "
            f"compressed-tensors > 0.14 no longer loads; {KEPT} {kept_in}"
        )
    return doc, warnings


def kv_cache_scheme(view: PlanView, kv: dict[str, KVCacheChoice], kept_in: str) -> tuple[dict[str, Any], list[str]]:
    """The `kv_cache_scheme` QuantizationArgs for the plan's quantised KV caches, and what it loses."""
    widest = max(kv.values(), key=lambda c: (c.bits, -(c.group_size or 0)))  # most bits, then finest groups
    args = _args(widest.bits, "int", "group", symmetric=False, dynamic=True, group_size=widest.group_size)
    lost = [
        f"{TARGET} kv_cache_scheme quantises keys and values alike, per token in groups of {widest.group_size} "
        f"channels: the plan's values are exactly that, its keys are per channel over groups of tokens (KIVI) and "
        f"keep the last, unfilled group unquantised; {KEPT} {kept_in}",
        f"{TARGET} kv_cache_scheme is asymmetric like the plan's cache, which vLLM does not serve (it warns and "
        "needs a symmetric scheme)",
    ]
    others = [f"{b} {c.label()}" for b, c in kv.items() if c != widest]
    cached = [b.prefix for b in view.spec.blocks if b.kind == "llama"] if view.spec is not None else list(kv)
    floats = [b for b in cached if b not in kv]
    if others or floats:
        shown = summarize(others + [f"{b} {view.dtype or 'float'}" for b in floats])
        lost.append(f"{TARGET} has one kv_cache_scheme for every block: {widest.label()} is written for all, the plan "
                    f"gives other blocks other formats ({shown}); {KEPT} {kept_in}")
    return args, lost


def _sparsity_24(view: PlanView, names: list[str]) -> dict[str, Any]:
    """A `Sparse24BitMaskConfig` dict; global sparsity is over the model's linear weights when known."""
    doc: dict[str, Any] = {
        "format": SPARSE_24,
        "targets": [f"re:{module_regex(n)}" for n in names],
        "sparsity_structure": "2:4",
    }
    if view.spec is not None:
        total = sum(layer.K * layer.N for layer in view.spec.layers)
        pruned = sum(layer.K * layer.N // 2 for layer in view.spec.layers if layer.name in set(names))
        doc["global_sparsity"] = round(pruned / total, 6) if total else 0.0
    return doc


def render(view: PlanView, path: Path, kept_in: str) -> tuple[str, list[str]]:
    """The `quantization_config` as JSON text, and the warnings."""
    doc, warnings = quantization_config(view, kept_in)
    return json.dumps(doc, indent=2) + "\n", warnings


def recognise(text: str) -> bool:
    """A `quantization_config` this module wrote: JSON whose `quant_method` is compressed-tensors'."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("quant_method") == QUANT_METHOD


register_target(Target("compressed-tensors", render, "quantization_config.json",
                       what=f"a {TARGET} quantization_config (JSON)", recognise=recognise))
