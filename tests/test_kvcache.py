"""The quantised KV cache: round trips, appends, bytes, attention, and the knob from plan to latency and export."""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hwsearch as hw
from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry
from hwsearch.kernels.checks import check_output
from hwsearch.kernels.kvcache import CACHES, QuantKVCache, make_cache
from hwsearch.kernels.specs import AttentionSpec
from hwsearch.kernels.traffic import bytes_moved
from hwsearch.predictors.features import FEATURE_NAMES, Roofline, featurize_one
from hwsearch.predictors.model_latency import ModelLatency
from hwsearch.profilers.sampling import KV_CONTEXTS, bench_set, plan_specs
from hwsearch.search.objectives import build_tables, decision_variables
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.knobs import Capabilities, Knobs, SearchSpace
from hwsearch.spaces.plan import KVCacheChoice, Plan
from hwsearch.spaces.size import kv_cache_bytes, plan_kv_bytes

torch.set_num_threads(1)


def kv(tokens: int, heads: int = 2, head_dim: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(1, heads, tokens, head_dim, generator=gen)
    v = torch.randn(1, heads, tokens, head_dim, generator=gen)
    return k, v


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def filled(fmt: str, tokens: int, group: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[QuantKVCache, torch.Tensor, torch.Tensor]:
    cache = make_cache(KVCacheChoice(format=fmt, group_size=group), dtype)
    k, v = kv(tokens)
    cache.append(k.to(dtype), v.to(dtype))
    return cache, k, v  # type: ignore[return-value]


@pytest.mark.parametrize(("fmt", "tol"), [("int8", 0.01), ("int4", 0.15)])
def test_round_trip_within_tolerance_and_residual_exact(fmt: str, tol: float) -> None:
    cache, k, v = filled(fmt, 150, group=64)  # two full key groups, 22 tokens in the residual
    assert len(cache) == 150
    assert rel(cache.keys(), k) < tol and rel(cache.values(), v) < tol
    assert torch.equal(cache.keys()[:, :, 128:], k[:, :, 128:])  # the unfilled group stays in the compute dtype
    assert not torch.equal(cache.keys()[:, :, :128], k[:, :, :128])  # the full groups are quantised


def test_int8_is_tighter_than_int4() -> None:
    errors = {fmt: rel(filled(fmt, 128)[0].values(), filled(fmt, 128)[2]) for fmt in ("int8", "int4")}
    assert errors["int8"] < errors["int4"] / 8


@pytest.mark.parametrize("fmt", ["int8", "int4", "bf16"])
def test_appends_across_group_boundaries_equal_one_big_append(fmt: str) -> None:
    k, v = kv(200)
    whole = make_cache(KVCacheChoice(format=fmt, group_size=32 if fmt != "bf16" else None))
    whole.append(k, v)
    steps = make_cache(KVCacheChoice(format=fmt, group_size=32 if fmt != "bf16" else None))
    for start, stop in ((0, 1), (1, 31), (31, 33), (33, 97), (97, 150), (150, 200)):
        steps.append(k[:, :, start:stop], v[:, :, start:stop])
    assert len(steps) == len(whole) == 200
    assert torch.equal(steps.keys(), whole.keys()) and torch.equal(steps.values(), whole.values())
    assert steps.nbytes() == whole.nbytes()


@pytest.mark.parametrize(("fmt", "group", "tokens"), [("int8", 64, 150), ("int4", 32, 150), ("int4", 128, 64),
                                                      ("bf16", None, 150), ("fp32", None, 7)])
def test_nbytes_is_payload_plus_scales_and_matches_the_formula(fmt: str, group: int | None, tokens: int) -> None:
    cache, _, _ = filled(fmt, tokens, group, torch.bfloat16)
    assert cache.nbytes() == kv_cache_bytes(fmt, group or 64, 2, tokens, 64, "bf16")
    if fmt == "int4":  # codes two per byte, fp16 scale and minimum per group, the residual in bf16
        full, residual = divmod(tokens, group)
        keys = 2 * (full * group * 32 + full * 64 * 4 + residual * 64 * 2)
        values = 2 * tokens * (32 + 64 // min(group, 64) * 4)
        assert cache.nbytes() == keys + values
        if full >= 2:  # mostly quantised: well under the bf16 cache
            assert cache.nbytes() < 2 * 2 * tokens * 64 * 2 / 2.5


@pytest.mark.parametrize("fmt", ["int8", "int4"])
@pytest.mark.parametrize("q_tokens", [1, 5])
def test_attention_over_the_quantised_cache_is_close_to_bf16(fmt: str, q_tokens: int) -> None:
    cache, k, v = filled(fmt, 300, dtype=torch.bfloat16)
    q = torch.randn(1, 8, q_tokens, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    mask = torch.ones(q_tokens, 300, dtype=torch.bool).tril(300 - q_tokens) if q_tokens > 1 else None
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True)
    got = cache.attend(q)
    assert got.dtype == torch.bfloat16 and got.shape == (1, 8, q_tokens, 64)
    dequantised = F.scaled_dot_product_attention(q.float(), cache.keys().float(), cache.values().float(),
                                                 attn_mask=mask, enable_gqa=True)
    assert rel(got.float(), dequantised) < 0.02  # the fused path computes attention over exactly the stored cache
    assert rel(got, exact) < (0.03 if fmt == "int8" else 0.15)


def test_the_fused_kernel_is_native_and_the_dequantising_one_is_not() -> None:
    caps = registry.capabilities("cpu")
    assert caps["kv_cache"]["int8"] and caps["kv_cache"]["int4"]
    compute = "bf16" if caps["bf16"] else "fp32"  # what this CPU computes fast (an AVX2-only one has no bf16)
    spec = AttentionSpec(1, 4, 16, compute, kv_tokens=80, kv_heads=2, kv_format="int4", kv_group=32)
    found = {k.name: k.native(spec, caps) for k in registry.implementations(spec, "cpu")}
    assert found == {"cpu.attention.kv_cache": True, "cpu.attention.kv_dequant": False}
    assert registry.select(spec, "cpu").name == "cpu.attention.kv_cache"
    for kernel in registry.implementations(spec, "cpu"):
        assert check_output(kernel, spec) < 0.16
    assert all(not k.native(AttentionSpec(1, 4, 16, "bf16", kv_tokens=80, kv_format="fp32"), caps)
               for k in registry.implementations(AttentionSpec(1, 4, 16, "bf16", kv_tokens=80, kv_format="fp32")))


@pytest.mark.parametrize("fmt", [None, "int8", "int4"])
def test_a_decode_step_kernel_appends_its_token_then_attends(fmt: str | None) -> None:
    """A decode attention kernel times what a decoder step runs: the step's keys and values join
    the cache (quantised, the cache grown by a copy), then attention over all `kv_tokens`. The
    prepared cache stays as it was (every call is the same step), and the grown one is kept in the
    copy's state until its next call (so the next call writes cold memory, as in a model)."""
    from hwsearch.kernels.cpu import GROWN
    from hwsearch.kernels.inputs import make_inputs

    spec = AttentionSpec(1, 4, 64, "fp32", kv_tokens=131, kv_heads=2, kv_format=fmt, kv_group=64 if fmt else None)
    kernel = registry.select(spec, "cpu")
    params, acts = make_inputs(spec, seed=0)
    state = kernel.prepare(spec, params)
    if fmt is not None:
        filled = QuantKVCache.from_tensors(KVCacheChoice(format=fmt), torch.float32,
                                           {n: t for n, t in state.items() if n in QuantKVCache.NAMES})
        assert len(filled) == 130 and state["new.k"].shape == (1, 2, 1, 64)  # the step's token is not in it yet
    before = {n: t.clone() for n, t in state.items()}
    first, again = kernel.run(spec, state, *acts), kernel.run(spec, state, *acts)
    assert torch.equal(first, again)
    assert all(torch.equal(state[n], t) for n, t in before.items())
    grown = {n[len(GROWN):]: t for n, t in state.items() if n.startswith(GROWN)}
    if fmt is None:
        assert grown["k"].shape == grown["v"].shape == (2, 131, 64)
    else:
        assert len(QuantKVCache.from_tensors(KVCacheChoice(format=fmt), torch.float32, grown)) == 131
    assert check_output(kernel, spec) < 0.16


def test_spec_canonical_form_and_errors() -> None:
    assert AttentionSpec(1, 4, 16, "bf16", kv_tokens=8, kv_format="bf16").kv_format is None  # the dtype itself
    assert AttentionSpec(1, 4, 16, "bf16", kv_tokens=8, kv_format="int8").kv_group == 64
    with pytest.raises(HwsearchError, match="unknown KV-cache format 'int3'; accepted: fp32"):
        AttentionSpec(1, 4, 16, "bf16", kv_tokens=8, kv_format="int3")
    with pytest.raises(HwsearchError, match="unknown KV-cache group size 48"):
        AttentionSpec(1, 4, 16, "bf16", kv_tokens=8, kv_format="int4", kv_group=48)
    with pytest.raises(HwsearchError, match="accepted: a group size only with int8 or int4"):
        AttentionSpec(1, 4, 16, "bf16", kv_tokens=8, kv_group=32)


def test_unknown_cache_format_and_bad_head_dim_are_one_line() -> None:
    saved = CACHES.pop("int4")
    try:
        with pytest.raises(HwsearchError, match="unknown KV-cache format with a kernel 'int4'; accepted: fp32"):
            make_cache(KVCacheChoice(format="int4"))
    finally:
        CACHES["int4"] = saved
    cache = make_cache(KVCacheChoice(format="int8", group_size=32))
    with pytest.raises(HwsearchError, match="head_dim=48 does not fit KV-cache format int8g32"):
        cache.append(*(t[..., :48] for t in kv(4)))


def test_streamed_bytes_and_features_follow_the_cache_format() -> None:
    specs = {f: AttentionSpec(1, 32, 128, "bf16", kv_tokens=8192, kv_heads=8, kv_format=f) for f in ("bf16", "int8", "int4")}
    moved = {f: bytes_moved(s)["total"] for f, s in specs.items()}
    assert moved["bf16"] > 1.8 * moved["int8"] > 3.2 * moved["int4"]
    assert moved["int4"] > kv_cache_bytes("int4", 64, 8, 8192, 128)
    roof = Roofline({"bf16": 100.0}, 20.0)
    vectors = {f: featurize_one(s, roof) for f, s in specs.items()}
    bits = FEATURE_NAMES.index("weight_bits")
    assert vectors["int4"][bits] == 4 and vectors["int8"][bits] == 8 and vectors["bf16"][bits] == 0
    assert vectors["int4"][FEATURE_NAMES.index("format=int4")] == 1


def test_profiling_measures_decode_attention_at_three_contexts_in_each_format() -> None:
    bench = [s for s in bench_set() if isinstance(s, AttentionSpec)]
    assert {(s.kv_len, s.kv_store) for s in bench} == {(c, f) for c in KV_CONTEXTS for f in ("bf16", "int8", "int4")}
    quick = [s for s in plan_specs("quick") if isinstance(s, AttentionSpec) and s.kv_format is not None]
    assert {s.kv_len for s in quick} >= {c + 1 for c in KV_CONTEXTS}


class Roof:
    """A predictor that answers every kernel by its bytes at 20 GB/s (decode is memory bound)."""

    def predict_specs(self, specs: list) -> np.ndarray:
        return np.array([bytes_moved(s)["total"] / 20e9 * 1e3 for s in specs])


def test_plan_kv_cache_flows_into_predicted_latency() -> None:
    model = get_model("llama3_8b:blocks=2,context=8192")
    ml = ModelLatency(model, Roof())
    plans = {f: Plan(model="llama3_8b", kv_cache={b.prefix: KVCacheChoice(format=f) for b in model.blocks})
             for f in ("bf16", "int8", "int4")}
    ms = {f: ml.plan(p).by_op["attention"] for f, p in plans.items()}
    assert ms["bf16"] > ms["int8"] > ms["int4"]
    options = {b.prefix: [KVCacheChoice(format=f) for f in ("bf16", "int8", "int4")] for b in model.blocks}
    table = ml.table({}, [None], options)
    assert np.allclose(table.predict(list(plans.values())), [ml.plan(p).total_ms for p in plans.values()])
    mixed = Plan(model="llama3_8b", kv_cache={"layers.0": KVCacheChoice(format="int4")})
    assert np.isclose(table.predict([mixed])[0], ml.plan(mixed).total_ms)
    short = ModelLatency(get_model("llama3_8b:blocks=2,context=512"), Roof())  # the cache matters less at short context
    gain = {name: m.plan(plans["bf16"]).total_ms - m.plan(plans["int4"]).total_ms for name, m in (("long", ml), ("short", short))}
    assert gain["long"] > 10 * gain["short"] > 0


def test_search_space_offers_only_formats_with_a_kernel_and_the_tables_pick_them() -> None:
    model = get_model("llama3_8b:blocks=2,context=8192")
    # this CPU's kernels, on one that computes the model's bf16 natively (an AVX2-only one does not)
    caps = {**registry.capabilities("cpu"), "bf16": True}
    cpu = SearchSpace(model, Capabilities.from_dict({**caps, "kv_cache": registry.kv_cache_formats("cpu", caps)}))
    assert [c.label() for c in cpu.kv["layers.0"]] == ["bf16", "int8g64", "int4g64"]
    bare = SearchSpace(model, Capabilities.from_dict({"available": True, "bf16": True}))  # no KV kernels named
    assert [c.label() for c in bare.kv["layers.0"]] == ["bf16"]
    assert SearchSpace(get_model("llama3_8b:tokens=128"), Capabilities()).kv == {}  # a prefill reads no cache
    fp32 = Knobs(kv_formats=("fp32", "int8"))  # a float cache other than the model's is cast every step: emulated
    assert [c.label() for c in SearchSpace(model, cpu.caps, fp32).kv["layers.0"]] == ["bf16", "int8g64"]
    emulated = SearchSpace(model, cpu.caps, Knobs(kv_formats=("fp32", "int8"), allow_emulated=True))
    assert [c.label() for c in emulated.kv["layers.0"]] == ["bf16", "fp32", "int8g64"]
    assert not emulated.native(Plan(model="llama3_8b", kv_cache={"layers.0": KVCacheChoice(format="fp32")}))
    assert emulated.native(Plan(model="llama3_8b", kv_cache={"layers.0": KVCacheChoice(format="int8")}))
    with pytest.raises(HwsearchError, match="int8g32 is not in the space; accepted: bf16, int8g64, int4g64"):
        cpu.check_plan(Plan(model="llama3_8b", kv_cache={"layers.1": KVCacheChoice(format="int8", group_size=32)}))
    assert any(cpu.sample(random.Random(s)).kv_cache for s in range(5))
    with pytest.raises(HwsearchError, match="unknown KV-cache format 'int2'"):
        Knobs(kv_formats=("int2",))
    variables = decision_variables(cpu)
    assert [v.kv_block for v in variables if v.kv_block] == ["layers.0", "layers.1"]
    tables = build_tables(cpu, ["latency", "size"], "roof", Roof())
    idx = np.array([[0] * (len(variables) - 2) + [2, 1]])
    plan = tables.plan(idx[0], 0)
    assert plan.kv_cache == {"layers.0": KVCacheChoice(format="int4"), "layers.1": KVCacheChoice(format="int8")}
    scored = tables.score(idx, np.array([0]))
    assert np.isclose(scored["latency"][0], ModelLatency(model, Roof()).plan(plan).total_ms)
    assert scored["size"][0] == tables.score(np.zeros_like(idx), np.array([0]))["size"][0]  # weights only
    assert plan_kv_bytes(model, plan) < plan_kv_bytes(model, None) / 2


def test_export_writes_kv_cache_scheme_and_says_what_it_cannot(tmp_path: Path) -> None:
    from compressed_tensors.quantization import QuantizationConfig

    plan = Plan(model="llama3_8b:blocks=2", kv_cache={"layers.0": KVCacheChoice(format="int4"),
                                                      "layers.1": KVCacheChoice(format="int8")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = hw.export(plan, "compressed-tensors", tmp_path / "q.json")
        opt = hw.export(plan, "modelopt", tmp_path / "m.yaml")
    doc = json.loads((tmp_path / "q.json").read_text())
    scheme = QuantizationConfig.model_validate(doc).kv_cache_scheme
    assert (scheme.num_bits, scheme.strategy, scheme.group_size, scheme.symmetric) == (8, "group", 64, False)
    lost = " ".join(result.warnings)
    assert "per channel over groups of tokens" in lost and "one kv_cache_scheme for every block" in lost
    assert "layers.0 int4g64" in lost and "vLLM" in lost
    import yaml

    entries = {e["quantizer_name"]: e.get("cfg") for e in yaml.safe_load((tmp_path / "m.yaml").read_text())["quant_cfg"]}
    assert entries["layers.0.self_attn.k_bmm_quantizer"] == {"num_bits": 4, "block_sizes": {-2: 64, "type": "dynamic"}}
    assert entries["*.layers.1.self_attn.v_bmm_quantizer"] == {"num_bits": 8, "block_sizes": {-1: 64, "type": "dynamic"}}
    assert any("symmetric" in w and "unfilled group" in w for w in opt.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plan quantising nothing is one warning of its own
        plain = hw.export(Plan(model="llama3_8b"), "compressed-tensors", tmp_path / "none.json")
    assert "kv_cache_scheme" not in json.loads((tmp_path / "none.json").read_text())
    assert not any("kv_cache" in w for w in plain.warnings)


def test_kv_group_math() -> None:
    assert kv_cache_bytes("bf16", None, 8, 8192, 128) == 2 * 8 * 8192 * 128 * 2
    ratio = kv_cache_bytes("bf16", None, 8, 8192, 128) / kv_cache_bytes("int4", 64, 8, 8192, 128)
    assert 3.0 < ratio < 4.0 and math.isclose(kv_cache_bytes("int8", 64, 8, 8192, 128) / (8 * 8192 * 128 * 2), 1.0625)
