"""The project's Triton kernels against the fp64 reference, at small odd shapes.

Without a GPU they run in Triton's interpreter on CPU tensors. `TRITON_INTERPRET=1` is set here,
before anything imports triton, when no CUDA device is visible; the kernel wrappers do not depend
on it (they interpret any launch on CPU tensors), so the order in which test modules import the
registry does not matter. With a GPU the same checks also run compiled and autotuned.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be checked")

from hwsearch.errors import HwsearchError  # noqa: E402
from hwsearch.kernels import registry  # noqa: E402
from hwsearch.kernels.inputs import TOLERANCE, make_inputs, reference  # noqa: E402
from hwsearch.kernels.quant import apply_nm, dequantize_int4_groups, quantize_int4_groups  # noqa: E402
from hwsearch.kernels.specs import LinearSpec  # noqa: E402
from hwsearch.kernels.triton.nm_sparse import nm_matmul, pack_nm, unpack_nm  # noqa: E402
from hwsearch.kernels.triton.w4a16 import pack_int4, unpack_int4  # noqa: E402

NO_CUDA = "no CUDA device: the compiled, autotuned Triton path needs a GPU (the interpreter path runs on CPU)"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]


def _rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double().cpu() - expected.cpu()).norm() / expected.cpu().norm()).item()


def _run(name: str, spec: LinearSpec, device: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    kernel = registry.get(name)
    params, acts = make_inputs(spec, seed=7, device=device)
    got = registry.build(kernel, spec, params, acts)()
    assert got.shape == (spec.M, spec.N)
    assert got.dtype == acts[0].dtype
    assert got.device.type == device
    return got, reference(spec, params, acts), params


# --- storage formats ------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 37, 64])
def test_int4_pack_round_trip(k):
    q = torch.randint(0, 16, (5, k), dtype=torch.int32, generator=torch.Generator().manual_seed(k))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == ((k + 1) // 2, 5)
    assert torch.equal(unpack_int4(packed, k), q)


def test_int4_pack_rejects_out_of_range_values():
    with pytest.raises(HwsearchError, match="values in 0..15"):
        pack_int4(torch.full((2, 4), 16, dtype=torch.int32))


@pytest.mark.parametrize(
    ("n", "m", "k"),
    [(2, 4, 64), (1, 4, 37), (4, 8, 34), (3, 8, 100), (5, 6, 31), (17, 64, 70)],
)
def test_nm_pack_round_trip_and_counts(n, m, k):
    """Unpacking gives exactly `apply_nm`; every full group stores n entries with distinct offsets."""
    w = torch.randn(9, k, generator=torch.Generator().manual_seed(n * 100 + m))
    values, indices = pack_nm(w, n, m)
    groups = -(-k // m)
    assert values.shape == indices.shape == (9, groups * n)
    assert indices.dtype == torch.uint8 and int(indices.max()) < m
    assert torch.equal(unpack_nm(values, indices, n, m, k), apply_nm(w, (n, m)))
    per_group = indices.view(9, groups, n).long()
    assert bool((per_group[..., 1:] > per_group[..., :-1]).all()), "offsets are sorted and distinct"


def test_nm_pack_rejects_bad_patterns():
    with pytest.raises(HwsearchError, match="0 < N < M <= 64"):
        pack_nm(torch.randn(4, 8), 4, 4)


# --- W4A16 ----------------------------------------------------------------------------------

W4A16_SHAPES = [
    (1, 100, 33, 32),  # decode; K not a multiple of the block or the group
    (3, 256, 24, 64),
    (17, 70, 40, 128),  # one partial group
    (3, 130, 17, 128),  # a full and a partial group, odd N
    (16, 96, 64, 32),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "k", "n", "group"), W4A16_SHAPES)
def test_w4a16_matches_reference(m, k, n, group, device):
    spec = LinearSpec(m, k, n, "int4", group_size=group)
    got, expected, params = _run("triton.linear.w4a16", spec, device)
    err = _rel_err(got, expected)
    assert err <= TOLERANCE["int4"], f"error {err:.3g} against the unquantised fp64 reference"
    # The in-kernel dequantisation must be exactly the shared quantiser's: against the fp64
    # product with the dequantised weight only bf16 rounding is left.
    q, scale, lo = quantize_int4_groups(params["weight"].cpu(), group)
    x = make_inputs(spec, seed=7)[1][0].double()
    exact = x @ dequantize_int4_groups(q, scale, lo, group).double().T + params["bias"].double().cpu()
    assert _rel_err(got, exact) <= 2e-2


def test_w4a16_prunes_before_quantising():
    spec = LinearSpec(3, 64, 16, "int4", group_size=32, sparsity="2:4")
    got, expected, _ = _run("triton.linear.w4a16", spec, "cpu")
    assert _rel_err(got, expected) <= TOLERANCE["int4"]


# --- N:M sparse -----------------------------------------------------------------------------

NM_CASES = [
    (1, 64, 24, "fp32", "2:4"),
    (3, 37, 33, "fp32", "1:4"),  # partial last group
    (17, 100, 17, "fp32", "4:8"),
    (3, 70, 40, "fp32", "3:8"),
    (5, 31, 20, "fp32", "5:6"),  # M not a power of two
    (2, 130, 16, "fp32", "17:64"),  # a group wider than the interpreter's K tile
    (3, 96, 24, "bf16", "2:4"),
    (17, 37, 33, "bf16", "1:4"),
    (1, 100, 40, "bf16", "4:8"),
    (3, 70, 24, "fp16", "3:8"),
    (17, 64, 33, "fp16", "2:4"),
    (1, 45, 20, "fp16", "1:4"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("m", "k", "n", "fmt", "pattern"), NM_CASES)
def test_nm_sparse_matches_reference(m, k, n, fmt, pattern, device):
    spec = LinearSpec(m, k, n, fmt, sparsity=pattern)
    got, expected, _ = _run("triton.linear.nm_sparse", spec, device)
    err = _rel_err(got, expected)
    assert err <= TOLERANCE[fmt], f"{spec.describe()}: relative error {err:.3g}"


def test_nm_sparse_takes_strided_activations():
    w = torch.randn(24, 40)
    values, indices = pack_nm(w, 2, 4)
    x = torch.randn(40, 5).t()  # (5, 40), not contiguous
    y, _ = nm_matmul(x, values.t().contiguous(), indices.t().contiguous(), 2, 4, 40)
    expected = x.double() @ apply_nm(w, (2, 4)).double().T
    assert _rel_err(y, expected) <= TOLERANCE["fp32"]


def test_nm_sparse_rejects_mismatched_operands():
    values, indices = pack_nm(torch.randn(8, 32), 2, 4)
    with pytest.raises(HwsearchError, match="do not fit 1:4"):
        nm_matmul(torch.randn(2, 32), values.t().contiguous(), indices.t().contiguous(), 1, 4, 32)
    with pytest.raises(HwsearchError, match="accepted: both fp32, fp16 or bf16"):
        nm_matmul(torch.randn(2, 32).half(), values.t().contiguous(), indices.t().contiguous(), 2, 4, 32)


# --- registry behaviour ---------------------------------------------------------------------


def test_config_is_recorded_for_the_profiler():
    kernel = registry.get("triton.linear.nm_sparse")
    spec = LinearSpec(3, 64, 16, "fp16", sparsity="1:4")
    assert kernel.describe_config(spec) == {}
    params, acts = make_inputs(spec, seed=1)
    registry.build(kernel, spec, params, acts)()
    config = kernel.describe_config(spec)
    assert {"BLOCK_M", "BLOCK_N", "BLOCK_K", "interpreted"} <= set(config)
    assert config["interpreted"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the registry of a machine without CUDA")
def test_triton_kernels_stay_out_of_a_cpu_registry():
    names = ("triton.linear.w4a16", "triton.linear.nm_sparse")
    for name in names:
        kernel = registry.get(name)
        assert kernel.backend == "cuda" and not kernel.available()
    for spec in (LinearSpec(3, 100, 24, "int4", group_size=32), LinearSpec(3, 64, 24, "bf16", sparsity="1:4")):
        assert not {k.name for k in registry.implementations(spec, "cpu")} & set(names)
        assert registry.implementations(spec, "cuda") == []


def test_native_needs_tensor_cores():
    w4, nm = registry.get("triton.linear.w4a16"), registry.get("triton.linear.nm_sparse")
    int4, sparse_bf16 = LinearSpec(1, 64, 16, "int4", group_size=32), LinearSpec(1, 64, 16, "bf16", sparsity="1:4")
    orin, turing = {"available": True, "sm": 87}, {"available": True, "sm": 75}
    assert w4.native(int4, orin) and nm.native(sparse_bf16, orin)
    assert not w4.native(int4, turing) and not nm.native(sparse_bf16, turing)
    assert nm.native(LinearSpec(1, 64, 16, "fp16", sparsity="1:4"), turing)
    assert not w4.native(LinearSpec(1, 64, 16, "int4", group_size=32, sparsity="2:4"), orin)
    assert not w4.native(int4, {"available": False})


# --- compiled for real GPUs, without one ----------------------------------------------------


def _compile(fn, pointers: dict[str, str], consts: dict, sm: int, num_warps: int, num_stages: int):
    """Compile a kernel body to a cubin for compute capability `sm` with triton's bundled ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    jit = JITFunction(fn)  # not triton.jit: that interprets under TRITON_INTERPRET=1
    signature = {a: ("constexpr" if a in consts else pointers.get(a, "i32")) for a in jit.arg_names}
    source = ASTSource(jit, signature, constexprs=consts)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(source, target=GPUTarget("cuda", sm, 32), options=options)


@pytest.mark.skipif(
    importlib.util.find_spec("triton.backends.nvidia") is None, reason="triton has no NVIDIA backend here"
)
@pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION is unset")
@pytest.mark.parametrize("sm", [80, 87, 90])
def test_kernels_compile_for_gpus(sm):
    """What the interpreter cannot show: the kernels lower to a cubin for Ampere, Orin and Hopper."""
    from hwsearch.kernels.triton import nm_sparse, w4a16

    cfg = w4a16.CONFIGS[1]
    bf16 = {"x_ptr": "*bf16", "q_ptr": "*u8", "s_ptr": "*bf16", "z_ptr": "*bf16", "b_ptr": "*bf16", "y_ptr": "*bf16"}
    consts = {"GROUP": 64, "HAS_BIAS": True, "DOT_FP32": False, **cfg.kwargs}
    kernel = _compile(w4a16._w4a16_kernel, bf16, consts, sm, cfg.num_warps, cfg.num_stages)
    assert kernel.asm["cubin"] and kernel.metadata.shared <= 99 * 1024  # fits sm86/87 shared memory

    cfg = nm_sparse.CONFIGS[0]
    for dtype, (n, m) in (("bf16", (2, 4)), ("fp32", (3, 8))):
        pointers = {"x_ptr": f"*{dtype}", "v_ptr": f"*{dtype}", "i_ptr": "*u8", "b_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"}
        precision = "ieee" if dtype == "fp32" else "tf32"
        consts = {"NK": n, "MK": m, "MP": nm_sparse.padded_group(m), "HAS_BIAS": False, "PRECISION": precision,
                  "DOT_FP32": False, **cfg.kwargs}  # fmt: skip
        kernel = _compile(nm_sparse._nm_kernel, pointers, consts, sm, cfg.num_warps, cfg.num_stages)
        assert kernel.asm["cubin"] and kernel.metadata.shared <= 99 * 1024
