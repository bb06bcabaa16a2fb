"""The compression vocabulary shared by every package: formats, sparsity patterns, sizes.

It lives in `spaces` because a search space is pure description and `spaces` imports nothing
of ours; kernels, predictors and search import the vocabulary from here.

Formats:
- fp32, bf16, fp16: weights and activations in that dtype.
- int8: W8A8, per-output-channel symmetric weights, per-token dynamic symmetric activations.
- int4: weight-only (W4A16, bf16 activations), asymmetric per-group weights (group 32/64/128).
- fp8: W8A8 float8 e4m3, per-channel weight and per-token activation scales.

KV-cache formats (decoders): the dtype itself (fp32/bf16/fp16), int8 or int4 (keys quantised
per channel, values per token, in groups of `group_size` along the quantised axis).
Int4 weight scaling: none (plain round-to-nearest) or "awq" (activation-aware per-input-channel scales, folded into the
quantised weight and the input).

Sparsity: "dense" or "N:M" (N kept of every M consecutive weights along the input dimension K).
"""

from __future__ import annotations

from typing import Any

from hwsearch.errors import HwsearchError, unknown

FORMATS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "int4", "fp8")
FLOAT_DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
INT4_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
DEFAULT_INT4_GROUP = 128
KV_FORMATS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "int4")
KV_QUANT_FORMATS: tuple[str, ...] = ("int8", "int4")
KV_GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
DEFAULT_KV_GROUP = 64
SCALINGS: tuple[str, ...] = ("awq",)
NAMED_SPARSITY: tuple[str, ...] = ("dense", "2:4", "1:4", "4:8")
SPARSITY_ACCEPTED = "dense or N:M with 0 < N < M <= 64 (e.g. 2:4, 1:4, 4:8)"

# Bits per stored weight element, and the dtype activations run in.
WEIGHT_BITS = {"fp32": 32, "bf16": 16, "fp16": 16, "int8": 8, "int4": 4, "fp8": 8}
ACT_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "int8": "bf16", "int4": "bf16", "fp8": "bf16"}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def check_format(fmt: Any) -> str:
    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)
    return fmt


def check_kv_format(fmt: Any) -> str:
    if fmt not in KV_FORMATS:
        raise unknown("KV-cache format", fmt, KV_FORMATS)
    return fmt


def kv_group(fmt: str, group_size: Any) -> int | None:
    """The group size a KV-cache format carries: int8/int4 take one (default `DEFAULT_KV_GROUP`),
    float formats none."""
    if fmt in KV_QUANT_FORMATS:
        if group_size is None:
            return DEFAULT_KV_GROUP
        if isinstance(group_size, bool) or group_size not in KV_GROUP_SIZES:
            raise unknown("KV-cache group size", group_size, KV_GROUP_SIZES)
        return int(group_size)
    if group_size is not None:
        raise HwsearchError(f"group_size={group_size} given for KV-cache format {fmt!r}; accepted: a group size only with int8 or int4")
    return None


def check_dtype(dtype: Any) -> str:
    if dtype not in FLOAT_DTYPES:
        raise unknown("dtype", dtype, FLOAT_DTYPES)
    return dtype


def check_int4_group_size(group_size: Any) -> int:
    """An accepted int4 group size, else one line listing them."""
    if isinstance(group_size, bool) or group_size not in INT4_GROUP_SIZES:
        raise unknown("int4 group size", group_size, INT4_GROUP_SIZES)
    return int(group_size)


def int4_group(fmt: str, group_size: Any) -> int | None:
    """The group size a layer in `fmt` carries: int4 takes one (default `DEFAULT_INT4_GROUP`),
    every other format none. The one place the rule is written (specs, plans and knobs use it)."""
    if fmt == "int4":
        return DEFAULT_INT4_GROUP if group_size is None else check_int4_group_size(group_size)
    if group_size is not None:
        raise HwsearchError(f"group_size={group_size} given for format {fmt!r}; accepted: a group size only with int4")
    return None


def parse_sparsity(pattern: Any) -> tuple[int, int] | None:
    """'dense' -> None; 'N:M' -> (N, M) with 0 < N < M <= 64."""
    if pattern == "dense":
        return None
    try:
        n_str, m_str = str(pattern).split(":")
        n, m = int(n_str), int(m_str)
    except ValueError:
        raise HwsearchError(f"unknown sparsity pattern {pattern!r}; accepted: {SPARSITY_ACCEPTED}") from None
    if not (0 < n < m <= 64):
        raise HwsearchError(f"unknown sparsity pattern {pattern!r}; accepted: {SPARSITY_ACCEPTED}")
    return n, m


def canonical_sparsity(pattern: Any) -> str:
    nm = parse_sparsity(pattern)
    return "dense" if nm is None else f"{nm[0]}:{nm[1]}"


def density(pattern: str) -> float:
    """Fraction of weights kept."""
    nm = parse_sparsity(pattern)
    return 1.0 if nm is None else nm[0] / nm[1]
