"""The bytes a kernel must move at least: what the roofline features and the physical-limits
check both divide by a latency (one definition, so a predictor and the profiler agree)."""

from __future__ import annotations

from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.spaces.formats import ACT_DTYPE, DTYPE_BYTES
from hwsearch.spaces.size import kv_cache_bytes, linear_bytes

# Per-element element-wise reads/writes: (inputs of full width, outputs).
ELEMENTWISE_IO = {"gelu": (1.0, 1.0), "silu_mul": (2.0, 1.0), "add": (2.0, 1.0), "rope": (2.0, 1.0)}


def bytes_moved(spec: OpSpec) -> dict[str, float]:
    """Bytes a kernel must read and write once: weights (values, N:M indices, scales, bias) and
    activations (inputs, outputs, and a low-rank layer's intermediate, written then read)."""
    weights = scales = indices = 0.0
    if isinstance(spec, LinearSpec):
        size = linear_bytes(spec.K, spec.N, spec.format, spec.group_size, spec.sparsity, spec.rank, bias=True)
        weights, scales, indices = float(size.total), float(size.scales), float(size.indices)
        a = DTYPE_BYTES[ACT_DTYPE[spec.format]]
        acts = float(sum(a * f.M * (f.K + f.N) for f in spec.factors()))
    elif isinstance(spec, AttentionSpec):
        # q in, output out, and the keys and values as their cache stores them (codes and scales)
        a = DTYPE_BYTES[spec.dtype]
        cache = kv_cache_bytes(spec.kv_store, spec.kv_group, spec.kv_heads or spec.heads, spec.kv_len, spec.head_dim,
                               spec.dtype)
        acts = float(a * spec.head_dim * 2 * spec.heads * spec.tokens + cache)
    elif isinstance(spec, TomeMergeSpec):
        a = DTYPE_BYTES[spec.dtype]
        acts = float(a * spec.dim * (2 * spec.tokens + spec.tokens - spec.r))
    elif isinstance(spec, NormSpec):
        a = DTYPE_BYTES[spec.dtype]
        acts = float(2 * a * spec.tokens * spec.dim)
        weights = float(4 * spec.dim * (2 if spec.kind == "layernorm" else 1))
    elif isinstance(spec, ElementwiseSpec):
        a = DTYPE_BYTES[spec.dtype]
        n_in, n_out = ELEMENTWISE_IO[spec.kind]
        acts = float(a * spec.tokens * spec.dim * (n_in + n_out))
    else:
        raise HwsearchError(f"no traffic model for op {spec.op!r}; accepted: linear, attention, tome_merge, norm, elementwise")
    return {"weights": weights, "scales": scales, "indices": indices, "activations": acts, "total": weights + acts}
