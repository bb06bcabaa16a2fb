"""Every registered CPU implementation against the fp64 reference, and the spec validation."""

from __future__ import annotations

import pytest
import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.inputs import make_inputs, reference, tolerance
from hwsearch.kernels.quant import nm_mask
from hwsearch.kernels.specs import (
    AttentionSpec,
    ElementwiseSpec,
    LinearSpec,
    NormSpec,
    TomeMergeSpec,
    spec_from_params,
)
from hwsearch.kernels.tome import bipartite_merge
from hwsearch.spaces.formats import FORMATS


def _linear_specs() -> list[LinearSpec]:
    specs = []
    for fmt in FORMATS:
        for sparsity in ("dense", "2:4", "1:4", "4:8", "3:7"):
            specs.append(LinearSpec(17, 256, 48, fmt, sparsity=sparsity))
        specs.append(LinearSpec(1, 256, 40, fmt))  # decode
        specs.append(LinearSpec(5, 200, 70, fmt, rank=32))  # low rank, K not a multiple of 128
    for group in (32, 64, 128):
        specs.append(LinearSpec(3, 384, 24, "int4", group_size=group))
    specs.append(LinearSpec(3, 100, 24, "int4", group_size=64))  # K not a multiple of the group
    return specs


OTHER_SPECS = [
    AttentionSpec(17, 4, 32, "bf16"),
    AttentionSpec(9, 2, 16, "fp32", causal=True),
    AttentionSpec(1, 8, 64, "fp32", kv_tokens=50, causal=True, kv_heads=2),
    AttentionSpec(5, 2, 16, "fp16"),
    TomeMergeSpec(197, 64, 16, "fp32"),
    TomeMergeSpec(50, 32, 0, "bf16"),
    NormSpec("layernorm", 10, 64, "bf16"),
    NormSpec("rmsnorm", 10, 64, "fp32"),
    ElementwiseSpec("gelu", 10, 64, "fp32"),
    ElementwiseSpec("silu_mul", 10, 64, "bf16"),
    ElementwiseSpec("add", 10, 64, "fp16"),
    ElementwiseSpec("rope", 10, 64, "fp32"),
    AttentionSpec(1, 8, 64, "bf16", kv_tokens=150, kv_heads=2, kv_format="int8"),  # decode over a quantised cache
    AttentionSpec(3, 4, 32, "fp32", kv_tokens=100, causal=True, kv_format="int4", kv_group=32),
    AttentionSpec(1, 4, 32, "bf16", kv_tokens=40, kv_format="fp32"),
]

CASES = [(spec, kernel) for spec in _linear_specs() + OTHER_SPECS for kernel in registry.implementations(spec, "cpu")]


@pytest.mark.parametrize(("spec", "kernel"), CASES, ids=[f"{s.describe()}-{k.name}" for s, k in CASES])
def test_implementation_matches_fp64_reference(spec, kernel):
    params, acts = make_inputs(spec, seed=3)
    expected = reference(spec, params, acts)
    got = registry.build(kernel, spec, params, acts)()
    assert got.shape == expected.shape
    assert got.dtype == acts[0].dtype
    err = ((got.double() - expected).norm() / expected.norm()).item()
    assert err <= tolerance(spec), f"{kernel.name} on {spec.describe()}: relative error {err:.3g}"


def test_every_cpu_kernel_is_exercised():
    used = {k.name for _, k in CASES}
    registered = {k.name for k in registry.all_kernels() if k.backend == "cpu" and k.available()}
    assert registered <= used | {n for n in used if n.startswith("lowrank[")}


def test_native_flags_are_honest():
    caps = registry.capabilities("cpu")
    assert registry.select(LinearSpec(8, 256, 64, "int8"), "cpu").native(LinearSpec(8, 256, 64, "int8"), caps)
    assert registry.select(LinearSpec(8, 256, 64, "int4"), "cpu").name == "cpu.linear.int4_pack"
    for spec in (LinearSpec(8, 256, 64, "fp8"), LinearSpec(8, 256, 64, "bf16", sparsity="2:4"),
                 LinearSpec(8, 256, 64, "int8", sparsity="1:4"), LinearSpec(8, 100, 64, "int4", group_size=64)):
        assert not registry.select(spec, "cpu").native(spec, caps), spec.describe()


@pytest.mark.parametrize("pattern", [(2, 4), (1, 4), (4, 8), (3, 7)])
def test_nm_mask_holds_the_pattern(pattern):
    n, m = pattern
    w = torch.randn(16, 7 * m)
    mask = nm_mask(w, n, m)
    assert (mask.view(16, -1, m).sum(-1) == n).all()
    kept = w.abs().masked_fill(~mask, float("inf")).view(16, -1, m).amin(-1)
    dropped = w.abs().masked_fill(mask, float("-inf")).view(16, -1, m).amax(-1)
    assert (kept >= dropped).all()


def test_tome_merge_counts_and_sizes():
    x, metric = torch.randn(197, 32), torch.randn(197, 32)
    size = torch.ones(197, 1)
    merged, merged_size = bipartite_merge(x, metric, size, 20)
    assert merged.shape == (177, 32)
    assert merged_size.sum().item() == 197
    assert torch.equal(merged[0], x[0])  # the class token is kept as is


def test_spec_round_trip_through_params():
    for spec in _linear_specs()[:5] + OTHER_SPECS:
        assert spec_from_params(spec.op, spec.params()) == spec


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"M": 4, "K": 8, "N": 8, "format": "int3"}, "unknown format 'int3'; accepted: fp32, bf16"),
        ({"M": 4, "K": 8, "N": 8, "sparsity": "5:4"}, "unknown sparsity pattern '5:4'; accepted: dense or N:M"),
        ({"M": 4, "K": 8, "N": 8, "sparsity": "half"}, "unknown sparsity pattern 'half'"),
        ({"M": 0, "K": 8, "N": 8}, "shape M=0 is out of range; accepted: an integer from 1"),
        ({"M": 4, "K": -3, "N": 8}, "shape K=-3 is out of range"),
        ({"M": 4, "K": 256, "N": 8, "format": "int4", "group_size": 16}, "unknown int4 group size 16; accepted: 32, 64, 128"),
        ({"M": 4, "K": 8, "N": 8, "rank": 8}, "rank=8 is out of range"),
    ],
)
def test_bad_specs_give_one_line_errors(kwargs, needle):
    with pytest.raises(HwsearchError) as info:
        LinearSpec(**kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_op_and_backend():
    with pytest.raises(HwsearchError, match="unknown op 'conv'; accepted: linear"):
        spec_from_params("conv", {})
    with pytest.raises(HwsearchError, match="unknown backend 'tpu'; accepted: cpu, cuda"):
        registry.implementations(LinearSpec(1, 8, 8), "tpu")
