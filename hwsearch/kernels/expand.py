"""A model (and a plan's choices) as the list of kernels it runs.

This is the bridge between a `ModelSpec` and latency: the profiler measures the kernels that
catalogue models run, and the whole-model predictor sums predicted kernel latencies over this
list. A low-rank layer stays one `LinearSpec` with `rank` (its `factors()` are the two GEMMs);
merged tokens shrink the token count of everything after the merge point; the merge costs a
`tome_merge` kernel of its own. An AWQ int4 layer runs its int4 GEMM after multiplying its
input by 1/s: that scale is priced as one element-wise pass over the (tokens, K) input, the
profiled `add` kernel in the activation dtype (`input_scale_kernel`; on a 2-core Xeon a bf16
multiply by a K-vector took 0.73-1.03x the add of the same shape, 1 to 512 rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.spaces.formats import ACT_DTYPE
from hwsearch.spaces.model import Block, ModelSpec

DEFAULT_FORMAT = "bf16"


def _knobs(found: Any) -> dict[str, Any]:
    """A layer's knob values from a choice (pydantic model, dict or None → bf16 dense full rank)."""
    if found is None:
        return {"format": DEFAULT_FORMAT, "group_size": None, "sparsity": "dense", "rank": None}
    get = found.get if isinstance(found, Mapping) else lambda k, d=None: getattr(found, k, d)
    return {
        "format": get("format", DEFAULT_FORMAT) or DEFAULT_FORMAT,
        "group_size": get("group_size", None),
        "sparsity": get("sparsity", "dense") or "dense",
        "rank": get("rank", None),
    }


def linear_spec(tokens: int, K: int, N: int, choice: Any) -> LinearSpec:
    """The kernel a (K -> N) linear runs at `tokens` rows under a choice (a `LayerChoice`, a dict
    or None: bf16 dense full rank); the one place a layer choice becomes a `LinearSpec`."""
    c = _knobs(choice)
    group = c["group_size"] if c["format"] == "int4" else None
    return LinearSpec(tokens, K, N, c["format"], group, c["sparsity"], c["rank"])


def input_scale_kernel(tokens: int, K: int, choice: Any) -> ElementwiseSpec | None:
    """The element-wise kernel an AWQ layer runs on its input before the GEMM (None: no scaling)."""
    if choice is None:
        return None
    scaling = choice.get("scaling") if isinstance(choice, Mapping) else getattr(choice, "scaling", None)
    return ElementwiseSpec("add", tokens, K, ACT_DTYPE["int4"]) if scaling else None


def _linear(tokens: int, layer: Any, choices: Mapping[str, Any] | None) -> list[OpSpec]:
    """A layer's kernels: its input scale (AWQ) and its GEMM."""
    choice = None if choices is None else choices.get(layer.name)
    scale = input_scale_kernel(tokens, layer.K, choice)
    return ([scale] if scale is not None else []) + [linear_spec(tokens, layer.K, layer.N, choice)]


def attention_spec(block: Block, dtype: str, kv: Any = None) -> AttentionSpec:
    """A block's attention kernel; a decode step (the block has `kv_tokens`) reads its cache in
    the format of `kv` (a `KVCacheChoice`; None: the compute dtype). A prefill attends to its own
    fresh keys and values, whatever the cache stores them in."""
    fmt = group = None
    if kv is not None and block.kv_tokens is not None:
        fmt, group = kv.format, kv.group_size
    return AttentionSpec(block.tokens, block.heads, block.head_dim, dtype, kv_tokens=block.kv_tokens,
                         causal=block.causal, kv_heads=block.kv_heads, kv_format=fmt, kv_group=group)


def _block_ops(block: Block, dtype: str, kv: Any = None) -> tuple[list[OpSpec], list[OpSpec], list[OpSpec]]:
    """Non-GEMM kernels of a block: (before attention, attention and residual, after merge)."""
    t, mt = block.tokens, block.mlp_tokens if block.mlp_tokens is not None else block.tokens
    attention = attention_spec(block, dtype, kv)
    norm = "rmsnorm" if block.norm == "rmsnorm" else "layernorm"
    pre = [NormSpec(norm, t, block.dim, dtype)]
    mid: list[OpSpec] = []
    if block.kind == "llama":
        kv = (block.kv_heads or block.heads) * block.head_dim
        mid += [ElementwiseSpec("rope", t, block.heads * block.head_dim, dtype), ElementwiseSpec("rope", t, kv, dtype)]
    mid += [attention, ElementwiseSpec("add", t, block.dim, dtype)]
    if block.merged:
        mid.append(TomeMergeSpec(t, block.dim, block.merged, dtype))
    act = ElementwiseSpec("silu_mul" if block.act in ("silu", "silu_mul") else "gelu", mt, block.mlp_dim, dtype)
    post = [NormSpec(norm, mt, block.dim, dtype), act, ElementwiseSpec("add", mt, block.dim, dtype)]
    return pre, mid, post


def _owner(tag: str, spec: OpSpec) -> str:
    kind = getattr(spec, "kind", None)
    return f"{tag}.{spec.op}" + (f".{kind}" if kind else "")


def model_kernels(
    model: ModelSpec, choices: Mapping[str, Any] | None = None, merge: Any = None, dtype: str = "bf16",
    kv_cache: Mapping[str, Any] | None = None,
) -> list[tuple[str, OpSpec]]:
    """(owner, spec) for every kernel one forward pass of `model` runs under a plan's choices
    (`kv_cache`: a plan's KV-cache choice per block prefix; blocks left out read the dtype).

    `owner` is the layer name for a layer's kernels (its GEMM, and an AWQ layer's input scale)
    and `blocks.{i}.{what}` for the other kernels.
    """
    merged = model.with_merge(merge) if merge is not None else model
    out: list[tuple[str, OpSpec]] = []
    by_block: dict[int | None, list[Any]] = {}
    for layer in merged.layers:
        by_block.setdefault(layer.block, []).append(layer)
    for layer in by_block.get(None, []):
        out += [(layer.name, s) for s in _linear(layer.tokens, layer, choices)]
    for block in merged.blocks:
        tag = block.prefix or f"blocks.{block.index}"
        pre, mid, post = _block_ops(block, dtype, (kv_cache or {}).get(tag))
        layers = by_block.get(block.index, [])
        attn = [lay for lay in layers if not lay.after_merge]
        mlp = [lay for lay in layers if lay.after_merge]
        out += [(_owner(tag, s), s) for s in pre]
        out += [(lay.name, s) for lay in attn for s in _linear(lay.tokens, lay, choices)]
        out += [(_owner(tag, s), s) for s in mid + post[:1]]
        out += [(lay.name, s) for lay in mlp for s in _linear(lay.tokens, lay, choices)]
        out += [(_owner(tag, s), s) for s in post[1:]]
    return out


def layer_kernel(layer: Any, tokens: int, choice: Any) -> LinearSpec:
    """The kernel one layer runs at `tokens` rows under a choice (a `LayerChoice` or a dict)."""
    return linear_spec(tokens, layer.K, layer.N, choice)


def space_kernels(
    model: ModelSpec, layer_choices: Mapping[str, Any], merges: Any = (None,), dtype: str = "bf16",
    kv_choices: Mapping[str, Any] | None = None,
) -> list[OpSpec]:
    """Every distinct kernel a search over `layer_choices` x `merges` (x `kv_choices`, per decoder
    block) scores: each merge schedule's untouched kernels, each layer under each of its choices
    at that schedule's token counts, and each block's attention over each of its KV caches."""
    names = set(model.layer_names)
    seen: dict[OpSpec, None] = {}
    for merge in merges:
        schedule = list(model.merge_schedule(merge)) if model.blocks else None
        merged = model.with_merge(schedule) if schedule is not None else model
        for owner, spec in model_kernels(model, None, schedule, dtype=dtype):
            if owner not in names:
                seen.setdefault(spec)
        for layer in merged.layers:
            for choice in layer_choices.get(layer.name, ()):
                seen.setdefault(layer_kernel(layer, layer.tokens, choice))
                scale = input_scale_kernel(layer.tokens, layer.K, choice)
                if scale is not None:
                    seen.setdefault(scale)
        for block in merged.blocks:
            for choice in (kv_choices or {}).get(block.prefix, ()):
                seen.setdefault(attention_spec(block, dtype, choice))
    return list(seen)
