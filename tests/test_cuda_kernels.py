"""The CUDA implementations: capability rules everywhere, correctness on a GPU.

Three parts:
- which paths are native at which compute capability (pure logic, runs on any machine);
- the host-side logic of the CUDA kernels (padding, scale layout, fallbacks) run on CPU tensors
  where the same torch op exists on CPU (`_int_mm`, `_scaled_mm`), against the fp64 reference;
- every CUDA implementation on a real GPU against the fp64 reference — skipped without one.
"""

from __future__ import annotations

import pytest
import torch

from hwsearch.kernels import cuda, registry
from hwsearch.kernels.inputs import TOLERANCE, make_inputs, reference
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.spaces.formats import FORMATS

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = "no CUDA device: torch's CUDA kernels (cuBLAS, _int_mm, _scaled_mm, int4pack, cuSPARSELt) need one"

ORIN, T4, A100, L4, H100, P100 = 87, 75, 80, 89, 90, 60


def caps(sm: int) -> dict:
    return {"available": True, "sm": sm, "name": f"sm{sm}"}


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double().cpu() - expected.cpu()).norm() / expected.cpu().norm()).item()


def _tolerance(spec: OpSpec) -> float:
    return TOLERANCE[spec.format] if isinstance(spec, LinearSpec) else TOLERANCE[spec.dtype]  # type: ignore[attr-defined]


def _check(kernel: registry.Kernel, spec: OpSpec, device: str) -> None:
    params, acts = make_inputs(spec, seed=5, device=device)
    expected = reference(spec, params, acts)
    got = registry.build(kernel, spec, params, acts)()
    assert got.shape == expected.shape
    assert got.dtype == acts[0].dtype
    err = _rel_err(got, expected)
    assert err <= _tolerance(spec), f"{kernel.name} on {spec.describe()}: relative error {err:.3g}"


# --- capabilities ---------------------------------------------------------------------------


def test_native_paths_by_compute_capability():
    orin = cuda.native_paths(ORIN)
    assert orin == {"fp32": True, "fp16": True, "bf16": True, "int8": True, "fp8": False, "int4": True, "2:4": True}
    assert cuda.native_paths(T4) == {**orin, "bf16": False, "int4": False, "2:4": False}
    assert cuda.native_paths(L4)["fp8"] and cuda.native_paths(H100)["fp8"]
    assert cuda.native_paths(P100) == {**orin, "bf16": False, "int8": False, "int4": False, "2:4": False}


NATIVE_CASES = [
    # (kernel, spec, sms where native, sms where not)
    ("cuda.linear.dense", LinearSpec(8, 256, 64, "bf16"), [A100, ORIN], [T4]),
    ("cuda.linear.dense", LinearSpec(8, 256, 64, "fp16"), [T4, ORIN], []),
    ("cuda.linear.dense", LinearSpec(8, 256, 64, "fp16", sparsity="1:4"), [], [ORIN, H100]),
    ("cuda.linear.int8_int_mm", LinearSpec(8, 256, 64, "int8"), [T4, ORIN], [P100]),
    ("cuda.linear.int8_int_mm", LinearSpec(8, 256, 64, "int8", sparsity="4:8"), [], [ORIN]),
    ("cuda.linear.int8_dequant", LinearSpec(8, 256, 64, "int8"), [], [P100, H100]),
    ("cuda.linear.fp8_scaled_mm", LinearSpec(8, 256, 64, "fp8"), [L4, H100], [ORIN, A100]),
    ("cuda.linear.fp8_emulated", LinearSpec(8, 256, 64, "fp8"), [], [ORIN, H100]),
    ("cuda.linear.int4_pack", LinearSpec(8, 256, 64, "int4"), [A100, ORIN], [T4]),
    ("cuda.linear.int4_dequant", LinearSpec(8, 100, 64, "int4", group_size=64), [], [ORIN]),
    ("cuda.linear.sparse24", LinearSpec(8, 256, 64, "bf16", sparsity="2:4"), [A100, ORIN], [T4]),
    ("cuda.attention.sdpa", AttentionSpec(8, 4, 64, "bf16"), [A100], [T4]),
    ("cuda.norm.torch", NormSpec("rmsnorm", 8, 64, "fp16"), [T4], []),
]


@pytest.mark.parametrize(("name", "spec", "native", "emulated"), NATIVE_CASES, ids=[c[0] for c in NATIVE_CASES])
def test_native_flags_follow_compute_capability(name, spec, native, emulated):
    kernel = registry.get(name)
    assert kernel.supports(spec)
    for sm in native:
        assert kernel.native(spec, caps(sm)), f"{name} should be native at sm{sm}"
    for sm in emulated:
        assert not kernel.native(spec, caps(sm)), f"{name} should be emulated at sm{sm}"
    assert not kernel.native(spec, {"available": False})


def test_library_shape_rules(monkeypatch):
    int4 = registry.get("cuda.linear.int4_pack")
    assert int4.supports(LinearSpec(1, 256, 64, "int4", group_size=128))
    assert int4.supports(LinearSpec(1, 96, 8, "int4", group_size=32))  # inner-K tiles of 2
    assert not int4.supports(LinearSpec(1, 100, 64, "int4", group_size=64))  # K not a multiple of the group
    assert not int4.supports(LinearSpec(1, 256, 60, "int4"))  # N not a multiple of 8
    assert [cuda.int4pack_inner_k_tiles(k) for k in (256, 64, 96, 48)] == [8, 4, 2, None]

    sparse = registry.get("cuda.linear.sparse24")
    monkeypatch.setattr(cuda, "cusparselt_available", lambda: True)
    assert sparse.supports(LinearSpec(1, 48, 16, "fp16", sparsity="2:4"))
    assert sparse.supports(LinearSpec(1, 64, 32, "int8", sparsity="2:4"))
    assert not sparse.supports(LinearSpec(1, 48, 16, "int8", sparsity="2:4"))
    assert not sparse.supports(LinearSpec(1, 64, 32, "fp16", sparsity="1:4"))
    assert not sparse.supports(LinearSpec(1, 64, 32, "fp32", sparsity="2:4"))
    monkeypatch.setattr(cuda, "cusparselt_available", lambda: False)  # CUTLASS: bigger tiles, no int8 here
    assert sparse.supports(LinearSpec(1, 128, 32, "bf16", sparsity="2:4"))
    assert not sparse.supports(LinearSpec(1, 48, 16, "fp16", sparsity="2:4"))
    assert not sparse.supports(LinearSpec(1, 64, 32, "int8", sparsity="2:4"))


def test_int4_nibble_order_for_cuda():
    q = torch.tensor([[1, 2, 15, 0]], dtype=torch.int32)
    assert cuda.pack_int4_for_cuda(q).tolist() == [[0x12, 0xF0]]  # even k in the high nibble


@pytest.mark.skipif(HAS_CUDA, reason="checks the registry of a machine without CUDA")
def test_no_cuda_kernel_claims_a_missing_device():
    cuda_kernels = [k for k in registry.all_kernels() if k.backend == "cuda"]
    assert len(cuda_kernels) >= 14
    assert not any(k.available() for k in cuda_kernels)
    assert registry.implementations(LinearSpec(8, 256, 64, "bf16"), "cuda") == []


# --- host logic on CPU tensors ----------------------------------------------------------------

HOST_CASES = [
    ("cuda.linear.int8_int_mm", LinearSpec(3, 37, 33, "int8")),  # pads M to 24, K to 40, N to 40
    ("cuda.linear.int8_int_mm", LinearSpec(20, 64, 24, "int8")),  # no padding
    ("cuda.linear.int8_int_mm", LinearSpec(17, 64, 24, "int8", sparsity="1:4")),
    ("cuda.linear.int8_dequant", LinearSpec(3, 37, 33, "int8")),
    ("cuda.linear.fp8_scaled_mm", LinearSpec(3, 37, 33, "fp8")),  # pads K and N to 48
    ("cuda.linear.fp8_scaled_mm", LinearSpec(17, 64, 32, "fp8")),
    ("cuda.linear.fp8_emulated", LinearSpec(3, 37, 33, "fp8")),
    ("cuda.linear.int4_dequant", LinearSpec(3, 100, 24, "int4", group_size=64)),
    ("cuda.linear.dense", LinearSpec(3, 37, 33, "fp32", sparsity="3:8")),
    ("cuda.linear.dense", LinearSpec(1, 64, 24, "bf16")),
    ("cuda.tome_merge.torch", TomeMergeSpec(33, 16, 8, "fp32")),
    ("cuda.norm.torch", NormSpec("layernorm", 5, 32, "fp32")),
    ("cuda.elementwise.torch", ElementwiseSpec("rope", 5, 32, "fp32")),
]
# The fp8 kernel fuses the scales into _scaled_mm from sm90 and applies them after it on sm89.
HOST_RUNS = [(n, s, L4) for n, s in HOST_CASES] + [(n, s, H100) for n, s in HOST_CASES if "fp8_scaled" in n]


@pytest.mark.parametrize(("name", "spec", "sm"), HOST_RUNS, ids=[f"{n}-{s.describe()}-sm{sm}" for n, s, sm in HOST_RUNS])
def test_host_logic_on_cpu_tensors(name, spec, sm, monkeypatch):
    monkeypatch.setattr(cuda, "device_sm", lambda: sm)
    _check(registry.get(name), spec, "cpu")


# --- on a GPU -------------------------------------------------------------------------------


def _gpu_specs() -> list[OpSpec]:
    specs: list[OpSpec] = []
    for fmt in FORMATS:
        for sparsity in ("dense", "2:4", "1:4", "4:8"):
            specs.append(LinearSpec(17, 256, 64, fmt, sparsity=sparsity))
        specs.append(LinearSpec(1, 256, 64, fmt))  # decode
        specs.append(LinearSpec(3, 200, 40, fmt))  # unaligned
        specs.append(LinearSpec(5, 256, 64, fmt, rank=32))
    for group in (32, 64, 128):
        specs.append(LinearSpec(3, 384, 64, "int4", group_size=group))
    specs.append(LinearSpec(3, 100, 24, "int4", group_size=64))
    return specs + [
        AttentionSpec(17, 4, 64, "bf16"),
        AttentionSpec(1, 8, 64, "fp16", kv_tokens=50, causal=True, kv_heads=2),
        TomeMergeSpec(197, 64, 16, "bf16"),
        NormSpec("rmsnorm", 10, 64, "bf16"),
        ElementwiseSpec("silu_mul", 10, 64, "fp16"),
    ]


GPU_CASES = (
    [(spec, kernel) for spec in _gpu_specs() for kernel in registry.implementations(spec, "cuda")] if HAS_CUDA else []
)


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
@pytest.mark.parametrize(
    ("spec", "kernel"), GPU_CASES or [(None, None)], ids=[f"{s.describe()}-{k.name}" for s, k in GPU_CASES] or ["none"]
)
def test_cuda_implementation_matches_fp64_reference(spec, kernel):
    _check(kernel, spec, "cuda")
    if kernel.name.startswith("triton."):
        config = kernel.describe_config(spec)
        assert config["interpreted"] is False and config["BLOCK_M"] >= 16


@pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA)
def test_the_device_gets_exactly_its_fast_paths():
    sm = cuda.device_sm()
    paths = cuda.native_paths(sm)
    names = {k.name for k in registry.all_kernels() if k.backend == "cuda" and k.available()}
    assert ("cuda.linear.fp8_scaled_mm" in names) == paths["fp8"]
    assert ("cuda.linear.int4_pack" in names) == paths["int4"]
    assert ("cuda.linear.sparse24" in names) == paths["2:4"]
    device_caps = registry.capabilities("cuda")
    for fmt in ("bf16", "int8", "fp8", "int4"):
        spec = LinearSpec(32, 256, 64, fmt)
        assert registry.select(spec, "cuda").native(spec, device_caps) == paths[fmt], fmt
    spec = LinearSpec(32, 256, 64, "fp16", sparsity="2:4")
    assert registry.select(spec, "cuda").name == ("cuda.linear.sparse24" if paths["2:4"] else "triton.linear.nm_sparse")


def test_library_setup_is_described_for_the_profiler(monkeypatch):
    assert registry.get("cuda.linear.int8_int_mm").describe_config(LinearSpec(3, 37, 33, "int8")) == {
        "M": 24, "K": 40, "N": 40,
    }  # fmt: skip
    fp8 = registry.get("cuda.linear.fp8_scaled_mm")
    monkeypatch.setattr(cuda, "device_sm", lambda: L4)
    assert fp8.describe_config(LinearSpec(3, 37, 33, "fp8")) == {"K": 48, "N": 48, "scaling": "unscaled+epilogue"}
    monkeypatch.setattr(cuda, "device_sm", lambda: H100)
    assert fp8.describe_config(LinearSpec(3, 37, 33, "fp8"))["scaling"] == "rowwise"
    assert registry.get("cuda.linear.int4_pack").describe_config(LinearSpec(1, 96, 8, "int4", group_size=32)) == {
        "inner_k_tiles": 2
    }
