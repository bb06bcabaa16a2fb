"""Quantisers, N:M masks and low-rank factors shared by every kernel, module and reference.

One implementation of each so the profiled kernel, the compressed module and the fp64 reference
all agree on what "int4 with group 64" or "2:4" means.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

FP8_MAX = 448.0  # float8 e4m3fn
INT4_LEVELS = 15
_EPS = 1e-12


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean mask keeping the n largest-magnitude of every m consecutive weights along K.

    `weight` is (N, K); a trailing partial group (K % m) keeps its n largest too.
    """
    rows, k = weight.shape
    pad = (-k) % m
    mag = torch.nn.functional.pad(weight.detach().abs().float(), (0, pad), value=-1.0)
    groups = mag.view(rows, -1, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.view(rows, -1)[:, :k]


def apply_nm(weight: torch.Tensor, sparsity: tuple[int, int] | None) -> torch.Tensor:
    """Zero the pruned weights (a copy); dense when `sparsity` is None."""
    if sparsity is None:
        return weight
    return weight * nm_mask(weight, *sparsity)


def quantize_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row (per output channel of a weight, per token of an activation)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(_EPS) / 127.0
    q = torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 e4m3 per row with a fp32 scale mapping the row's max to 448."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(_EPS) / FP8_MAX
    q = (x.float() / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def quantize_int4_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit per group of `group_size` along K.

    Returns q (N, K) int32 in 0..15, scale and minimum (N, ceil(K/g)) fp32; w ≈ q·scale + min.
    A trailing partial group is quantised on its own values.
    """
    rows, k = weight.shape
    pad = (-k) % group_size
    w = weight.float()
    padded = torch.nn.functional.pad(w, (0, pad))
    groups = padded.view(rows, -1, group_size)
    if pad:  # the padding must not widen the last group's range
        valid = torch.nn.functional.pad(torch.ones_like(w, dtype=torch.bool), (0, pad)).view(rows, -1, group_size)
        lo = groups.masked_fill(~valid, float("inf")).amin(-1)
        hi = groups.masked_fill(~valid, float("-inf")).amax(-1)
    else:
        lo, hi = groups.amin(-1), groups.amax(-1)
    scale = ((hi - lo) / INT4_LEVELS).clamp_min(_EPS)
    q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp_(0, INT4_LEVELS)
    return q.view(rows, -1)[:, :k].to(torch.int32), scale, lo


def dequantize_int4_groups(q: torch.Tensor, scale: torch.Tensor, lo: torch.Tensor, group_size: int) -> torch.Tensor:
    rows, k = q.shape
    expand = torch.arange(k, device=q.device) // group_size
    return q.float() * scale[:, expand] + lo[:, expand]


KV_SCALE_DTYPE = torch.float16  # scales and minima of a quantised KV cache (KIVI keeps them in fp16)


def quantize_kv(x: torch.Tensor, dim: int, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric `bits`-bit quantisation along `dim` (one scale and minimum per slice across it).

    Returns q (uint8, 0..2^bits-1, x's shape), scale and minimum (fp16, size 1 along `dim`);
    x ≈ q·scale + min with the stored fp16 scale and minimum (q is rounded against those)."""
    levels = (1 << bits) - 1
    xf = x.float()
    lo = xf.amin(dim, keepdim=True).to(KV_SCALE_DTYPE)
    hi = xf.amax(dim, keepdim=True)
    scale = ((hi - lo.float()) / levels).clamp_min(1e-5).to(KV_SCALE_DTYPE)
    q = torch.round((xf - lo.float()) / scale.float()).clamp_(0, levels).to(torch.uint8)
    return q, scale, lo


def pack_int4_halves(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 (..., D) -> (..., D/2) bytes: the low nibble holds the first half of the
    last axis and the high nibble the second half (unpacking is two whole-half ops, no interleave)."""
    half = q.shape[-1] // 2
    return q[..., :half] | (q[..., half:] << 4)


def unpack_int4_halves(packed: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The inverse of `pack_int4_halves`, written into `out` (any float dtype) when given."""
    half = packed.shape[-1]
    if out is None:
        out = torch.empty(*packed.shape[:-1], 2 * half, dtype=torch.uint8, device=packed.device)
    out[..., :half].copy_(packed & 15)
    out[..., half:].copy_(packed >> 4)
    return out


# Factors already computed, by (the weight's bytes, rank): a plan is built again and again from the
# same weights (each verification round, each calibration plan) and one fp64 SVD of a ViT-B MLP
# weight takes 0.4 s on a 2-core VM, 10 s for a vit_base plan of low-rank layers
FACTOR_CACHE_BYTES = 512 << 20
_factors: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()


def _content_key(weight: torch.Tensor) -> str:
    flat = weight.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    digest = hashlib.blake2b(memoryview(flat), digest_size=16)
    digest.update(f"{tuple(weight.shape)}{weight.dtype}".encode())
    return digest.hexdigest()


def top_singular(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `rank` largest singular triplets (u (N, r), s (r,), vh (r, K)) of an fp64 `w`, from the
    eigenvectors of its smaller Gram matrix: 3x faster than a full SVD of a ViT-B MLP weight, and in
    fp64 exact to ~1e-8 relative for every singular value above 1e-4 of the largest (a truncation
    keeps the largest)."""
    n, k = w.shape
    rank = min(rank, n, k)
    lam, vecs = torch.linalg.eigh(w.T @ w if k <= n else w @ w.T)  # ascending
    lam, vecs = lam.flip(0)[:rank].clamp_min(0.0), vecs.flip(1)[:, :rank]
    s = lam.sqrt()
    inv = torch.where(s > 0, 1.0 / s.clamp_min(1e-300), torch.zeros_like(s))
    if k <= n:
        return (w @ vecs) * inv, s, vecs.T.contiguous()
    return vecs, s, (vecs.T @ w) * inv[:, None]


def low_rank_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated SVD W ≈ B A with A (rank, K), B (N, rank), singular values split evenly
    (remembered by the weight's content, `FACTOR_CACHE_BYTES` at most; copies are returned)."""
    key = (_content_key(weight), int(rank))
    if key in _factors:
        _factors.move_to_end(key)
    else:
        u, s, vh = top_singular(weight.detach().cpu().double(), rank)
        root = s.sqrt()
        _factors[key] = ((root[:, None] * vh).float(), (u * root).float())
        held = sum(a.nbytes + b.nbytes for a, b in _factors.values())
        while held > FACTOR_CACHE_BYTES and len(_factors) > 1:
            a, b = _factors.popitem(last=False)[1]
            held -= a.nbytes + b.nbytes
    a, b = _factors[key]
    return a.clone().to(weight.device), b.clone().to(weight.device)
