"""Exact storage bytes of a compressed linear layer: the size objective.

The stored form of a layer (what `hwsearch.kernels.modules.CompressedLinear` keeps in its
state_dict, and what a checkpoint of the compressed model holds) is, per factor of a low-rank
layer or for the one weight of a full-rank layer:

- values: the kept weights, row by row, at the format's width (int4 two to a byte per row);
- N:M indices: the position of every kept weight inside its group of M, ceil(log2 M) bits
  each, packed per row (this is the metadata a sparse format carries);
- scales: int8 and fp8 one fp32 scale per output channel; int4 a bf16 scale and a bf16 zero
  point per group of `group_size` along K (a trailing partial group counts as a group);
- bias (on the last factor only) in the dtype the kernel adds it in;
- an AWQ-scaled layer also keeps its input scale 1/s: one bf16 value per input channel (K),
  counted with the scales.

Everything is exact integer arithmetic so the figure equals the bytes of the real tensors.
`kv_cache_bytes` is the same for a decoder block's KV cache (`kernels.kvcache`'s `nbytes()`):
not part of the weight bytes, it grows with the context and is reported beside them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hwsearch.spaces.formats import DEFAULT_INT4_GROUP, DEFAULT_KV_GROUP, DTYPE_BYTES, parse_sparsity
from hwsearch.spaces.model import ModelSpec
from hwsearch.spaces.plan import Plan

VALUE_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "fp8": 8, "int4": 4}
BIAS_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 4, "fp8": 4, "int4": 2}
SCALE_BYTES = {"int8": 4, "fp8": 4}  # per output channel
INT4_SCALE_BYTES = 2  # bf16 scale and bf16 zero point per group
INPUT_SCALE_BYTES = 2  # an AWQ layer's bf16 1/s per input channel
MB = 1e6  # the size objective's unit


@dataclass(frozen=True)
class SizeBreakdown:
    values: int = 0
    indices: int = 0
    scales: int = 0
    bias: int = 0

    @property
    def total(self) -> int:
        return self.values + self.indices + self.scales + self.bias

    def __add__(self, other: SizeBreakdown) -> SizeBreakdown:
        return SizeBreakdown(
            self.values + other.values, self.indices + other.indices, self.scales + other.scales, self.bias + other.bias
        )


def kept_per_row(K: int, sparsity: str) -> int:
    """Weights kept per row of K under an N:M pattern (a trailing partial group keeps up to N)."""
    nm = parse_sparsity(sparsity)
    if nm is None:
        return K
    n, m = nm
    return (K // m) * n + min(n, K % m)


def index_bits(sparsity: str) -> int:
    nm = parse_sparsity(sparsity)
    return 0 if nm is None else max(1, math.ceil(math.log2(nm[1])))


def factor_bytes(K: int, N: int, fmt: str, group_size: int | None, sparsity: str, bias: bool) -> SizeBreakdown:
    """Storage of one (N, K) weight in `fmt` with an N:M pattern, plus its bias."""
    kept = kept_per_row(K, sparsity)
    values = N * math.ceil(kept * VALUE_BITS[fmt] / 8)
    indices = N * math.ceil(kept * index_bits(sparsity) / 8)
    if fmt == "int4":
        scales = N * math.ceil(K / (group_size or DEFAULT_INT4_GROUP)) * 2 * INT4_SCALE_BYTES
    else:
        scales = N * SCALE_BYTES.get(fmt, 0)
    return SizeBreakdown(values, indices, scales, N * BIAS_BYTES[fmt] if bias else 0)


def linear_bytes(
    K: int, N: int, fmt: str = "fp32", group_size: int | None = None, sparsity: str = "dense",
    rank: int | None = None, bias: bool = True, scaling: str | None = None,
) -> SizeBreakdown:
    """Exact storage of a linear layer under one choice (a low-rank layer is two factors)."""
    if fmt == "int4" and group_size is None:
        group_size = DEFAULT_INT4_GROUP
    extra = SizeBreakdown(scales=K * INPUT_SCALE_BYTES if scaling else 0)
    if rank is None:
        return factor_bytes(K, N, fmt, group_size, sparsity, bias) + extra
    return (factor_bytes(K, rank, fmt, group_size, sparsity, False) + factor_bytes(rank, N, fmt, group_size, sparsity, bias)
            + extra)


def layer_bytes(layer: Any, choice: Any) -> int:
    """Exact storage of one of a model's layers (`spaces.model` layer: K, N, bias) under a choice."""
    return linear_bytes(layer.K, layer.N, choice.format, choice.group_size, choice.sparsity, choice.rank, layer.bias,
                        choice.scaling).total


KV_SCALE_BYTES = 2  # fp16 scale and fp16 minimum per group of a quantised KV cache


def kv_cache_bytes(fmt: str, group_size: int | None, kv_heads: int, tokens: int, head_dim: int,
                   dtype: str = "bf16", batch: int = 1) -> int:
    """Exact bytes of a KV cache holding `tokens` tokens (keys and values; `kernels.kvcache`'s
    `nbytes()`): a float format is 2·heads·tokens·head_dim elements; int8/int4 are codes plus an
    fp16 scale and minimum per group (keys: per channel per `group_size` tokens, the tokens of the
    group not yet full kept in `dtype`; values: per token per `group_size` channels)."""
    rows = batch * kv_heads
    if fmt in DTYPE_BYTES:
        return 2 * rows * tokens * head_dim * DTYPE_BYTES[fmt]
    bits = VALUE_BITS[fmt]
    group = int(group_size or DEFAULT_KV_GROUP)
    full, residual = divmod(tokens, group)
    keys = rows * (full * group * head_dim * bits // 8 + full * head_dim * 2 * KV_SCALE_BYTES
                   + residual * head_dim * DTYPE_BYTES[dtype])
    values = rows * tokens * (head_dim * bits // 8 + head_dim // min(group, head_dim) * 2 * KV_SCALE_BYTES)
    return keys + values


def plan_kv_bytes(model: ModelSpec, plan: Plan | None) -> int:
    """Exact bytes of every decode block's KV cache at the model's context under `plan` (blocks
    the plan leaves out keep the model's dtype); 0 for a model that reads no cache."""
    total = 0
    for block in model.blocks:
        if block.kind != "llama" or block.kv_tokens is None:
            continue
        choice = plan.kv_choice(block.prefix, model.dtype) if plan is not None else None
        fmt, group = (choice.format, choice.group_size) if choice is not None else (model.dtype, None)
        total += kv_cache_bytes(fmt, group, block.kv_heads or block.heads, block.kv_tokens, block.head_dim, model.dtype)
    return total
