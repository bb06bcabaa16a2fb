"""Random inputs for a spec, and the fp64 reference every implementation is checked against.

`make_inputs` returns (params, acts): fp32 parameters (weights, norms, and the keys and values of
an attention over a cache in another format) that a kernel's `prepare` consumes, and
activations already in the dtype the kernel runs on.
"""

from __future__ import annotations

import math

import torch

from hwsearch.kernels.quant import apply_nm
from hwsearch.kernels.specs import (
    AttentionSpec,
    ElementwiseSpec,
    LinearSpec,
    NormSpec,
    OpSpec,
    TomeMergeSpec,
)
from hwsearch.kernels.tome import bipartite_merge
from hwsearch.spaces.formats import ACT_DTYPE

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Params = dict[str, torch.Tensor]


def act_dtype(spec: OpSpec) -> torch.dtype:
    if isinstance(spec, LinearSpec):
        return TORCH_DTYPES[ACT_DTYPE[spec.format]]
    return TORCH_DTYPES[spec.dtype]  # type: ignore[attr-defined]


def make_inputs(spec: OpSpec, seed: int = 0, device: str = "cpu") -> tuple[Params, tuple[torch.Tensor, ...]]:
    """Deterministic random parameters and activations for `spec`."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    dtype = act_dtype(spec)
    if isinstance(spec, LinearSpec):
        x = randn(spec.M, spec.K).to(dtype)
        if spec.rank is None:
            params = {"weight": randn(spec.N, spec.K, scale=1 / math.sqrt(spec.K))}
        else:
            params = {
                "weight_a": randn(spec.rank, spec.K, scale=1 / math.sqrt(spec.K)),
                "weight_b": randn(spec.N, spec.rank, scale=1 / math.sqrt(spec.rank)),
            }
        params["bias"] = randn(spec.N, scale=0.1)
        return params, (x,)
    if isinstance(spec, AttentionSpec):
        kv_heads = spec.kv_heads or spec.heads
        q = randn(spec.heads, spec.tokens, spec.head_dim).to(dtype)
        k = randn(kv_heads, spec.kv_len, spec.head_dim).to(dtype)
        v = randn(kv_heads, spec.kv_len, spec.head_dim).to(dtype)
        if spec.kv_format is not None:  # the cache is state the kernel prepares (quantises), like a weight
            return {"k": k.float(), "v": v.float()}, (q,)
        return {}, (q, k, v)
    if isinstance(spec, TomeMergeSpec):
        x = randn(spec.tokens, spec.dim).to(dtype)
        metric = randn(spec.tokens, spec.dim).to(dtype)
        size = torch.ones(spec.tokens, 1, dtype=dtype, device=device)
        return {}, (x, metric, size)
    if isinstance(spec, NormSpec):
        params = {"weight": 1 + randn(spec.dim, scale=0.1)}
        if spec.kind == "layernorm":
            params["bias"] = randn(spec.dim, scale=0.1)
        return params, (randn(spec.tokens, spec.dim).to(dtype),)
    if isinstance(spec, ElementwiseSpec):
        x = randn(spec.tokens, spec.dim).to(dtype)
        if spec.kind == "gelu":
            return {}, (x,)
        if spec.kind == "rope":
            angles = torch.arange(spec.tokens, device=device)[:, None] * torch.rand(spec.dim // 2, generator=gen).to(device)
            return {}, (x, angles.cos().to(dtype), angles.sin().to(dtype))
        return {}, (x, randn(spec.tokens, spec.dim).to(dtype))
    raise TypeError(f"no inputs for {type(spec).__name__}")


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half convention (x is (..., tokens, dim))."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference(spec: OpSpec, params: Params, acts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The exact result in fp64 (N:M masks applied, no quantisation)."""
    p = {k: v.double() for k, v in params.items()}
    a = tuple(t.double() for t in acts)
    if isinstance(spec, LinearSpec):
        (x,) = a
        nm = spec.nm
        if spec.rank is None:
            y = x @ apply_nm(p["weight"], nm).T
        else:
            y = (x @ apply_nm(p["weight_a"], nm).T) @ apply_nm(p["weight_b"], nm).T
        return y + p["bias"] if "bias" in p else y
    if isinstance(spec, AttentionSpec):
        q, k, v = a if spec.kv_format is None else (a[0], p["k"], p["v"])
        groups = spec.heads // (spec.kv_heads or spec.heads)
        k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
        logits = q @ k.transpose(-1, -2) / math.sqrt(spec.head_dim)
        if spec.causal:
            keep = torch.ones(spec.tokens, spec.kv_len, dtype=torch.bool).tril(spec.cached)
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits.softmax(-1) @ v
    if isinstance(spec, TomeMergeSpec):
        x, metric, size = a
        return bipartite_merge(x, metric, size, spec.r)[0]
    if isinstance(spec, NormSpec):
        (x,) = a
        if spec.kind == "layernorm":
            return torch.nn.functional.layer_norm(x, (spec.dim,), p["weight"], p["bias"], eps=1e-6)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * p["weight"]
    if isinstance(spec, ElementwiseSpec):
        if spec.kind == "gelu":
            return torch.nn.functional.gelu(a[0])
        if spec.kind == "silu_mul":
            return torch.nn.functional.silu(a[0]) * a[1]
        if spec.kind == "add":
            return a[0] + a[1]
        return rope(*a)
    raise TypeError(f"no reference for {type(spec).__name__}")


# Relative Frobenius error allowed against `reference`, per linear format / activation dtype.
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 2e-2, "int8": 4e-2, "fp8": 1e-1, "int4": 1.6e-1}


def tolerance(spec: OpSpec) -> float:
    """The error a spec's result may have: its format's (a linear) or dtype's, and no less than
    its KV cache's format allows (attention over an int4 cache)."""
    if isinstance(spec, LinearSpec):
        return TOLERANCE[spec.format]
    tol = TOLERANCE[spec.dtype]  # type: ignore[attr-defined]
    kv_format = getattr(spec, "kv_format", None)
    return tol if kv_format is None else max(tol, TOLERANCE[kv_format])
