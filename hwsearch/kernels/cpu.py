"""CPU implementations, using torch's real fast paths where they exist (torch 2.13).

Fast paths: int8 W8A8 through `torch._int_mm`, fbgemm's or oneDNN's `linear_dynamic`; int4
weight-only through `_weight_int4pack_mm_for_cpu`; bf16/fp16 where the ISA has them. FP8 and N:M
have no CPU fast path: they are emulated (quantise/dequantise, masked dense GEMM), which is what
a CPU really does with such a model, and reported with native = False.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hwsearch.kernels.inputs import TORCH_DTYPES, rope
from hwsearch.kernels.kvcache import KVCache, cache_class, causal_mask, make_cache
from hwsearch.kernels.quant import (
    apply_nm,
    dequantize_int4_groups,
    quantize_fp8_rows,
    quantize_int4_groups,
    quantize_int8_rows,
)
from hwsearch.kernels.registry import Backend, Kernel, State, register, register_backend
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.kernels.tome import bipartite_merge
from hwsearch.spaces.formats import KV_QUANT_FORMATS
from hwsearch.spaces.plan import KVCacheChoice

NORM_EPS = 1e-6


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
FP16_FLAGS = frozenset({"avx512_fp16", "amx_fp16"})
ARM_FP16_FLAG = "fphp"
ARM_MACHINES = ("aarch64", "arm64")
# The flags the capabilities read: a device fingerprint records them, so a CPU read from its
# stored fingerprint (another host) gets the capabilities it gets on its own host.
CAPABILITY_FLAGS: tuple[str, ...] = tuple(sorted(BF16_FLAGS | FP16_FLAGS | {ARM_FP16_FLAG}))


def capabilities_from_flags(flags: Iterable[str], machine: str) -> dict[str, bool]:
    """Which formats a CPU with these /proc/cpuinfo flags and this machine type runs on a real
    fast path (the one rule, for this host and for a stored fingerprint alike)."""
    flags = frozenset(flags)
    arm = machine.lower() in ARM_MACHINES
    return {
        "available": True,
        "fp32": True,
        "bf16": bool(BF16_FLAGS & flags),
        "fp16": bool(FP16_FLAGS & flags) or (arm and ARM_FP16_FLAG in flags),
        "int8": True,  # oneDNN/fbgemm integer GEMM (VNNI where present, AVX2/NEON otherwise)
        "int4": True,  # torch's packed int4 CPU kernel
        "fp8": False,
        "nm": False,
    }


@functools.cache
def int8_reduce_range() -> bool:
    """Whether dynamic int8 activations must keep to 7 bits on this CPU: without VNNI, x86 int8
    GEMMs sum u8 x s8 pairs into int16 (`vpmaddubsw`), which saturates on full-range activations
    (a ViT MLP layer came out 11 % off its fp32 output on an AVX2-only EPYC, 2 % with 7 bits).
    torch's own x86 qconfigs reduce the range for the same reason."""
    return platform.machine().lower() not in ARM_MACHINES and not (VNNI_FLAGS & cpu_flags())


def cpu_capabilities() -> dict[str, Any]:
    """Which formats this CPU runs on a real fast path (and its ISA level, as torch sees it)."""
    caps: dict[str, Any] = capabilities_from_flags(cpu_flags(), platform.machine())
    return {"available": caps.pop("available"), "isa": torch.backends.cpu.get_cpu_capability(), **caps}


register_backend(Backend("cpu", cpu_capabilities, "cpu"))


def cast_bias(state: State, params: State, dtype: torch.dtype) -> State:
    """A linear's prepared state with the bias (if any) in `dtype`."""
    if params.get("bias") is not None:
        state["bias"] = params["bias"].to(dtype)
    return state


def add_bias(y: torch.Tensor, state: State) -> torch.Tensor:
    bias = state.get("bias")
    return y if bias is None else y + bias


class CpuLinear(Kernel):
    op = "linear"
    backend = "cpu"
    formats: tuple[str, ...] = ()

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, LinearSpec) and spec.rank is None and spec.format in self.formats

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.nm is None and bool(caps.get(spec.format))  # type: ignore[attr-defined]


@register
class DenseFloat(CpuLinear):
    """fp32/bf16/fp16 GEMM; N:M patterns run as a dense GEMM on masked weights (emulated)."""

    name = "cpu.linear.dense"
    formats = ("fp32", "bf16", "fp16")

    def prepare(self, spec: LinearSpec, params: State) -> State:
        dtype = TORCH_DTYPES[spec.format]
        state = {"weight": apply_nm(params["weight"], spec.nm).to(dtype).contiguous()}
        return cast_bias(state, params, dtype)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, state["weight"], state.get("bias"))


@register
class Int8IntMM(CpuLinear):
    """W8A8: per-token dynamic int8 activations × per-channel int8 weights, int32 accumulate."""

    name = "cpu.linear.int8_int_mm"
    formats = ("int8",)
    # last among int8 kernels until measured otherwise: torch's CPU `_int_mm` ran the ViT-B MLP GEMM
    # at 0.53x bf16 on an AMX Xeon and 0.54-0.59x on an EPYC, slower than fbgemm and oneDNN on both
    priority = 0

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale = quantize_int8_rows(apply_nm(params["weight"], spec.nm))
        state = {"weight_t": q.t().contiguous(), "scale": scale.reshape(1, -1).contiguous()}
        return cast_bias(state, params, torch.float32)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        xq, xs = quantize_int8_rows(x)
        acc = torch._int_mm(xq, state["weight_t"])
        return add_bias(acc.float() * xs * state["scale"], state).to(x.dtype)


@register
class Int8Fbgemm(CpuLinear):
    """W8A8 through fbgemm's dynamic quantised linear (per-tensor activation scale)."""

    name = "cpu.linear.int8_fbgemm"
    formats = ("int8",)
    priority = 1

    def available(self) -> bool:
        return "fbgemm" in torch.backends.quantized.supported_engines or "x86" in torch.backends.quantized.supported_engines

    def prepare(self, spec: LinearSpec, params: State) -> State:
        w = apply_nm(params["weight"], spec.nm).float()
        scale = (w.abs().amax(dim=1).clamp_min(1e-12) / 127.0).double()
        with warnings.catch_warnings():  # torch 2.13 marks quantised tensor creation deprecated; fbgemm needs it
            warnings.simplefilter("ignore", UserWarning)
            wq = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        bias = params.get("bias")
        packed = torch.ops.quantized.linear_prepack(wq, None if bias is None else bias.float())
        return {"packed": packed}  # type: ignore[dict-item]

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), state["packed"], int8_reduce_range()).to(x.dtype)


@contextlib.contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """torch's quantised engine set to `name` for a block (weights packed there keep their engine)."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@register
class Int8Onednn(Int8Fbgemm):
    """W8A8 through oneDNN's dynamic quantised linear: AMX int8 tiles where the CPU has them (an
    AMX Xeon ran the ViT-B MLP GEMM 2.7x faster than fbgemm's), VNNI otherwise. The packed
    weight carries its engine, so only packing switches torch's quantised engine."""

    name = "cpu.linear.int8_onednn"
    priority = 2  # the registry's guess before a device is measured (`kernels.dispatch` then decides)

    def available(self) -> bool:
        return "onednn" in torch.backends.quantized.supported_engines

    def prepare(self, spec: LinearSpec, params: State) -> State:
        with quantized_engine("onednn"):
            return super().prepare(spec, params)


def int4_scales_and_zeros(scale: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """torch's int4pack layout (K/g, N, 2): w = (q - 8)·scale + zero, so zero = min + 8·scale."""
    return torch.stack([scale.t(), (lo + 8 * scale).t()], dim=-1).to(torch.bfloat16).contiguous()


@register
class Int4Packed(CpuLinear):
    """W4A16 through torch's packed int4 CPU GEMM (bf16 activations)."""

    name = "cpu.linear.int4_pack"
    formats = ("int4",)
    priority = 1

    def supports(self, spec: OpSpec) -> bool:
        # The packing routine needs N % 16 == 0 and whole groups along K.
        return super().supports(spec) and spec.K % spec.group_size == 0 and spec.N % 16 == 0  # type: ignore[attr-defined]

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale, lo = quantize_int4_groups(apply_nm(params["weight"], spec.nm), spec.group_size)
        state = {
            "packed": torch._convert_weight_to_int4pack_for_cpu(q, 1),
            "scales_zeros": int4_scales_and_zeros(scale, lo),
        }
        return cast_bias(state, params, torch.bfloat16)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int4pack_mm_for_cpu(x, state["packed"], spec.group_size, state["scales_zeros"])
        return add_bias(y, state)


@register
class Int4Dequant(CpuLinear):
    """Int4 weights dequantised to bf16 for a float GEMM: the emulated fallback (on a CPU, the
    shapes the packed kernel cannot take, e.g. K not a multiple of the group).

    `per_call`: the int4 values stay in memory and are dequantised on every call (what a device
    running an int4 checkpoint without a kernel does); otherwise once, in `prepare`, to a bf16 copy.
    """

    name = "cpu.linear.int4_dequant"
    formats = ("int4",)
    per_call: ClassVar[bool] = False

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return False

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale, lo = quantize_int4_groups(apply_nm(params["weight"], spec.nm), spec.group_size)
        if self.per_call:
            state = {"q": q.to(torch.uint8), "scale": scale, "lo": lo}
        else:
            state = {"weight": dequantize_int4_groups(q, scale, lo, spec.group_size).to(torch.bfloat16)}
        return cast_bias(state, params, torch.bfloat16)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        if self.per_call:
            weight = dequantize_int4_groups(state["q"], state["scale"], state["lo"], spec.group_size).to(torch.bfloat16)
        else:
            weight = state["weight"]
        return F.linear(x, weight, state.get("bias"))


class DequantW8A8(CpuLinear):
    """W8A8 emulated: 8-bit weights stored, activations quantised per token, and both dequantised
    to the activation dtype for a float GEMM on every call (what a device without the fast path
    really does with such a checkpoint)."""

    quantize = staticmethod(quantize_fp8_rows)

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return False

    def prepare(self, spec: LinearSpec, params: State) -> State:
        q, scale = self.quantize(apply_nm(params["weight"], spec.nm))
        state = {"weight": q, "scale": scale.reshape(1, -1).contiguous()}
        return cast_bias(state, params, torch.float32)

    def run(self, spec: LinearSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        xq, xs = self.quantize(x)
        y = F.linear(xq.to(x.dtype), state["weight"].to(x.dtype)).float()
        return add_bias(y * xs * state["scale"], state).to(x.dtype)


@register
class Fp8Emulated(DequantW8A8):
    """FP8 e4m3 W8A8 emulated: fp8 weights stored, dequantised to bf16 on every call."""

    name = "cpu.linear.fp8_emulated"
    formats = ("fp8",)


class CpuFloatOp(Kernel):
    """Non-GEMM ops in fp32/bf16/fp16: native where the ISA has the dtype."""

    backend = "cpu"

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return bool(caps.get(spec.dtype))  # type: ignore[attr-defined]


@register
class Sdpa(CpuFloatOp):
    name = "cpu.attention.sdpa"
    op = "attention"

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, AttentionSpec) and spec.kv_format is None

    def prepare(self, spec: AttentionSpec, params: State) -> State:
        if not spec.causal:
            return {}
        # bottom-right aligned (decode attends to the whole cache)
        return {"mask": torch.ones(spec.tokens, spec.kv_len, dtype=torch.bool).tril(spec.cached)}

    def run(self, spec: AttentionSpec, state: State, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        past = spec.cached
        if past:  # a step over a cache: its keys and values join the cache first, by a copy as in `KVCache.append`
            k, v = torch.cat([k[:, :past], k[:, past:]], 1), torch.cat([v[:, :past], v[:, past:]], 1)
            state.update({GROWN + "k": k, GROWN + "v": v})  # see `GROWN`
        # with a batch axis: torch 2.13 runs (heads, tokens, head_dim) inputs on its slow math path
        # on a CPU (decode over a 2048-token bf16 cache: 95 ms 3-D, 1.0 ms 4-D on one Xeon core)
        gqa = (spec.kv_heads or spec.heads) != spec.heads
        return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=state.get("mask"), enable_gqa=gqa)[0]


# A step's grown cache is kept in the state of the copy that made it, until that copy's next call:
# in a model every block's grown cache stays alive while the other blocks run, so each step writes
# the cache's bytes to memory that is cold; freed at once, the next call would write the same
# still-cached block (at 8,192 cached tokens that hid a third of the fp32 cache's cost per step).
GROWN = "grown."


def kv_choice(spec: AttentionSpec) -> KVCacheChoice:
    return KVCacheChoice(format=spec.kv_format, group_size=spec.kv_group)


class CacheAttention(CpuFloatOp):
    """Attention over a KV cache stored in the spec's `kv_format`, as a decoder step runs it:
    `prepare` fills the cache with the spec's `cached` earlier tokens (quantising them: untimed,
    like a weight), `run` appends the step's own `tokens` keys and values (quantising them, and
    growing the cache by a copy of its bytes) and attends over the whole. The append is timed
    because it is part of every step and its cost is the cache's bytes: at long contexts it
    costs as much as the attention itself."""

    op = "attention"
    NEW = ("new.k", "new.v")  # the step's keys and values in the prepared state

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, AttentionSpec) and spec.kv_format is not None

    def prepare(self, spec: AttentionSpec, params: State) -> State:
        dtype = TORCH_DTYPES[spec.dtype]
        past = spec.cached
        k, v = params["k"][None].to(dtype), params["v"][None].to(dtype)
        cache = make_cache(kv_choice(spec), dtype)
        if past:
            cache.append(k[:, :, :past], v[:, :, :past])
        return {**cache.tensors(), **dict(zip(self.NEW, (k[:, :, past:].contiguous(), v[:, :, past:].contiguous()), strict=True))}

    def cache(self, spec: AttentionSpec, state: State) -> KVCache:
        """The filled cache (its stored tensors are not changed: an append builds new ones) with
        the step's tokens appended."""
        cache = cache_class(kv_choice(spec)).from_tensors(kv_choice(spec), TORCH_DTYPES[spec.dtype], state)
        cache.append(*(state[name] for name in self.NEW))
        state.update({GROWN + name: t for name, t in cache.tensors().items()})  # see `GROWN`
        return cache


@register
class CacheAttentionFused(CacheAttention):
    """The cache's own `attend`: on an int8/int4 cache it reads only the codes and scales (scales
    folded into q and the attention weights, codes widened a cache-sized chunk at a time), so it
    is native there; a float cache in a dtype other than the compute dtype is cast whole per call
    (emulated)."""

    name = "cpu.attention.kv_cache"
    priority = 1

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return spec.kv_format in KV_QUANT_FORMATS and bool(caps.get(spec.dtype))  # type: ignore[attr-defined]

    def run(self, spec: AttentionSpec, state: State, q: torch.Tensor) -> torch.Tensor:
        return self.cache(spec, state).attend(q[None], spec.causal)[0]


@register
class CacheAttentionDequant(CacheAttention):
    """An int8/int4 cache dequantised whole to the compute dtype every step, then SDPA: emulated
    (it streams a full-precision copy), the baseline the fused path is compared with."""

    name = "cpu.attention.kv_dequant"

    def supports(self, spec: OpSpec) -> bool:
        return super().supports(spec) and spec.kv_format in KV_QUANT_FORMATS  # type: ignore[attr-defined]

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return False

    def run(self, spec: AttentionSpec, state: State, q: torch.Tensor) -> torch.Tensor:
        cache = self.cache(spec, state)
        keys, values = cache.keys(), cache.values()
        mask = causal_mask(spec.tokens, spec.kv_len, device=q.device) if spec.causal else None
        return F.scaled_dot_product_attention(q[None], keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != q.shape[0])[0]


@register
class TomeMerge(CpuFloatOp):
    name = "cpu.tome_merge.torch"
    op = "tome_merge"

    def run(self, spec: TomeMergeSpec, state: State, x: torch.Tensor, metric: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return bipartite_merge(x, metric, size, spec.r)[0]


@register
class Norm(CpuFloatOp):
    name = "cpu.norm.torch"
    op = "norm"

    def prepare(self, spec: NormSpec, params: State) -> State:
        dtype = TORCH_DTYPES[spec.dtype]
        return {k: v.to(dtype) for k, v in params.items()}

    def run(self, spec: NormSpec, state: State, x: torch.Tensor) -> torch.Tensor:
        if spec.kind == "layernorm":
            return F.layer_norm(x, (spec.dim,), state["weight"], state.get("bias"), eps=NORM_EPS)
        return F.rms_norm(x, (spec.dim,), state["weight"], eps=NORM_EPS)


@register
class Elementwise(CpuFloatOp):
    name = "cpu.elementwise.torch"
    op = "elementwise"

    def run(self, spec: ElementwiseSpec, state: State, *acts: torch.Tensor) -> torch.Tensor:
        if spec.kind == "gelu":
            return F.gelu(acts[0])
        if spec.kind == "silu_mul":
            return F.silu(acts[0]) * acts[1]
        if spec.kind == "add":
            return acts[0] + acts[1]
        return rope(*acts)
