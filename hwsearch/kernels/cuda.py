"""CUDA implementations through torch's own fast paths (torch 2.13), registered as backend "cuda".

Which path is a real fast path depends on the compute capability (`caps["sm"]`), so an Orin
(sm87) or an older GPU gets exactly what it has:

| format / pattern | fast path                                        | from sm |
|------------------|--------------------------------------------------|---------|
| fp32             | cuBLAS                                           | any     |
| fp16             | cuBLAS (tensor cores from sm70)                  | 53      |
| bf16             | cuBLAS bf16                                      | 80      |
| int8 (W8A8)      | `torch._int_mm` (cuBLASLt IMMA) + scales          | 72      |
| fp8 e4m3 (W8A8)  | `torch._scaled_mm`                               | 89      |
| int4 (W4A16)     | `torch._weight_int4pack_mm` (tinygemm)           | 80      |
| 2:4 fp16/bf16/int8 | `to_sparse_semi_structured` / cuSPARSELt       | 80      |

Everything else still runs, emulated, and is reported with native = False: N:M patterns on a
dense GEMM of masked weights, fp8 dequantised to bf16, int4 dequantised to bf16. The Triton
kernels (`hwsearch.kernels.triton`) add int4 at any shape and N:M patterns other than 2:4.

Shape rules of the library kernels are met by zero-padding where that is exact (int8: M > 16, K
and N multiples of 8; fp8: K and N multiples of 16); the padding copy of the activation is part
of what is timed, because it is what the device does for that shape. Where padding would not be
exact or cheap (int4 pack: K a multiple of the group and of 32, N of 8; 2:4: the library's
minimum tile), `supports` says no and another implementation serves the spec.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hwsearch.kernels import cpu
from hwsearch.kernels.inputs import TORCH_DTYPES
from hwsearch.kernels.quant import (
    apply_nm,
    quantize_fp8_rows,
    quantize_int4_groups,
    quantize_int8_rows,
)
from hwsearch.kernels.registry import Backend, Kernel, State, capabilities, register, register_backend
from hwsearch.kernels.specs import AttentionSpec, LinearSpec, OpSpec

# Minimum compute capability of each fast path (see the table above).
FLOAT_SM = {"fp32": 0, "fp16": 53, "bf16": 80}
INT8_MM_SM = 72
FP8_MM_SM = 89
FP8_ROWWISE_SM = 90  # _scaled_mm fuses per-row scales from Hopper; sm89 applies them after
INT4_PACK_SM = 80
SPARSE24_SM = 80


def device_sm() -> int:
    """Compute capability of this process's CUDA device as 10·major + minor; 0 without one."""
    caps = capabilities("cuda")
    return int(caps.get("sm", 0)) if caps.get("available") else 0


def _sm(caps: dict[str, Any]) -> int:
    return int(caps.get("sm", 0)) if caps.get("available") else 0


def native_paths(sm: int) -> dict[str, bool]:
    """Which formats and 2:4 run on a library fast path at compute capability `sm` (data for spaces)."""
    return {
        **{fmt: sm >= need for fmt, need in FLOAT_SM.items()},
        "int8": sm >= INT8_MM_SM,
        "fp8": sm >= FP8_MM_SM,
        "int4": sm >= INT4_PACK_SM,
        "2:4": sm >= SPARSE24_SM,
    }


def capabilities_at(sm: int) -> dict[str, Any]:
    """The capability dict of a GPU of compute capability `sm`: its fast paths flagged as spaces
    read them (`nm`: 2:4 on sparse tensor cores), for this process's GPU or a stored fingerprint's."""
    paths = native_paths(sm)
    return {"available": True, "sm": sm, **paths, "nm": paths["2:4"]}


def cuda_capabilities() -> dict[str, Any]:
    """This process's CUDA device: its compute capability (10·major + minor), name and fast paths."""
    if not torch.cuda.is_available():
        return {"available": False}
    major, minor = torch.cuda.get_device_capability()
    return {**capabilities_at(major * 10 + minor), "name": torch.cuda.get_device_name()}


register_backend(Backend("cuda", cuda_capabilities, "cuda", missing="torch sees no CUDA device here"))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor at the bottom/right (no copy when already that shape)."""
    pad_r, pad_c = rows - t.shape[0], cols - t.shape[1]
    return t if pad_r == 0 and pad_c == 0 else F.pad(t, (0, pad_c, 0, pad_r))


def cusparselt_available() -> bool:
    backend = getattr(torch.backends, "cusparselt", None)
    return bool(backend is not None and backend.is_available())


class CudaKernel(Kernel):
    """A CUDA implementation: runnable with a device of at least `min_sm`."""

    backend = "cuda"
    min_sm: ClassVar[int] = 0  # below this the library kernel does not run at all

    def available(self) -> bool:
        return torch.cuda.is_available() and device_sm() >= self.min_sm

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        """How the library call is set up for `spec` (padding, tiling), stored with a measurement."""
        return {}


class CudaLinear(CudaKernel):
    op = "linear"
    formats: ClassVar[tuple[str, ...]] = ()

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, LinearSpec) and spec.rank is None and spec.format in self.formats


@register
class DenseFloat(CudaLinear, cpu.DenseFloat):
    """fp32/bf16/fp16 cuBLAS GEMM; N:M patterns as a dense GEMM of masked weights (emulated)."""

    name = "cuda.linear.dense"
    formats = cpu.DenseFloat.formats

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.nm is None and bool(caps.get("available")) and _sm(caps) >= FLOAT_SM[spec.format]  # type: ignore[attr-defined]


def _int_mm_rows(m: int) -> int:
    """Rows `torch._int_mm` is called with: it needs more than 16."""
    return m if m > 16 else 24


@register
class Int8IntMM(CudaLinear):
    """W8A8 through `torch._int_mm`: per-token int8 activations × per-channel int8 weights.

    cuBLASLt's int8 GEMM needs M > 16 and K, N multiples of 8: weights are zero-padded once in
    `prepare`; activations are padded per call (decode-size M is padded to 24 rows), and that
    copy is part of the measured time.
    """

    name = "cuda.linear.int8_int_mm"
    formats = ("int8",)
    priority = 1
    min_sm = INT8_MM_SM

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.nm is None and _sm(caps) >= INT8_MM_SM  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale = quantize_int8_rows(apply_nm(params["weight"], spec.nm))
        n_pad, k_pad = _round_up(spec.N, 8), _round_up(spec.K, 8)
        # (N, K) row-major, used as its transpose: the column-major B operand cuBLASLt wants.
        state = {"weight": _pad_to(q, n_pad, k_pad).contiguous(), "scale": scale.reshape(1, -1).contiguous()}
        return cpu.cast_bias(state, params, torch.float32)

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        return {"M": _int_mm_rows(spec.M), "K": _round_up(spec.K, 8), "N": _round_up(spec.N, 8)}  # type: ignore[attr-defined]

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        xq, xs = quantize_int8_rows(x)
        weight = state["weight"]
        m_pad = _int_mm_rows(spec.M)
        acc = torch._int_mm(_pad_to(xq, m_pad, weight.shape[1]), weight.t())
        y = acc[: spec.M, : spec.N].float() * xs * state["scale"]
        return cpu.add_bias(y, state).to(x.dtype)


@register
class Int8Dequant(CudaLinear, cpu.DequantW8A8):
    """W8A8 emulated for GPUs without int8 tensor cores: int8 weights dequantised per call."""

    name = "cuda.linear.int8_dequant"
    formats = ("int8",)
    quantize = staticmethod(quantize_int8_rows)


def fp8_rowwise(sm: int) -> bool:
    """Whether `_scaled_mm` takes the per-row scales itself on this GPU (else they follow it)."""
    return sm >= FP8_ROWWISE_SM


@register
class Fp8ScaledMM(CudaLinear):
    """FP8 e4m3 W8A8 through `torch._scaled_mm` (Ada sm89 and newer).

    Hopper and newer fuse the per-token and per-channel scales (row-wise scaling, bf16 out); on
    sm89 the GEMM runs unscaled with fp32 output and the scales are applied after it. K and N are
    zero-padded to multiples of 16.
    """

    name = "cuda.linear.fp8_scaled_mm"
    formats = ("fp8",)
    priority = 1
    min_sm = FP8_MM_SM

    def available(self) -> bool:
        return hasattr(torch, "float8_e4m3fn") and super().available()

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.nm is None and _sm(caps) >= FP8_MM_SM  # type: ignore[attr-defined]

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        scaling = "rowwise" if fp8_rowwise(device_sm()) else "unscaled+epilogue"
        return {"K": _round_up(spec.K, 16), "N": _round_up(spec.N, 16), "scaling": scaling}  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        n_pad, k_pad = _round_up(spec.N, 16), _round_up(spec.K, 16)
        weight = _pad_to(apply_nm(params["weight"], spec.nm).float(), n_pad, k_pad)
        q, scale = quantize_fp8_rows(weight)  # zero rows/columns stay zero
        state = {
            "weight": q.contiguous(),
            "scale": scale.reshape(1, -1).contiguous(),
            "one": torch.ones((), dtype=torch.float32, device=q.device),
        }
        return cpu.cast_bias(state, params, torch.float32)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        weight = state["weight"]
        xq, xs = quantize_fp8_rows(_pad_to(x, x.shape[0], weight.shape[1]))
        if fp8_rowwise(device_sm()):
            y = torch._scaled_mm(
                xq, weight.t(), scale_a=xs.contiguous(), scale_b=state["scale"], out_dtype=torch.bfloat16
            )
            y = y[:, : spec.N].float()
        else:
            one = state["one"]
            y = torch._scaled_mm(xq, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
            y = y[:, : spec.N] * xs * state["scale"][:, : spec.N]
        return cpu.add_bias(y, state).to(x.dtype)


@register
class Fp8Emulated(CudaLinear, cpu.Fp8Emulated):
    """FP8 e4m3 W8A8 emulated: fp8 weights stored, dequantised to bf16 on every call (pre-Ada)."""

    name = "cuda.linear.fp8_emulated"
    formats = cpu.Fp8Emulated.formats


def int4pack_inner_k_tiles(k: int) -> int | None:
    """The largest inner-K tiling (8, 4 or 2 tiles of 16) dividing K; None if none does."""
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    return None


def pack_int4_for_cuda(q: torch.Tensor) -> torch.Tensor:
    """(N, K) int 0..15 → (N, K/2) uint8 as `_convert_weight_to_int4pack` takes it on CUDA:
    the even k in the high nibble (the CPU kernel takes int32 instead)."""
    return ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()


@register
class Int4Packed(CudaLinear):
    """W4A16 through torch's tinygemm kernel (`_weight_int4pack_mm`, bf16 activations, sm80+).

    Layout: weights packed by `_convert_weight_to_int4pack` into tensor-core tiles; scales and
    zeros (K/g, N, 2) bf16 with w = (q − 8)·scale + zero, the same convention as the CPU kernel.
    """

    name = "cuda.linear.int4_pack"
    formats = ("int4",)
    priority = 1
    min_sm = INT4_PACK_SM

    def supports(self, spec: OpSpec) -> bool:
        return (
            super().supports(spec)
            and spec.K % spec.group_size == 0  # type: ignore[attr-defined]
            and int4pack_inner_k_tiles(spec.K) is not None  # type: ignore[attr-defined]
            and spec.N % 8 == 0  # type: ignore[attr-defined]
        )

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.nm is None and _sm(caps) >= INT4_PACK_SM  # type: ignore[attr-defined]

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        return {"inner_k_tiles": int4pack_inner_k_tiles(spec.K)}  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale, lo = quantize_int4_groups(apply_nm(params["weight"], spec.nm), spec.group_size)
        tiles = int4pack_inner_k_tiles(spec.K)
        state = {
            "packed": torch._convert_weight_to_int4pack(pack_int4_for_cuda(q), tiles),
            "scales_zeros": cpu.int4_scales_and_zeros(scale, lo),
        }
        return cpu.cast_bias(state, params, torch.bfloat16)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int4pack_mm(x.contiguous(), state["packed"], spec.group_size, state["scales_zeros"])
        return cpu.add_bias(y, state)


@register
class Int4Dequant(CudaLinear, cpu.Int4Dequant):
    """Int4 stored, dequantised to bf16 per call: the emulated fallback for any shape and device."""

    name = "cuda.linear.int4_dequant"
    formats = cpu.Int4Dequant.formats
    per_call = True


# cuSPARSELt's and CUTLASS's minimum sparse-operand tile (rows = N, cols = K), from
# torch.sparse.semi_structured in torch 2.13.
SPARSE24_TILE = {
    ("cusparselt", "fp16"): (16, 16),
    ("cusparselt", "bf16"): (16, 16),
    ("cusparselt", "int8"): (32, 32),
    ("cutlass", "fp16"): (32, 64),
    ("cutlass", "bf16"): (32, 64),
}
SPARSE24_DENSE_ROWS_INT8 = 16  # cuSPARSELt's int8 dense-operand minimum (M is padded to it)


@register
class SemiStructured24(CudaLinear):
    """2:4 sparse GEMM on sparse tensor cores (sm80+): cuSPARSELt, or CUTLASS where it is missing.

    fp16/bf16 go through `to_sparse_semi_structured` and `F.linear`; int8 W8A8 calls
    cuSPARSELt directly (int8 × int8 accumulated in int32, bf16 out) and applies the scales.
    """

    name = "cuda.linear.sparse24"
    formats = ("fp16", "bf16", "int8")
    priority = 2
    min_sm = SPARSE24_SM

    def _tile(self, fmt: str) -> tuple[int, int] | None:
        return SPARSE24_TILE.get(("cusparselt" if cusparselt_available() else "cutlass", fmt))

    def supports(self, spec: OpSpec) -> bool:
        if not (super().supports(spec) and spec.sparsity == "2:4"):  # type: ignore[attr-defined]
            return False
        tile = self._tile(spec.format)  # type: ignore[attr-defined]
        return tile is not None and spec.N % tile[0] == 0 and spec.K % tile[1] == 0  # type: ignore[attr-defined]

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return _sm(caps) >= SPARSE24_SM

    def describe_config(self, spec: OpSpec) -> dict[str, Any]:
        return {"library": "cusparselt" if cusparselt_available() else "cutlass"}

    def prepare(self, spec: LinearSpec, params: State) -> State:
        from torch.sparse import SparseSemiStructuredTensorCUTLASS, to_sparse_semi_structured

        pruned = apply_nm(params["weight"], (2, 4))
        if spec.format == "int8":
            q, scale = quantize_int8_rows(pruned)  # rounding keeps zeros zero: still 2:4
            state = {"packed": torch._cslt_compress(q.contiguous()), "scale": scale.reshape(1, -1).contiguous()}
            return cpu.cast_bias(state, params, torch.float32)
        weight = pruned.to(TORCH_DTYPES[spec.format]).contiguous()
        sparse = (
            to_sparse_semi_structured(weight)
            if cusparselt_available()
            else SparseSemiStructuredTensorCUTLASS.from_dense(weight)
        )
        return cpu.cast_bias({"weight": sparse}, params, weight.dtype)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        if spec.format != "int8":
            return F.linear(x, state["weight"], state.get("bias"))
        xq, xs = quantize_int8_rows(x)
        m_pad = _round_up(spec.M, SPARSE24_DENSE_ROWS_INT8)
        # (N, K) sparse × (K, M) column-major dense → (N, M)
        acc = torch._cslt_sparse_mm(state["packed"], _pad_to(xq, m_pad, spec.K).t(), out_dtype=torch.bfloat16)
        y = acc[:, : spec.M].t().float() * xs * state["scale"]
        return cpu.add_bias(y, state).to(x.dtype)


# --- the other ops: torch's CUDA kernels ------------------------------------------------------


class CudaFloatOp(CudaKernel):
    """Non-GEMM ops in fp32/bf16/fp16: native where the GPU has the dtype."""

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return bool(caps.get("available")) and _sm(caps) >= FLOAT_SM[spec.dtype]  # type: ignore[attr-defined]


@register
class Sdpa(CudaFloatOp, cpu.Sdpa):
    """`scaled_dot_product_attention` (flash / memory-efficient kernels where they apply)."""

    name = "cuda.attention.sdpa"

    def prepare(self, spec: AttentionSpec, params: State) -> State:
        return {k: v.cuda() for k, v in super().prepare(spec, params).items()}


class CudaCacheAttention(CudaFloatOp):
    """Attention over a KV cache in another format with torch's CUDA ops (the cache's tensors on
    the GPU). No fused kernel reads the codes here: every format is marked emulated."""

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return False

    def prepare(self, spec: AttentionSpec, params: State) -> State:
        return {k: v.cuda() for k, v in super().prepare(spec, {k: v.cuda() for k, v in params.items()}).items()}  # type: ignore[misc]


@register
class CacheAttentionChunked(CudaCacheAttention, cpu.CacheAttentionFused):
    """The cache's own `attend` (scales folded, codes widened chunk by chunk) on the GPU."""

    name = "cuda.attention.kv_cache"


@register
class CacheAttentionDequant(CudaCacheAttention, cpu.CacheAttentionDequant):
    """The cache dequantised whole every step, then SDPA, on the GPU."""

    name = "cuda.attention.kv_dequant"


@register
class TomeMerge(CudaFloatOp, cpu.TomeMerge):
    name = "cuda.tome_merge.torch"


@register
class Norm(CudaFloatOp, cpu.Norm):
    name = "cuda.norm.torch"


@register
class Elementwise(CudaFloatOp, cpu.Elementwise):
    name = "cuda.elementwise.torch"
