"""Op specs: what a kernel computes, as plain frozen dataclasses.

A spec names an op and its shapes/formats, nothing about how it is run. It is the unit that is
measured (one `KernelConfig` row per spec), predicted, and built into modules. Every spec has a
canonical `params()` dict; `spec_from_params(op, params)` turns it back into a spec. The format
and sparsity vocabulary is `hwsearch.spaces.formats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from hwsearch.errors import HwsearchError, unknown
from hwsearch.spaces.formats import (
    canonical_sparsity,
    check_dtype,
    check_format,
    check_kv_format,
    int4_group,
    kv_group,
    parse_sparsity,
)

MAX_DIM = 1 << 20
MAX_M = 1 << 17


def check_dim(name: str, value: Any, upper: int = MAX_DIM) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (1 <= value <= upper):
        raise HwsearchError(f"shape {name}={value!r} is out of range; accepted: an integer from 1 to {upper}")
    return value


@dataclass(frozen=True)
class OpSpec:
    """Base of all specs: canonical params and a stable identity."""

    op: ClassVar[str] = ""

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.op}({inner})"

    @property
    def flops(self) -> float:
        return 0.0


@dataclass(frozen=True)
class LinearSpec(OpSpec):
    """y = x W^T with x (M, K), W (N, K); with `rank`, W ≈ B A with A (rank, K), B (N, rank)."""

    op: ClassVar[str] = "linear"
    M: int
    K: int
    N: int
    format: str = "bf16"
    group_size: int | None = None
    sparsity: str = "dense"
    rank: int | None = None

    def __post_init__(self) -> None:
        check_dim("M", self.M, MAX_M)
        check_dim("K", self.K)
        check_dim("N", self.N)
        check_format(self.format)
        object.__setattr__(self, "group_size", int4_group(self.format, self.group_size))
        object.__setattr__(self, "sparsity", canonical_sparsity(self.sparsity))
        if self.rank is not None:
            limit = min(self.K, self.N) - 1
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not (1 <= self.rank <= limit):
                raise HwsearchError(
                    f"rank={self.rank!r} is out of range for K={self.K}, N={self.N}; accepted: 1 to {limit} or none"
                )

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_sparsity(self.sparsity)

    def factors(self) -> tuple[LinearSpec, ...]:
        """A low-rank linear is two linears (x A^T then · B^T); a full-rank one is itself."""
        if self.rank is None:
            return (self,)
        common = {"format": self.format, "group_size": self.group_size, "sparsity": self.sparsity}
        return (
            LinearSpec(self.M, self.K, self.rank, **common),
            LinearSpec(self.M, self.rank, self.N, **common),
        )

    @property
    def flops(self) -> float:
        """Dense-equivalent multiply-adds × 2 (sparsity is not subtracted: it is a feature)."""
        return float(sum(2.0 * f.M * f.K * f.N for f in self.factors()))


@dataclass(frozen=True)
class AttentionSpec(OpSpec):
    """Scaled dot-product attention: q (heads, tokens, head_dim), k/v (heads, kv_tokens, head_dim).

    `kv_format` (with `kv_group`): the keys and values are read from a KV cache stored in that
    format (`kernels.kvcache`), e.g. decode over an int4 cache; None: k/v in `dtype` itself (a
    cache in the compute dtype is the same kernel, so such a format is stored as None).
    """

    op: ClassVar[str] = "attention"
    tokens: int
    heads: int
    head_dim: int
    dtype: str = "bf16"
    kv_tokens: int | None = None
    causal: bool = False
    kv_heads: int | None = None
    kv_format: str | None = None
    kv_group: int | None = None

    def __post_init__(self) -> None:
        check_dim("tokens", self.tokens, MAX_M)
        check_dim("heads", self.heads, 1024)
        check_dim("head_dim", self.head_dim, 1024)
        check_dtype(self.dtype)
        if self.kv_tokens is not None:
            check_dim("kv_tokens", self.kv_tokens, MAX_M)
        if self.kv_heads is not None:
            check_dim("kv_heads", self.kv_heads, 1024)
            if self.heads % self.kv_heads:
                raise HwsearchError(
                    f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}; accepted: kv_heads dividing heads"
                )
        fmt = None if self.kv_format in (None, self.dtype) else check_kv_format(self.kv_format)
        object.__setattr__(self, "kv_format", fmt)
        object.__setattr__(self, "kv_group", kv_group(fmt or self.dtype, self.kv_group))

    @property
    def kv_store(self) -> str:
        """The format the keys and values are stored in (the dtype itself when no cache format is named)."""
        return self.kv_format or self.dtype

    @property
    def kv_len(self) -> int:
        return self.kv_tokens or self.tokens

    @property
    def cached(self) -> int:
        """Tokens already in the cache when this step's `tokens` join it (0: a pass over its own)."""
        return self.kv_len - self.tokens

    @property
    def flops(self) -> float:
        return 4.0 * self.heads * self.tokens * self.kv_len * self.head_dim


@dataclass(frozen=True)
class TomeMergeSpec(OpSpec):
    """ToMe bipartite soft matching: merge `r` of `tokens` tokens of width `dim` (keeps token 0)."""

    op: ClassVar[str] = "tome_merge"
    tokens: int
    dim: int
    r: int
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        check_dim("tokens", self.tokens, MAX_M)
        check_dim("dim", self.dim)
        check_dtype(self.dtype)
        limit = (self.tokens - 1) // 2
        if isinstance(self.r, bool) or not isinstance(self.r, int) or not (0 <= self.r <= limit):
            raise HwsearchError(f"r={self.r!r} tokens to merge is out of range for {self.tokens} tokens; accepted: 0 to {limit}")

    @property
    def flops(self) -> float:
        half = self.tokens / 2
        return 2.0 * half * half * self.dim


NORM_KINDS = ("layernorm", "rmsnorm")
ELEMENTWISE_KINDS = ("gelu", "silu_mul", "add", "rope")


@dataclass(frozen=True)
class RowwiseSpec(OpSpec):
    """An op over `tokens` rows of width `dim` (a norm, an element-wise op), one of `KINDS`."""

    KINDS: ClassVar[tuple[str, ...]] = ()
    kind: str
    tokens: int
    dim: int
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise unknown(f"{self.op} kind", self.kind, self.KINDS)
        check_dim("tokens", self.tokens, MAX_M)
        check_dim("dim", self.dim)
        check_dtype(self.dtype)


@dataclass(frozen=True)
class NormSpec(RowwiseSpec):
    op: ClassVar[str] = "norm"
    KINDS: ClassVar[tuple[str, ...]] = NORM_KINDS

    @property
    def flops(self) -> float:
        return 5.0 * self.tokens * self.dim


@dataclass(frozen=True)
class ElementwiseSpec(RowwiseSpec):
    """The element-wise ops of a transformer block: GELU, SiLU·gate, residual add, rotary embedding."""

    op: ClassVar[str] = "elementwise"
    KINDS: ClassVar[tuple[str, ...]] = ELEMENTWISE_KINDS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind == "rope" and self.dim % 2:
            raise HwsearchError(f"rope needs an even dim, got {self.dim}; accepted: even dims")

    @property
    def flops(self) -> float:
        return {"gelu": 8.0, "silu_mul": 5.0, "add": 1.0, "rope": 3.0}[self.kind] * self.tokens * self.dim


SPEC_TYPES: dict[str, type[OpSpec]] = {
    cls.op: cls for cls in (LinearSpec, AttentionSpec, TomeMergeSpec, NormSpec, ElementwiseSpec)
}


def spec_from_params(op: str, params: dict[str, Any]) -> OpSpec:
    """Rebuild a spec from its op name and `params()` (e.g. a stored KernelConfig)."""
    if op not in SPEC_TYPES:
        raise unknown("op", op, SPEC_TYPES)
    cls = SPEC_TYPES[op]
    names = {f.name for f in fields(cls)}
    extra = set(params) - names
    if extra:
        raise HwsearchError(f"unknown parameter(s) {sorted(extra)} for op {op!r}; accepted: {sorted(names)}")
    try:
        return cls(**params)
    except TypeError as err:
        raise HwsearchError(f"bad parameters for op {op!r}: {err}; accepted: {sorted(names)}") from None
