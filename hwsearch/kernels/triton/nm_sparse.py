"""General N:M sparse GEMM over a compressed values + indices format.

Why our own kernel: cuSPARSELt (and `to_sparse_semi_structured`) only runs 2:4 (1:2 for fp32);
patterns such as 1:4, 4:8 or 3:8 have no library kernel. This one takes any N:M with
0 < N < M <= 64 along K, any M (rows), K and N, and fp32/fp16/bf16.

Format (`pack_nm`): of every M consecutive weights along K the N kept ones (the same choice as
`quant.nm_mask`, so the same weights as every other implementation) are stored as
`values` (rows, G·N) and `indices` (rows, G·N) uint8 offsets inside their group, sorted, with
G = ceil(K/M). A trailing partial group is padded; a padded slot holds value 0. The kernel reads
the transposes (G·N, rows) so that loads run along the output dimension.

Kernel: per K tile of GPT groups it loads only the compressed entries (N/M of the weights plus a
byte of index each), scatters them into a dense (GPT·M', BLOCK_N) tile in registers by comparing
each index with the in-group offset (M' = M rounded up to a power of two; offsets >= M are dead
columns fed zeros on both sides) and runs a dense `tl.dot`. The saving is memory traffic, which is
what bounds decode-size GEMMs; compute is that of the dense tile.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hwsearch.errors import HwsearchError
from hwsearch.kernels.quant import nm_mask
from hwsearch.kernels.triton.launch import Launched, Launcher, config, dot_in_fp32


def pack_nm(weight: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, K) weight → values (rows, G·n) in its dtype and indices (rows, G·n) uint8."""
    if weight.dim() != 2:
        raise HwsearchError(f"pack_nm takes a 2-D (rows, K) weight, got shape {tuple(weight.shape)}; accepted: (rows, K)")
    if not (0 < n < m <= 64):
        raise HwsearchError(f"N:M pattern {n}:{m} is out of range; accepted: 0 < N < M <= 64")
    rows, k = weight.shape
    pad = (-k) % m
    keep = F.pad(nm_mask(weight, n, m), (0, pad), value=False).view(rows, -1, m)
    # Exactly n kept per full group; a partial group with fewer than n real columns takes padding.
    idx = keep.to(torch.int8).topk(n, dim=-1).indices.sort(dim=-1).values
    vals = F.pad(weight, (0, pad)).view(rows, -1, m).gather(-1, idx)
    return vals.reshape(rows, -1).contiguous(), idx.reshape(rows, -1).to(torch.uint8).contiguous()


def unpack_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, k: int) -> torch.Tensor:
    """Inverse of `pack_nm`: the dense (rows, K) weight with the pruned entries zero."""
    rows = values.shape[0]
    groups = values.shape[1] // n
    dense = torch.zeros(rows, groups, m, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, indices.view(rows, groups, n).long(), values.view(rows, groups, n))
    return dense.view(rows, -1)[:, :k]


def _nm_kernel(
    x_ptr, v_ptr, i_ptr, b_ptr, y_ptr,
    M, N, K, G,
    stride_xm, stride_xk, stride_vc, stride_vn, stride_ic, stride_in, stride_ym, stride_yn,
    NK: tl.constexpr, MK: tl.constexpr, MP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    GPT: tl.constexpr = BLOCK_K // MP  # groups per K tile
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    kk = tl.arange(0, GPT * MP)
    kg = kk // MP  # group within the tile of each dense column
    kr = kk % MP  # offset inside the group
    gg = tl.arange(0, GPT)
    rr = tl.arange(0, MP)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for g0 in range(0, G, GPT):
        k = (g0 + kg) * MK + kr
        k_ok = (kr < MK) & (k < K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :] * stride_xk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        g_ok = (g0 + gg) < G
        c_mask = g_ok[:, None] & n_ok[None, :]
        w3 = tl.full((GPT, MP, BLOCK_N), 0.0, tl.float32)
        for t in tl.static_range(NK):
            c = (g0 + gg) * NK + t  # compressed column of slot t of each group
            v = tl.load(v_ptr + c[:, None] * stride_vc + rn[None, :] * stride_vn, mask=c_mask, other=0.0)
            i = tl.load(i_ptr + c[:, None] * stride_ic + rn[None, :] * stride_in, mask=c_mask, other=0).to(tl.int32)
            hit = i[:, None, :] == rr[None, :, None]
            w3 = tl.where(hit, v.to(tl.float32)[:, None, :], w3)
        w = tl.reshape(w3, (GPT * MP, BLOCK_N))
        w = w.to(x.dtype)
        if DOT_FP32:  # interpreter: same bf16-rounded operands, multiplied in fp32
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(x, w, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    """Keep K tiles holding at least one whole (power-of-two padded) group."""
    fit = [c for c in configs if c.kwargs["BLOCK_K"] >= args["MP"]]
    if args["M"] <= 16:
        fit = [c for c in fit if c.kwargs["BLOCK_M"] == 16] or fit
    return fit or [config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=args["MP"], num_warps=4, num_stages=3)]


CONFIGS = [
    config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    config(BLOCK_M=16, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, num_warps=4, num_stages=3),
    config(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3),
]

INTERPRETER_BLOCK_K = 32

LAUNCHER = Launcher(
    _nm_kernel,
    CONFIGS,
    key=["M", "N", "K", "NK", "MK"],
    interpreter_config={"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": INTERPRETER_BLOCK_K},
    prune=_prune,
)

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def padded_group(m: int) -> int:
    """M rounded up to a power of two (Triton tiles are powers of two)."""
    return 1 << (m - 1).bit_length()


def nm_matmul(
    x: torch.Tensor,
    values_t: torch.Tensor,
    indices_t: torch.Tensor,
    n: int,
    m: int,
    k: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Launched]:
    """y = x · W^T (+ bias) with W given as `pack_nm` output, transposed: (G·n, rows) each.

    Returns y (M, rows) in x's dtype and what ran (`LAUNCHER.describe` it).
    """
    if x.dim() != 2 or x.shape[1] != k:
        raise HwsearchError(f"N:M activations have shape {tuple(x.shape)}; accepted: (M, {k})")
    if x.dtype not in _FLOAT_DTYPES or values_t.dtype != x.dtype:
        raise HwsearchError(
            f"N:M kernel got activations {x.dtype} and values {values_t.dtype}; accepted: both fp32, fp16 or bf16"
        )
    groups = -(-k // m)
    if values_t.shape[0] != groups * n or indices_t.shape != values_t.shape:
        raise HwsearchError(
            f"N:M values {tuple(values_t.shape)} / indices {tuple(indices_t.shape)} do not fit {n}:{m} with K={k}; "
            f"accepted: ({groups * n}, rows) each, from pack_nm(...)[i].t()"
        )
    rows, big_m = values_t.shape[1], x.shape[0]
    mp = padded_group(m)
    y = torch.empty(big_m, rows, dtype=x.dtype, device=x.device)
    meta_extra: dict[str, Any] = {}
    if mp > INTERPRETER_BLOCK_K:  # the interpreter's tile must hold one padded group
        meta_extra = {"BLOCK_K": mp}

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(big_m, meta["BLOCK_M"]), triton.cdiv(rows, meta["BLOCK_N"]))

    used = LAUNCHER(
        grid, x.device,
        x, values_t, indices_t, y if bias is None else bias, y,
        big_m, rows, k, groups,
        x.stride(0), x.stride(1), values_t.stride(0), values_t.stride(1), indices_t.stride(0), indices_t.stride(1),
        y.stride(0), y.stride(1),
        NK=n, MK=m, MP=mp, HAS_BIAS=bias is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", DOT_FP32=dot_in_fp32(x),
        _interpreter_overrides=meta_extra,
    )  # fmt: skip
    return y, used
