"""W4A16: int4 group-quantised weights × bf16/fp16 activations, dequantised inside the GEMM.

Why our own kernel: torch's packed int4 mm only takes K a multiple of the group and of 32 and N a
multiple of 8; real layers (and low-rank factors) do not always fit. This kernel takes any M, K,
N and group 32/64/128, including a trailing partial group, with exactly the asymmetric scheme of
`quant.quantize_int4_groups` (w = q·scale + min).

Storage: `pack_int4` puts two 4-bit values in a byte along K (even k in the low nibble) and stores
the bytes K-major, (ceil(K/2), N), so a tile's loads run along N (coalesced); scale and minimum
are (ceil(K/g), N) in the activation dtype. Tiles along K never straddle a group (BLOCK_K ≤ g,
both powers of two), so each tile loads one row of scales.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from hwsearch.errors import HwsearchError
from hwsearch.kernels.triton.launch import Launched, Launcher, config, dot_in_fp32


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in 0..15 → (ceil(K/2), N) uint8, even k in the low nibble."""
    if q.dim() != 2:
        raise HwsearchError(f"pack_int4 takes a 2-D (N, K) tensor, got shape {tuple(q.shape)}; accepted: (N, K)")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise HwsearchError("pack_int4 takes values in 0..15; accepted: the output of quantize_int4_groups")
    u = F.pad(q.to(torch.uint8), (0, q.shape[1] % 2))
    return (u[:, 0::2] | (u[:, 1::2] << 4)).t().contiguous()


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of `pack_int4`: (ceil(K/2), N) uint8 → (N, K) int32."""
    rows = packed.t()
    both = torch.stack([rows & 0xF, rows >> 4], dim=-1).reshape(rows.shape[0], -1)
    return both[:, :k].to(torch.int32).contiguous()


def _w4a16_kernel(
    x_ptr, q_ptr, s_ptr, z_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qk, stride_qn, stride_sg, stride_sn, stride_ym, stride_yn,
    GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        k_ok = k < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + k[None, :] * stride_xk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        byte = tl.load(
            q_ptr + (k // 2)[:, None] * stride_qk + rn[None, :] * stride_qn,
            mask=k_ok[:, None] & n_ok[None, :],
            other=0,
        ).to(tl.int32)
        q = (byte >> ((k % 2) * 4)[:, None]) & 0xF
        g = k0 // GROUP  # the whole tile lies in one group
        scale = tl.load(s_ptr + g * stride_sg + rn * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
        lo = tl.load(z_ptr + g * stride_sg + rn * stride_sn, mask=n_ok, other=0.0).to(tl.float32)
        w = q.to(tl.float32) * scale[None, :] + lo[None, :]  # rows k >= K meet x == 0
        w = w.to(x.dtype)
        if DOT_FP32:  # interpreter: same bf16-rounded operands, multiplied in fp32
            acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
        else:
            acc += tl.dot(x, w)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def _prune(configs: list[triton.Config], args: dict[str, Any]) -> list[triton.Config]:
    """Keep tiles that fit inside one quantisation group (and a narrow M tile for decode)."""
    fit = [c for c in configs if c.kwargs["BLOCK_K"] <= args["GROUP"]]
    if args["M"] <= 16:
        fit = [c for c in fit if c.kwargs["BLOCK_M"] == 16] or fit
    return fit or [configs[0]]


CONFIGS = [
    config(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    config(BLOCK_M=16, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4),
    config(BLOCK_M=16, BLOCK_N=256, BLOCK_K=128, num_warps=8, num_stages=3),
    config(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4),
    config(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3),
    config(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, num_warps=8, num_stages=3),
]

# Under the interpreter one fixed config (BLOCK_K 32 fits every group size).
INTERPRETER_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}

LAUNCHER = Launcher(_w4a16_kernel, CONFIGS, key=["M", "N", "K", "GROUP"], interpreter_config=INTERPRETER_CONFIG, prune=_prune)


def w4a16_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    lo: torch.Tensor,
    group_size: int,
    k: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Launched]:
    """y = x · dequant(packed)^T (+ bias); returns y (M, N) in x's dtype and what ran (`LAUNCHER.describe` it).

    `packed` is `pack_int4(q)`, `scale`/`lo` are (ceil(K/g), N); x is (M, K) on the same device.
    """
    if x.dim() != 2 or x.shape[1] != k:
        raise HwsearchError(f"w4a16 activations have shape {tuple(x.shape)}; accepted: (M, {k})")
    if group_size not in (32, 64, 128):
        raise HwsearchError(f"w4a16 group size {group_size}; accepted: 32, 64, 128")
    m, n = x.shape[0], packed.shape[1]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)

    def grid(meta: dict[str, Any]) -> tuple[int, int]:
        return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))

    used = LAUNCHER(
        grid, x.device,
        x, packed, scale, lo, y if bias is None else bias, y,
        m, n, k,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1), scale.stride(0), scale.stride(1),
        y.stride(0), y.stride(1),
        GROUP=group_size, HAS_BIAS=bias is not None, DOT_FP32=dot_in_fp32(x),
    )  # fmt: skip
    return y, used
