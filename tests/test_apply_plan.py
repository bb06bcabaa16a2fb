"""apply_plan: identity is exact, each knob does what it says, sizes equal the real storage."""

from __future__ import annotations

import pytest
import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.apply import apply_plan
from hwsearch.kernels.models import LlamaDecoder, ViT
from hwsearch.kernels.modules import CompressedLinear, pack_bits, storage_bytes, unpack_bits
from hwsearch.kernels.quant import nm_mask
from hwsearch.kernels.specs import LinearSpec
from hwsearch.spaces import Knobs, LayerChoice, MergePlan, Plan, SearchSpace, get_model
from hwsearch.spaces.catalog import DIGITS_VIT, LlamaConfig, llama_spec
from hwsearch.spaces.size import linear_bytes

SMALL_LLAMA = LlamaConfig(dim=64, heads=4, kv_heads=2, ffn=160, layers=2)


@pytest.fixture(scope="module")
def vit() -> ViT:
    torch.manual_seed(0)
    return ViT(DIGITS_VIT).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_identity_plan_reproduces_outputs_exactly(vit: ViT, images: torch.Tensor) -> None:
    explicit = {name: LayerChoice(format="fp32") for name in get_model("digits_vit").layer_names}
    for plan in (Plan(model="digits_vit"), Plan(model="digits_vit", layers=explicit, merge=MergePlan(r=0))):
        out = apply_plan(vit, plan)
        assert out is not vit
        assert torch.equal(out(images), vit(images))
    llama = LlamaDecoder(SMALL_LLAMA, blocks=2).eval()
    x = torch.randn(1, 5, 64)
    spec = llama_spec("tiny", SMALL_LLAMA, blocks=2, tokens=5)
    assert torch.equal(apply_plan(llama, Plan(model="tiny"), spec)(x), llama(x))


def test_real_cpu_kernels_are_used(vit: ViT, images: torch.Tensor) -> None:
    plan = Plan(
        model="digits_vit",
        layers={"blocks.0.attn.qkv": LayerChoice(format="int8"), "blocks.0.mlp.fc1": LayerChoice(format="int4", group_size=32)},
    )
    out = apply_plan(vit, plan)
    # no device measured: the registry's guess, oneDNN's int8 linear where torch has it (`_int_mm` last)
    int8 = [k.name for k in registry.implementations(LinearSpec(197, 64, 192, "int8"))]
    assert out.get_submodule("blocks.0.attn.qkv").kernel.name == int8[0]
    assert int8[-1] == "cpu.linear.int8_int_mm"
    assert out.get_submodule("blocks.0.mlp.fc1").kernel.name == "cpu.linear.int4_pack"
    assert isinstance(vit.get_submodule("blocks.0.attn.qkv"), torch.nn.Linear)  # the original is untouched
    y, ref = out(images), vit(images)
    assert 0 < (y - ref).abs().max() < 0.1 * ref.abs().max()


def test_int8_layer_matches_a_quantised_reference(vit: ViT) -> None:
    linear = vit.get_submodule("blocks.1.mlp.fc2")
    layer = CompressedLinear(linear, LayerChoice(format="int8"), rows=17)
    x = torch.randn(17, linear.in_features)
    err = (layer(x) - linear(x)).norm() / linear(x).norm()
    assert 0 < err < 0.04


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_nm_masks_hold_the_pattern(vit: ViT, pattern: str) -> None:
    n, m = map(int, pattern.split(":"))
    linear = vit.get_submodule("blocks.0.mlp.fc2")
    layer = CompressedLinear(linear, LayerChoice(format="fp32", sparsity=pattern))
    weight = layer.kernel_weight  # the dense-emulation kernel holds the pruned weight
    groups = (weight != 0).view(weight.shape[0], -1, m).sum(-1)
    assert int(groups.max()) == n
    assert torch.equal(weight, linear.weight * nm_mask(linear.weight, n, m))
    # the stored form (values + packed indices) rebuilds exactly that weight
    kept = layer.values.shape[1]
    positions = unpack_bits(layer.indices, (m - 1).bit_length(), kept)
    cols = torch.arange(kept) // n * m + positions
    rebuilt = torch.zeros_like(weight).scatter_(1, cols, layer.values)
    assert torch.equal(rebuilt, weight)


def test_rank_is_the_rank(vit: ViT) -> None:
    linear = vit.get_submodule("blocks.2.mlp.fc1")
    layer = CompressedLinear(linear, LayerChoice(format="fp32", rank=32))
    a, b = layer.kernel_a_weight, layer.kernel_b_weight
    assert a.shape == (32, 64) and b.shape == (128, 32)
    assert int(torch.linalg.matrix_rank(b @ a)) == 32
    # truncated SVD is the best rank-32 approximation
    s = torch.linalg.svdvals(linear.weight.detach().double())
    err = torch.linalg.matrix_norm((b @ a - linear.weight).double())
    assert torch.isclose(err, s[32:].norm(), rtol=1e-4)


def test_low_rank_factors_are_remembered_by_content() -> None:
    """A plan rebuilt from the same weights (another verification round, a fresh copy of the
    model) reuses the factors; a changed weight does not; copies are returned."""
    from hwsearch.kernels import quant

    torch.manual_seed(3)
    w = torch.randn(96, 40)
    a, b = quant.low_rank_factors(w, 8)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]
    assert torch.allclose((b @ a).double(), best, atol=1e-5)
    a.zero_()  # the caller's copy
    again, _ = quant.low_rank_factors(w.clone(), 8)
    assert torch.count_nonzero(again) > 0 and len([k for k in quant._factors if k[1] == 8]) >= 1
    changed = w.clone()
    changed[0, 0] += 1.0
    a2, b2 = quant.low_rank_factors(changed, 8)
    u, s, vh = torch.linalg.svd(changed.double(), full_matrices=False)
    assert torch.allclose((b2 @ a2).double(), (u[:, :8] * s[:8]) @ vh[:8], atol=1e-5)
    wide_a, wide_b = quant.low_rank_factors(w.T.contiguous(), 8)  # N < K takes the other Gram matrix
    assert torch.allclose((wide_b @ wide_a).double(), best.T, atol=1e-5)


def test_merged_token_counts_follow_the_schedule(vit: ViT, images: torch.Tensor) -> None:
    spec = get_model("digits_vit")
    for merge in (MergePlan(r=2, start_block=1), MergePlan(r=3, start_block=0), [0, 1, 0, 3]):
        out = apply_plan(vit, Plan(model="digits_vit", merge=merge))
        seen: dict[str, int] = {}
        hooks = [
            out.get_submodule(f"blocks.{i}.{part}").register_forward_hook(
                lambda mod, inp, outp, key=f"{i}.{part}", seen=seen: seen.__setitem__(key, inp[0].shape[1])
            )
            for i in range(4)
            for part in ("attn.qkv", "mlp.fc1")
        ]
        logits = out(images)
        for h in hooks:
            h.remove()
        expected = spec.with_merge(merge)
        assert [(seen[f"{i}.attn.qkv"], seen[f"{i}.mlp.fc1"]) for i in range(4)] == [
            (b.tokens, b.mlp_tokens) for b in expected.blocks
        ]
        assert logits.shape == (6, 10) and torch.isfinite(logits).all()


def test_proportional_attention_keeps_merged_duplicates_exact() -> None:
    """Merging two identical tokens and weighting the survivor by size 2 changes nothing."""
    torch.manual_seed(0)
    model = ViT(DIGITS_VIT).eval()
    image = torch.zeros(1, 1, 8, 8)  # all patches identical: merges are exact duplicates
    with torch.no_grad():
        model.pos_embed.zero_()
    ref = model(image)
    out = apply_plan(model, Plan(model="digits_vit", merge=MergePlan(r=4, start_block=2)))(image)
    assert torch.allclose(out, ref, atol=1e-5)


def test_sizes_equal_the_real_storage(vit: ViT) -> None:
    spec = get_model("digits_vit")
    space = SearchSpace(spec, knobs=Knobs(allow_emulated=True))
    for name in ("blocks.0.mlp.fc1", "head"):
        layer = spec.layer(name)
        for choice in space.layers[name].choices():
            module = CompressedLinear(vit.get_submodule(name), choice)
            expected = linear_bytes(layer.K, layer.N, choice.format, choice.group_size, choice.sparsity, choice.rank, layer.bias)
            assert storage_bytes(module) == expected.total, choice.label()
    plan = Plan(model="digits_vit", layers={n: LayerChoice(format="int4", group_size=64, sparsity="2:4") for n in spec.layer_names})
    whole = apply_plan(vit, plan)
    linear_bytes_total = sum(storage_bytes(whole.get_submodule(n)) for n in spec.layer_names)
    assert linear_bytes_total == sum(linear_bytes(x.K, x.N, "int4", 64, "2:4", None, x.bias).total for x in spec.layers)


def test_pack_bits_round_trip() -> None:
    values = torch.randint(0, 8, (5, 13))
    packed = pack_bits(values, 3)
    assert packed.shape == (5, 5) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, 3, 13), values)


def test_bad_plans_for_a_module(vit: ViT) -> None:
    with pytest.raises(HwsearchError, match="unknown layer 'blocks.9.attn.qkv'"):
        apply_plan(vit, Plan(model="digits_vit", layers={"blocks.9.attn.qkv": LayerChoice(format="int8")}))
    with pytest.raises(HwsearchError, match="not an nn.Linear"):
        apply_plan(vit, Plan(model="custom", layers={"blocks.0.norm1": LayerChoice(format="int8")}))
    llama = LlamaDecoder(SMALL_LLAMA)
    with pytest.raises(HwsearchError, match="no timm-style ViT blocks"):
        apply_plan(llama, Plan(model="custom", merge=MergePlan(r=1)))
