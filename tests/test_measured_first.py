"""Measured-first latency: per-device dispatch, the measured lookup table, `profile --for` plans."""

from __future__ import annotations

import numpy as np
import pytest

from hwsearch.kernels import registry
from hwsearch.kernels.dispatch import Dispatch, Measured, family
from hwsearch.kernels.specs import AttentionSpec, LinearSpec
from hwsearch.predictors.measured import MAX_TOKEN_RATIO, MeasuredTable
from hwsearch.profilers.sampling import _anchors, model_plan


def test_dispatch_picks_the_implementation_measured_fastest():
    fast, slow = "cpu.linear.int8_fbgemm", "cpu.linear.int8_int_mm"
    rows = []
    for m in (64, 197, 512):
        spec = LinearSpec(m, 768, 3072, "int8")
        rows += [Measured(spec, fast, True, 1.0), Measured(spec, slow, True, 2.0)]
    d = Dispatch.learn(rows)
    assert d.families[family(LinearSpec(100, 768, 768, "int8"))] == fast
    # a kernel never measured runs the family's winner; a decode GEMM is its own family
    assert d.choose(LinearSpec(100, 384, 1536, "int8")).name == fast
    decode = LinearSpec(1, 4096, 4096, "int8")
    assert d.choose(decode).name == registry.select(decode).name
    # a low-rank linear dispatches each factor
    lowrank = d.choose(LinearSpec(197, 768, 3072, "int8", rank=64))
    assert lowrank.name == f"lowrank[{fast}]"
    assert Dispatch.from_dict(d.as_dict()).choose(LinearSpec(100, 384, 1536, "int8")).name == fast


def test_dispatch_never_prefers_an_emulated_implementation():
    spec = LinearSpec(197, 768, 3072, "int4", 128)
    rows = [Measured(spec, "cpu.linear.int4_pack", True, 3.0), Measured(spec, "cpu.linear.int4_dequant", False, 1.0)]
    assert Dispatch.learn(rows).choose(spec).name == "cpu.linear.int4_pack"


def test_empty_dispatch_follows_the_registry():
    spec = LinearSpec(197, 768, 3072, "int8")
    assert Dispatch().choose(spec).name == registry.select(spec).name


def test_measured_table_interpolates_only_between_close_neighbours():
    a, b = LinearSpec(100, 768, 768, "int8"), LinearSpec(180, 768, 768, "int8")
    table = MeasuredTable({a: 1.0, b: 2.0})
    assert table.lookup(a) == 1.0
    assert table.lookup(LinearSpec(140, 768, 768, "int8")) == pytest.approx(1.5)
    assert table.lookup(LinearSpec(190, 768, 768, "int8")) is None  # beyond: no extrapolation
    assert table.lookup(LinearSpec(140, 768, 768, "bf16")) is None  # another family
    far = MeasuredTable({LinearSpec(10, 64, 64): 1.0, LinearSpec(int(10 * MAX_TOKEN_RATIO) + 5, 64, 64): 2.0})
    assert far.lookup(LinearSpec(15, 64, 64)) is None


def test_measured_table_interpolates_ranks_and_tokens_together():
    pts = {LinearSpec(m, 768, 768, "bf16", rank=r): float(m * r) for m in (100, 200) for r in (32, 64)}
    got = MeasuredTable(pts).lookup(LinearSpec(150, 768, 768, "bf16", rank=48))
    assert got == pytest.approx(150 * 48, rel=0.05)
    att = MeasuredTable({AttentionSpec(100, 3, 64, "fp32"): 1.0, AttentionSpec(150, 3, 64, "fp32"): 2.0})
    assert att.lookup(AttentionSpec(125, 3, 64, "fp32")) == pytest.approx(1.5)


def test_anchors_bracket_every_value():
    values = list(range(5, 200, 7))
    kept = sorted(_anchors(values, 2.0))
    assert kept[0] == min(values) and kept[-1] == max(values)
    for v in values:
        i = np.searchsorted(kept, v)
        assert v in kept or kept[i] / kept[i - 1] <= 2.0


def test_model_plan_covers_the_search_space_of_digits_vit():
    """Every kernel a digits_vit search scores answers from the plan's grid (interpolated)."""
    from hwsearch.kernels.expand import space_kernels
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.knobs import Capabilities, SearchSpace

    plan = model_plan("digits_vit")
    model = get_model("digits_vit")
    space = SearchSpace(model, Capabilities.from_dict(registry.capabilities("cpu")))
    choices = {n: [c for c in ls.choices() if ls.native.get(c, True)] for n, ls in space.layers.items()}
    every = space_kernels(model, choices, space.merge_options, dtype=model.dtype)
    assert len(plan) < len(every)
    table = MeasuredTable({s: 1.0 for s in plan})
    assert all(table.lookup(s) is not None for s in every)


# -- calibration: in-model family scales, composition, the conformal band ---------------------------
def test_conformal_band_covers_held_out_errors():
    from hwsearch.predictors.calibration import conformal_band

    pred = np.ones(19)
    meas = 1.0 + np.linspace(-0.1, 0.08, 19)
    band = conformal_band(pred, meas, coverage=0.9)
    assert np.mean(meas <= pred * (1 + band / 100)) >= 0.9
    assert conformal_band(np.ones(3), np.array([0.5, 0.6, 0.7])) == 0.0  # all over-predicted: no margin needed


def test_family_scales_and_composition_recover_a_known_model():
    from hwsearch.predictors.calibration import PlanParts, family_lines, family_scales, fit_compose

    rng = np.random.default_rng(0)
    parts, records, y = [], [], []
    for _ in range(8):
        layers = {f"l{i}": float(rng.uniform(0.5, 2.0)) for i in range(6)}
        fam = {n: ("linear/int8" if i % 2 else "linear/fp32") for i, n in enumerate(layers)}
        scale = {"linear/int8": 1.5, "linear/fp32": 0.8}
        rest = float(rng.uniform(1, 3))
        parts.append(PlanParts(layers, fam, rest, int(rng.integers(10, 40)), 0.0))
        records.append([(fam[n], scale[fam[n]] * ms, ms) for n, ms in layers.items()])
        y.append(sum(scale[fam[n]] * ms for n, ms in layers.items()) + 1.2 * rest + 0.4)
    assert family_scales(r for rec in records for r in rec) == pytest.approx({"linear/int8": 1.5, "linear/fp32": 0.8})
    fit = fit_compose("in_model", parts, records, np.array(y), np.arange(8) > 0)
    assert fit.predict(parts[0]) == pytest.approx(y[0], rel=1e-6)
    assert fit.overhead.scale == pytest.approx(1.2, rel=1e-6) and fit.overhead.per_forward_ms == pytest.approx(0.4, rel=1e-5)
    # a fixed per-call cost in place (the module, the casts' launches) is fitted beside the scale
    offset = {"linear/int8": 0.05, "linear/fp32": 0.0}
    lined = [[(f, inside + offset[f], alone) for f, inside, alone in rec] for rec in records]
    scales, offsets, casts = family_lines(r for rec in lined for r in rec)
    assert scales == pytest.approx(scale, rel=1e-6) and offsets == pytest.approx(offset, abs=1e-9) and casts == {}
    # casts into a kernel's dtype and back cost per element moved, not per kernel ms: a line of their own
    melems = {n: float(rng.uniform(0.1, 1.0)) for n in parts[0].layer_ms}
    cast_records = [(fam, 1.5 * ms + 0.3 * melems[n], ms, melems[n]) for n, fam, ms in
                    ((n, parts[0].family[n], ms) for n, ms in parts[0].layer_ms.items()) if fam == "linear/int8"] * 2
    cast_records += [(f, 1.5 * ms + 0.3 * c, ms, c) for f, ms, c in (("linear/int8", 0.7, 0.9), ("linear/int8", 1.9, 0.2))]
    s2, o2, c2 = family_lines(cast_records)
    assert s2["linear/int8"] == pytest.approx(1.5, rel=1e-6) and c2["linear/int8"] == pytest.approx(0.3, rel=1e-6)
    y_lined = np.array(y) + np.array([sum(offset[f] for f in p.family.values()) for p in parts])
    fit = fit_compose("in_model_affine", parts, lined, y_lined, np.arange(8) > 0)
    assert fit.predict(parts[0]) == pytest.approx(y_lined[0], rel=1e-6)


def test_a_calibrated_model_takes_its_own_family_lines():
    """One family costing 1.1x in place in one model and 2.0x in another: pooled lines miss both,
    each model's own line (per_model_affine) gets each right; a model never calibrated takes the pool."""
    from hwsearch.predictors.calibration import PlanParts, fit_compose
    from hwsearch.predictors.model_latency import Overhead

    rng = np.random.default_rng(1)
    parts, records, y = [], [], []
    for i in range(12):
        key, scale = ("a@1", 1.1) if i % 2 else ("b@2", 2.0)
        layers = {f"l{j}": float(rng.uniform(0.5, 2.0)) for j in range(8)}
        fam = dict.fromkeys(layers, "linear/bf16")
        rest = float(rng.uniform(0.5, 2.0))
        parts.append(PlanParts(layers, fam, rest, 20, 0.0, model_key=key))
        records.append([("linear/bf16", scale * ms, ms) for ms in layers.values()])
        y.append(scale * sum(layers.values()) + rest + 0.3)
    train = np.arange(12) > 1
    own = fit_compose("per_model_affine", parts, records, np.array(y), train)
    scaled = fit_compose("per_model", parts, records, np.array(y), train)  # the same with scales alone
    pooled = fit_compose("in_model_affine", parts, records, np.array(y), train)
    for i in (0, 1):
        assert own.predict(parts[i]) == pytest.approx(y[i], rel=1e-3)
        assert scaled.predict(parts[i]) == pytest.approx(y[i], rel=1e-3)
        assert abs(pooled.predict(parts[i]) / y[i] - 1) > 0.05
    assert scaled.overhead.model_family_offset_ms["a@1"] == {}
    assert own.overhead.model_family_scale["a@1"]["linear/bf16"] == pytest.approx(1.1, rel=1e-6)
    stored = Overhead.from_bytes(own.overhead.to_bytes())
    assert stored.for_model("a@1").family_scale["linear/bf16"] == pytest.approx(1.1, rel=1e-6)
    assert stored.for_model("never@0").family_scale == stored.family_scale


def test_a_model_never_calibrated_takes_the_unseen_composition():
    """A stored `unseen` composition serves every model without lines of its own, with that
    model's anchor and the in-place entries and weight slope refits learned of it; a calibrated
    model keeps its own lines; a drift scales both."""
    from dataclasses import replace

    from hwsearch.predictors.model_latency import Overhead

    fallback = Overhead(scale=1.3, family_scale={"linear/bf16": 1.5}, per_forward_ms=0.2)
    main = Overhead(family_scale={"linear/bf16": 3.0}, model_family_scale={"a@1": {"linear/bf16": 1.1}},
                    anchors={"new@2": 12.0, "a@1": 5.0}, model_inplace_ms={"new@2": {"k": 0.4}},
                    model_weight_ms_per_mb={"new@2": 0.02}, band_pct=7.0, unseen=fallback.as_dict())
    stored = Overhead.from_bytes(main.to_bytes())
    assert stored.for_model("a@1").family_scale["linear/bf16"] == pytest.approx(1.1)
    new = stored.for_model("new@2")
    assert (new.scale, new.family_scale["linear/bf16"], new.per_forward_ms) == (1.3, 1.5, 0.2)
    assert new.anchors["new@2"] == 12.0 and new.inplace_ms == {"k": 0.4} and new.band_pct == 7.0
    assert new.weight_ms_per_mb == pytest.approx(0.02)
    slower = stored.scaled(2.0).for_model("other@3")
    assert slower.scale == pytest.approx(2.6) and slower.anchors["new@2"] == pytest.approx(24.0)
    assert replace(stored, unseen=None).for_model("other@3").family_scale["linear/bf16"] == 3.0


def test_layers_timed_in_place_beat_any_family_line():
    """In place, one shape of a family costs 3x its isolated time and another 1x (a line per family
    cannot follow that); the in_place composition takes each kernel's in-place time from the
    training plans and predicts a held-out plan made of kernels they ran; per_model_affine misses."""
    from hwsearch.predictors.calibration import PlanParts, choose_composition, fit_compose, inplace_table

    rng = np.random.default_rng(2)
    shapes = {"qkv": (1.0, 3.0), "fc1": (1.6, 1.0), "fc2": (0.6, 1.0)}  # isolated ms, in-place factor
    parts, records, y = [], [], []
    for _ in range(10):
        layers, fam, keys, rec = {}, {}, {}, []
        for b in range(4):
            for kind, (alone, factor) in shapes.items():
                n = f"b{b}.{kind}"
                int8 = bool(rng.integers(0, 2))
                layers[n], fam[n] = alone * (0.5 if int8 else 1.0), "linear/int8" if int8 else "linear/fp32"
                keys[n] = f"{kind}|{fam[n]}"
                inside = layers[n] * (factor if int8 else 1.0) + 0.01
                rec.append((fam[n], inside, layers[n], 0.0, keys[n]))
        parts.append(PlanParts(layers, fam, 2.0, 30, 0.0, model_key="m@1", layer_keys=keys))
        records.append(rec)
        y.append(sum(r[1] for r in rec) + 2.0 + 0.5)
    y = np.array(y)
    assert inplace_table(records[0])[records[0][0][4]] == pytest.approx(records[0][0][1])
    train = np.arange(10) > 0
    exact = fit_compose("in_place", parts, records, y, train)
    lined = fit_compose("per_model_affine", parts, records, y, train)
    assert exact.predict(parts[0]) == pytest.approx(y[0], rel=1e-6)
    assert abs(lined.predict(parts[0]) / y[0] - 1) > 0.01
    assert choose_composition({"kernel_sum": 9.0, "overhead": 5.0, "in_model": 3.0, "in_model_affine": 2.0,
                               "per_model_affine": 1.5, "in_place": 1.0}) == "in_place"
    # a difference within the noise floor (the same plans timed twice) is no evidence against it
    held = {"kernel_sum": 9.0, "overhead": 5.0, "in_model": 3.0, "in_model_affine": 2.0, "per_model_affine": 1.5,
            "in_place": 4.0}
    assert choose_composition(held) == "per_model_affine"
    assert choose_composition(held, noise_floor_mape=3.0) == "in_place"
    # with the plans' own errors, the paired test decides instead: worse on every plan is worse,
    # whatever the noise floor; worse on some and better on others is a tie
    rng = np.random.default_rng(0)
    errs = {v: rng.normal(0, m / 100, 12) for v, m in held.items()}
    lined = np.full(12, 0.015) * np.where(np.arange(12) % 2, 1, -1)
    errs["per_model_affine"] = lined
    errs["in_place"] = lined * 2.6
    assert choose_composition(held, noise_floor_mape=3.0, errors=errs) == "per_model_affine"
    errs["in_place"] = lined * np.where(np.arange(12) < 6, 4.5, 0.2)
    assert choose_composition(held, noise_floor_mape=3.0, errors=errs) == "in_place"


def test_in_place_composition_learns_what_weights_cost_the_rest_of_the_pass():
    """Every layer timed in place, and the rest of the pass costing 0.03 ms more per MB of weights
    streamed: the per-model compositions fit that slope and predict a held-out plan exactly."""
    from hwsearch.predictors.calibration import PlanParts, fit_compose

    rng = np.random.default_rng(3)
    parts, records, y = [], [], []
    for _ in range(10):
        layers, fam, keys, rec, mb = {}, {}, {}, [], 0.0
        for b in range(4):
            int8 = bool(rng.integers(0, 2))
            n = f"b{b}.fc"
            layers[n], fam[n] = (0.5, "linear/int8") if int8 else (1.0, "linear/fp32")
            keys[n] = f"fc|{fam[n]}"
            mb += 2.0 if int8 else 8.0
            rec.append((fam[n], layers[n] * 1.2, layers[n], 0.0, keys[n]))
        parts.append(PlanParts(layers, fam, 2.0, 30, 0.0, model_key="m@1", layer_keys=keys, weight_mb=mb))
        records.append(rec)
        y.append(sum(r[1] for r in rec) + 2.0 + 0.03 * mb)
    for variant in ("in_place", "per_model_affine", "per_model"):
        fit = fit_compose(variant, parts, records, np.array(y), np.arange(10) > 0, bandwidth_gbs=20.0)
        assert fit.overhead.for_model("m@1").weight_ms_per_mb == pytest.approx(0.03, rel=1e-6), variant
        assert fit.predict(parts[0]) == pytest.approx(y[0], rel=1e-6), variant
    # never more than the evicted bytes cost read back at the device's bandwidth: at 50 GB/s, 0.02 ms/MB
    capped = fit_compose("per_model", parts, records, np.array(y), np.arange(10) > 0, bandwidth_gbs=50.0)
    assert capped.overhead.for_model("m@1").weight_ms_per_mb == pytest.approx(0.02)
    # the pooled lines stay without it: the choice between compositions can still leave it out
    assert fit_compose("in_model_affine", parts, records, np.array(y), np.arange(10) > 0).overhead.weight_ms_per_mb == 0.0


def test_layer_times_time_layers_in_place():
    import torch

    from hwsearch.profilers.inmodel import layer_times

    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    got = layer_times(model, (torch.randn(8, 64),), ["0", "2"], threads=1, passes=3, warmup=1)
    assert set(got) == {"0", "2"} and all(0 < v < 1e3 for v in got.values())


def test_client_profiles_what_a_traced_models_search_scores(tmp_path):
    """`profile --for` from Python: a user's torch model (traced) gets its search's kernels measured,
    and whole-model latency then answers them from measurements."""
    import torch

    from hwsearch.predictors.dataset import load_rows
    from hwsearch.search.client import Client
    from hwsearch.search.spec import SearchSpec

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    spec = SearchSpec(model=mlp, example_inputs=torch.randn(4, 32), device="here", name="mlp",
                      knobs={"formats": ["fp32", "int8"], "low_rank": False, "sparsities": ["dense"]})
    client = Client(f"sqlite:///{tmp_path / 'p.db'}")
    doc = client.profile(name="here", budget=1, for_models=[spec], show_progress=False)
    assert doc["measured"] >= 4
    _, rows = load_rows(client.engine, "here")
    model = spec.model_description()
    wanted = model_plan(model, knobs=spec.knob_values())
    got = {r.spec for r in rows}
    assert wanted and set(wanted) <= got
    assert {s.K for s in wanted} == {32, 64} and {s.format for s in wanted} == {"fp32", "int8"}
    # the model itself, uncompressed, timed end to end: the anchor its plans are predicted from
    from hwsearch.predictors.dataset import device_backend
    from hwsearch.predictors.model_latency import anchor_key, device_overhead

    assert set(doc["anchors_ms"]) == {anchor_key(model)} and doc["anchors_ms"][anchor_key(model)] > 0
    stored, _ = device_overhead(client.engine, device_backend(client.engine, "here")[0])
    assert stored.anchors == doc["anchors_ms"]


def test_cli_profile_for_checks_its_models_first(tmp_path):
    from typer.testing import CliRunner

    from hwsearch.cli import app

    db = f"sqlite:///{tmp_path / 'c.db'}"
    res = CliRunner().invoke(app, ["profile", "--local", "--for", "vit_tiny,nomodel", "--db", db])
    assert res.exit_code != 0 and "unknown model 'nomodel'" in str(res.exception or res.output)
    res = CliRunner().invoke(app, ["profile", "--device", "orin", "--for", "vit_tiny", "--db", db])
    assert res.exit_code != 0 and "--for measures on this machine" in str(res.exception or res.output)


def test_a_search_measures_what_it_would_predict_or_says_so(tmp_path):
    """No silent extrapolation: without `profile_missing` the estimate is marked extrapolated (with
    the command that measures it); with it, the search profiles its kernels and the anchor first."""
    import torch
    from searchworld import make_world

    from hwsearch.db.engine import open_db
    from hwsearch.search.problem import build_problem
    from hwsearch.search.spec import SearchSpec

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.Linear(96, 48))
    knobs = {"formats": ["fp32", "int8"], "low_rank": False, "sparsities": ["dense"]}
    url = f"sqlite:///{tmp_path / 'x.db'}"
    make_world(url)
    engine = open_db(url)

    def spec(**kw: object) -> SearchSpec:
        return SearchSpec(model=mlp, example_inputs=torch.randn(4, 48), device="syn", name="mlp", knobs=knobs,
                          verify_top_k=0, **kw)

    latency = build_problem(engine, spec()).tables.provenance["latency"]
    assert latency["extrapolated"] and "hwsearch profile --local --for mlp" in latency["detail"]
    latency = build_problem(engine, spec(profile_missing=True)).tables.provenance["latency"]
    assert not latency["extrapolated"] and latency["measured_share"] == 1.0 and latency["anchored"]


def test_a_layer_not_timed_in_place_takes_its_nearest_timed_siblings_ratio():
    """Calibration timed a layer unmerged at one rank; a search also scores it at merged token
    counts and other ranks. Those take the timed kernel's in-place / isolated ratio (merging
    changes the rows, a rank the inner size), not a family line."""
    from dataclasses import replace

    from hwsearch.predictors.model_latency import ModelLatency, Overhead, anchor_key, inplace_key
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import LayerChoice

    class Flops:
        def predict_specs(self, specs):
            return np.array([s.flops / 1e9 for s in specs])

    model = get_model("vit_tiny")
    layer = model.layer("blocks.0.mlp.fc1")
    choice = LayerChoice(format="int8", rank=96)
    timed = LinearSpec(layer.tokens, layer.K, layer.N, "int8", rank=96)
    iso = Flops().predict_specs([timed])[0]
    oh = Overhead(model_inplace_ms={anchor_key(model): {inplace_key(timed, choice): 3.0 * iso}})
    ml = ModelLatency(model, Flops(), oh)
    assert ml.inplace_ms(timed, choice, layer.tokens) == pytest.approx(3.0 * iso)
    merged = replace(timed, M=layer.tokens // 2)
    assert ml.inplace_ms(merged, choice, layer.tokens) == pytest.approx(3.0 * Flops().predict_specs([merged])[0])
    other_rank = replace(merged, rank=48)
    assert ml.inplace_ms(other_rank, LayerChoice(format="int8", rank=48), layer.tokens) == pytest.approx(
        3.0 * Flops().predict_specs([other_rank])[0])
    # another format is no sibling: nothing measured stands in for it
    assert ml.inplace_ms(replace(merged, format="bf16"), LayerChoice(format="bf16", rank=96), layer.tokens) is None


def test_calibration_composes_merged_layers_from_their_unmerged_in_place_time():
    """The calibration's held-out predictions take the same sibling the search does: a layer a
    merge schedule shrank, never timed in place at its own token count, costs its unmerged
    kernel's in-place time at the ratio of their isolated times."""
    from hwsearch.predictors.calibration import split_by_family

    per_layer, families = {"fc1": 1.0, "fc2": 2.0}, {"fc1": "linear/int8", "fc2": "linear/int8"}
    keys = {"fc1": "fc1@98", "fc2": "fc2@197"}
    table = {"fc1@197": 6.0, "fc2@197": 5.0}
    timed, fixed, free = split_by_family(per_layer, families, {}, inplace=table, keys=keys,
                                         siblings={"fc1": ("fc1@197", 0.5)})
    assert (timed, fixed, free) == (pytest.approx(3.0 + 5.0), 0.0, 0.0)
    # without a timed sibling the layer stays with its family line (here none: free)
    timed, fixed, free = split_by_family(per_layer, families, {}, inplace=table, keys=keys,
                                         siblings={"fc1": ("fc1@64", 0.5)})
    assert (timed, free) == (pytest.approx(5.0), pytest.approx(1.0))


class _FlopsPredictor:
    """A deterministic stand-in for a device's kernel predictor: 1 ms per GFLOP plus 10 us."""

    def predict_specs(self, specs):
        return np.array([0.01 + s.flops / 1e9 for s in specs])


def test_a_token_merge_composes_on_its_own_line_in_every_path():
    """With a `tome_merge` family line (merges timed in place as their block's TokenMerge), the
    calibration's composition, the model-latency estimate and the search's table agree plan by
    plan, and each merge costs its line (scale x isolated + offset), not the other kernels' scale."""
    from dataclasses import replace

    from hwsearch.kernels.specs import TomeMergeSpec
    from hwsearch.predictors.calibration import Composition, plan_parts
    from hwsearch.predictors.model_latency import MERGE_FAMILY, ModelLatency, Overhead
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import LayerChoice, Plan

    model = get_model("digits_vit")
    lined = Overhead(scale=1.1, per_forward_ms=0.05, per_kernel_ms=0.001, per_merge_block_ms=0.02,
                     family_scale={MERGE_FAMILY: 1.5, "linear/int8": 1.2}, family_offset_ms={MERGE_FAMILY: 0.01})
    plans = [Plan(model="digits_vit", merge=[0, 2, 2, 3], layers={"blocks.1.mlp.fc1": LayerChoice(format="int8")}),
             Plan(model="digits_vit", merge=[1, 1, 1, 1]), Plan(model="digits_vit")]
    ml = ModelLatency(model, _FlopsPredictor(), lined)
    table = ml.table({"blocks.1.mlp.fc1": [LayerChoice(format="int8")]}, [p.merge for p in plans])
    unlined = ModelLatency(model, _FlopsPredictor(), replace(lined, family_scale={"linear/int8": 1.2}, family_offset_ms={}))
    for plan, from_table in zip(plans, table.predict(plans), strict=True):
        total = ml.plan(plan).total_ms
        assert from_table == pytest.approx(total, rel=1e-9)
        assert Composition(lined).predict(plan_parts(ml, plan)) == pytest.approx(total, rel=1e-9)
        merges = [s for _, s in ml.kernels(plan) if isinstance(s, TomeMergeSpec)]
        iso = float(_FlopsPredictor().predict_specs(merges).sum()) if merges else 0.0
        assert total - unlined.plan(plan).total_ms == pytest.approx((1.5 - 1.1) * iso + 0.01 * len(merges), rel=1e-9)


def test_a_merging_block_times_its_token_merge_in_place():
    """The merge is a module of its own, named as its kernel's owner: timed in place like a layer."""
    import torch

    from hwsearch.kernels.apply import apply_plan
    from hwsearch.predictors.model_latency import ModelLatency
    from hwsearch.profilers.inmodel import layer_times
    from hwsearch.search.verify import torch_model
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import Plan

    model = get_model("digits_vit")
    plan = Plan(model="digits_vit", merge=[0, 0, 2, 2])
    owners = [o for o, s in ModelLatency(model, _FlopsPredictor()).kernels(plan) if s.op == "tome_merge"]
    assert owners == ["blocks.2.tome_merge", "blocks.3.tome_merge"]
    base, x = torch_model(model)
    built = apply_plan(base, plan, model)
    got = layer_times(built, (x,), owners, threads=1, passes=2, warmup=1)
    assert all(0 < ms < 1e3 for ms in got.values())
    with torch.inference_mode():
        assert built(x).shape == base(x).shape


def test_a_models_gain_scales_its_plans_difference_from_the_anchor_in_every_path():
    """A calibrated model's gain multiplies the composed difference a plan makes from the model's
    measured anchor, alike in the model estimate, the search's table and the calibration's
    composition; `model_gains` recovers it from timed plans, within its range, and an unanchored
    or another model is untouched."""
    from dataclasses import replace

    import numpy as np

    from hwsearch.predictors.calibration import GAIN_RANGE, Composition, model_gains, plan_parts
    from hwsearch.predictors.model_latency import ModelLatency, Overhead, anchor_key
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import LayerChoice, Plan

    model = get_model("digits_vit")
    key = anchor_key(model)
    plain = Overhead(scale=1.2, per_forward_ms=0.05, family_scale={"linear/int8": 1.4}, anchors={key: 2.0})
    gained = replace(plain, model_gain={key: 0.6, "other@0": 1.7})
    choices = [LayerChoice(format="int8"), LayerChoice(format="bf16")]
    layers = ["blocks.0.mlp.fc1", "blocks.1.attn.qkv", "blocks.2.mlp.fc2"]
    plans = [Plan(model="digits_vit", layers={n: c for n in layers[:k]}) for c in choices for k in (1, 2, 3)]
    plans.append(Plan(model="digits_vit", merge=[0, 1, 1, 1], layers={layers[0]: choices[0]}))
    ml, flat = ModelLatency(model, _FlopsPredictor(), gained), ModelLatency(model, _FlopsPredictor(), plain)
    table = ml.table({n: choices for n in layers}, [None, [0, 1, 1, 1]])
    base = plan_parts(flat, None)
    assert ml.plan(None).total_ms == pytest.approx(2.0, rel=1e-9)
    for plan, from_table in zip(plans, table.predict(plans), strict=True):
        total = ml.plan(plan).total_ms
        assert total - 2.0 == pytest.approx(0.6 * (flat.plan(plan).total_ms - 2.0), rel=1e-9)
        assert from_table == pytest.approx(total, rel=1e-9)
        assert Composition(gained).predict(plan_parts(flat, plan), (base, 2.0)) == pytest.approx(total, rel=1e-9)
    # without an anchor the model composes as before
    unanchored = replace(gained, anchors={})
    assert ModelLatency(model, _FlopsPredictor(), unanchored).plan(plans[0]).total_ms == pytest.approx(
        ModelLatency(model, _FlopsPredictor(), replace(plain, anchors={})).plan(plans[0]).total_ms, rel=1e-9)
    # stored and read back
    assert Overhead.from_bytes(gained.to_bytes()).model_gain == gained.model_gain
    # fitted: plans measured at the anchor plus 0.7x their composed difference give 0.7; a fourfold
    # one is held at the top of the range; too few plans give none
    parts = [plan_parts(flat, p) for p in plans]
    diffs = np.array([flat.plan(p).total_ms - 2.0 for p in plans])
    anchors = [(base, 2.0)] * len(plans)
    assert model_gains(Composition(plain), parts, 2.0 + 0.7 * diffs, anchors)[key] == pytest.approx(0.7, rel=1e-6)
    assert model_gains(Composition(plain), parts, 2.0 + 4.0 * diffs, anchors)[key] == GAIN_RANGE[1]
    assert model_gains(Composition(plain), parts[:3], 2.0 + 0.7 * diffs[:3], anchors[:3]) == {}
    assert model_gains(Composition(plain), parts, 2.0 + 0.7 * diffs, [None] * len(plans)) == {}


def test_benchmark_plans_spread_over_the_compression_range_per_model():
    """Each model's plans take one share of compressed layers in each n-th of `AGGRESSIVENESS`."""
    import random

    from hwsearch.bench.model_latency import AGGRESSIVENESS, aggressiveness_draws

    owners = ["a", "b", "c"] * 5 + ["a"]
    shares = aggressiveness_draws(random.Random(3), owners)
    lo, hi = AGGRESSIVENESS
    for m in "abc":
        mine = sorted(s for s, o in zip(shares, owners, strict=True) if o == m)
        n = len(mine)
        assert [int((s - lo) / (hi - lo) * n) for s in mine] == list(range(n))
