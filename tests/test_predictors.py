"""Latency predictors: one protocol suite for every kind, features, storage, model latency, CLI.

Devices here are synthetic: measurements written with the profiler's store, latencies from an
analytic roofline (peak GFLOP/s, bandwidth, a launch cost) times a per-op factor, so the tests
are fast and independent of this machine's speed. No timing is asserted.
"""

from __future__ import annotations

import json
import math
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hwsearch.db.engine import open_db, session_scope
from hwsearch.db.models import Predictor
from hwsearch.errors import HwsearchError
from hwsearch.kernels import registry as kernel_registry
from hwsearch.kernels.expand import model_kernels
from hwsearch.kernels.specs import AttentionSpec, ElementwiseSpec, LinearSpec, NormSpec, OpSpec, TomeMergeSpec
from hwsearch.predictors import registry
from hwsearch.predictors.base import MAGIC, LatencyPredictor
from hwsearch.predictors.dataset import device_backend, device_dispatch, load_dataset
from hwsearch.predictors.features import (
    FEATURE_NAMES,
    INDEX,
    N_FEATURES,
    OFFSET_FEATURE,
    Roofline,
    bytes_moved,
    featurize,
    roofline_from_measurements,
    roofline_ms,
)
from hwsearch.predictors.meta import MetaPredictor, MetaTask, train_meta
from hwsearch.predictors.metrics import score
from hwsearch.predictors.model_latency import ModelLatency, Overhead, anchor_key, full_choices
from hwsearch.predictors.store import latest
from hwsearch.predictors.xgb import XGBoostPredictor, train_xgboost
from hwsearch.profilers import store
from hwsearch.profilers.sampling import random_set, reference_set
from hwsearch.spaces.catalog import get_model
from hwsearch.spaces.knobs import Capabilities, Knobs, SearchSpace
from hwsearch.spaces.plan import LayerChoice, MergePlan, Plan

HOST = socket.gethostname()
OP_FACTOR = {"linear": 1.0, "attention": 1.6, "norm": 1.2, "elementwise": 1.1, "tome_merge": 3.0}
FORMAT_FACTOR = {"fp32": 1.0, "bf16": 0.6, "fp16": 1.4, "int8": 0.5, "int4": 0.8, "fp8": 2.5}


def synthetic_ms(spec: OpSpec, peak: float = 80.0, bw: float = 20.0) -> float:
    """A smooth, roofline-shaped latency (ms) with per-op and per-format factors."""
    fmt = getattr(spec, "format", None) or getattr(spec, "dtype", "bf16")
    compute = spec.flops / (peak * 1e9) * 1e3
    memory = bytes_moved(spec)["total"] / (bw * 1e9) * 1e3
    return (max(compute, memory) * OP_FACTOR[spec.op] * FORMAT_FACTOR[fmt] + 0.004) * (1.0 + 0.03 * math.sin(spec.flops))


def _fields(spec: OpSpec, ms: float, impl: str | None = None) -> dict:
    us = ms * 1e3
    return {"implementation": impl or kernel_registry.select(spec, "cpu").name, "backend": "cpu", "native": True,
            "median_us": us, "p10_us": 0.95 * us, "p90_us": 1.05 * us, "mean_us": us, "repeats": 20, "cov": 0.03,
            "threads": 1, "environment": {}}


def write_device(engine, name: str, specs: list[OpSpec], slow: float = 1.0, host: str = "elsewhere") -> int:
    dev = store.ensure_device(engine, name, "cpu", {"backend": "cpu", "host": host, "threads": 1, "cpu_model": name})
    rows = [(s, _fields(s, slow * synthetic_ms(s))) for s in specs]
    for i in range(0, len(rows), 200):
        store.write_chunk(engine, dev, None, rows[i : i + 200])
    return dev


def train_specs(n: int = 260, seed: int = 0) -> list[OpSpec]:
    ref = reference_set()
    seen = set(ref)
    rest = [s for s in random_set(n, seed=seed, max_flops=2e9) if s not in seen]
    return ref + list(dict.fromkeys(rest))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A database with two fully 'profiled' devices and one with reference set + 10 kernels."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pred') / 'w.db'}"
    engine = open_db(url)
    specs = train_specs()
    write_device(engine, "syn", specs, host=HOST)
    write_device(engine, "syn-slow", train_specs(200, seed=1), slow=2.0)
    few = reference_set() + [s for s in random_set(40, seed=5, max_flops=2e9) if s not in set(reference_set())][:10]
    write_device(engine, "fresh", few, slow=1.5)
    store.ensure_device(engine, "empty", "cpu", {"backend": "cpu", "host": "elsewhere", "threads": 1})
    xgb_row = train_xgboost(engine, "syn", params={"n_estimators": 300, "learning_rate": 0.1})
    meta_row = train_meta(engine, "syn", params={"steps": 40, "hidden": 32, "n_basis": 8, "batch_tasks": 2,
                                                          "query": 64})
    return {"url": url, "engine": engine, "xgb": xgb_row, "meta": meta_row}


# -- one protocol suite for every predictor kind ---------------------------------------------------
def _toy(n: int = 240, seed: int = 0):
    specs = train_specs(n, seed)
    roof = Roofline({"bf16": 80.0, "fp32": 40.0, "int8": 120.0}, 20.0)
    return featurize(specs, roof), np.array([synthetic_ms(s) for s in specs]), roof, specs


def _xgb() -> XGBoostPredictor:
    return XGBoostPredictor(n_estimators=150, learning_rate=0.1, early_stopping_rounds=20)


def _xgb_offset() -> XGBoostPredictor:
    return XGBoostPredictor(n_estimators=150, learning_rate=0.1, early_stopping_rounds=20, offset_feature=OFFSET_FEATURE)


def _meta_adapted():
    X, y, _, specs = _toy(seed=3)
    ref = np.arange(len(reference_set()))
    tasks = [MetaTask(f"d{i}", X, y * f, y[ref] * f) for i, f in enumerate((0.5, 1.0, 3.0))]
    meta = MetaPredictor(hidden=32, n_basis=8, steps=30, batch_tasks=2, query=64, seed=0).meta_fit(tasks)
    return meta.adapt(y[ref] * 2.0, X[ref], y[ref] * 2.0)


PREDICTORS = {"xgboost": _xgb, "xgboost-roofline-offset": _xgb_offset, "meta-adapted": _meta_adapted}


@pytest.mark.parametrize("make", PREDICTORS.values(), ids=PREDICTORS.keys())
def test_every_predictor_obeys_the_protocol(make):
    X, y, _, _ = _toy()
    model = make()
    assert isinstance(model, LatencyPredictor) and isinstance(model.kind, str)
    assert model.fit(X, y) is model
    pred = model.predict(X)
    assert pred.shape == (len(y),) and pred.dtype == np.float64 and (pred > 0).all()
    # milliseconds, not log-ms or µs: the median ratio to the truth is near 1
    assert 0.5 < float(np.median(pred / y)) < 2.0
    assert model.predict(X[:1]).shape == (1,)
    # deterministic: a second identical fit predicts the same
    np.testing.assert_allclose(make().fit(X, y).predict(X), pred, rtol=1e-12)
    blob = model.to_bytes()
    assert blob[:4] == MAGIC
    again = type(model).from_bytes(blob)
    np.testing.assert_array_equal(again.predict(X), pred)
    with pytest.raises(HwsearchError, match="columns"):
        model.predict(X[:, :5])
    with pytest.raises(HwsearchError, match="positive"):
        make().fit(X, -y)


def test_xgboost_learns_and_uses_early_stopping():
    X, y, _, _ = _toy(400)
    model = XGBoostPredictor(n_estimators=3000, learning_rate=0.2, early_stopping_rounds=20, offset_feature=OFFSET_FEATURE)
    model.fit(X[:300], y[:300])
    assert model.best_iteration_ < 2999 and model.valid_rmse_log_ is not None
    assert score(model.predict(X[300:]), y[300:])["within_10pct"] > 0.5
    json_model = XGBoostPredictor(n_estimators=50, raw_format="json").fit(X, y)
    assert b'"learner"' in json_model.to_bytes()
    with pytest.raises(HwsearchError, match="not fitted"):
        XGBoostPredictor().predict(X)
    with pytest.raises(HwsearchError, match="raw_format"):
        XGBoostPredictor(raw_format="pickle").fit(X, y)


# -- features --------------------------------------------------------------------------------------
def test_features_cover_every_op_family_with_one_width():
    _, _, roof, specs = _toy()
    specs = specs + [TomeMergeSpec(197, 768, 16), ElementwiseSpec("rope", 8, 128), NormSpec("rmsnorm", 4, 64)]
    X = featurize(specs, roof)
    assert X.shape == (len(specs), N_FEATURES) == (len(specs), len(FEATURE_NAMES))
    assert np.isfinite(X).all()
    ops = [f"op={o}" for o in ("linear", "attention", "tome_merge", "norm", "elementwise")]
    assert (X[:, [INDEX[o] for o in ops]].sum(1) == 1).all()
    for spec, row in zip(specs, X, strict=True):
        c, m = roofline_ms(spec, roof)
        assert row[OFFSET_FEATURE] == pytest.approx(math.log(max(c, m, 1e-6)))


def test_bytes_moved_follow_the_format():
    dense = LinearSpec(64, 1024, 1024, "bf16")
    assert bytes_moved(LinearSpec(64, 1024, 1024, "int4"))["weights"] < bytes_moved(LinearSpec(64, 1024, 1024, "int8"))["weights"] \
        < bytes_moved(dense)["weights"]
    assert bytes_moved(LinearSpec(64, 1024, 1024, "int4", group_size=32))["scales"] > \
        bytes_moved(LinearSpec(64, 1024, 1024, "int4", group_size=128))["scales"]
    assert bytes_moved(LinearSpec(64, 1024, 1024, "bf16", sparsity="2:4"))["indices"] > 0
    low = LinearSpec(64, 1024, 1024, "bf16", rank=128)
    a, b = low.factors()
    assert bytes_moved(low)["activations"] == bytes_moved(a)["activations"] + bytes_moved(b)["activations"]
    x = featurize([low, AttentionSpec(1, 32, 128, kv_tokens=2048, kv_heads=8)], Roofline({"bf16": 1.0}, 1.0))
    assert x[0, INDEX["lowrank"]] == 1 and x[0, INDEX["n_gemms"]] == 2 and x[1, INDEX["gqa"]] == 4


def test_roofline_comes_from_large_and_decode_gemms():
    big, decode = LinearSpec(512, 2048, 2048, "bf16"), LinearSpec(1, 4096, 4096, "bf16")
    roof = roofline_from_measurements([(big, 1.0), (decode, 2.0), (LinearSpec(197, 768, 3072, "int8"), 0.5),
                                       (NormSpec("layernorm", 197, 768), 1.0)])
    assert roof.peak("bf16") == pytest.approx(big.flops / 1e-3 / 1e9)
    assert roof.peak("fp16") == roof.peak("bf16")  # no fp16 reference: best float peak
    assert roof.bandwidth_gbs == pytest.approx(bytes_moved(decode)["total"] / 2e-3 / 1e9)
    assert Roofline.from_dict(roof.as_dict()) == roof
    with pytest.raises(HwsearchError, match="reference set"):
        roofline_from_measurements([(decode, 1.0)])


# -- dataset and storage ---------------------------------------------------------------------------
@pytest.mark.parametrize("fastest", [0, 1])
def test_dataset_uses_the_implementation_the_device_measured_fastest(tmp_path, fastest):
    """What a model runs on a device is its dispatch's pick, so that is what predictors learn."""
    engine = open_db(f"sqlite:///{tmp_path / 'd.db'}")
    spec = LinearSpec(197, 768, 3072, "int8")
    dev = store.ensure_device(engine, "two-impls", "cpu", {"backend": "cpu", "host": "x"})
    impls = [k.name for k in kernel_registry.implementations(spec, "cpu")]
    rows = [(spec, _fields(spec, 1.0 if i == fastest else 2.0, impl)) for i, impl in enumerate(impls)]
    rows += [(s, _fields(s, synthetic_ms(s))) for s in reference_set() if s != spec]
    store.write_chunk(engine, dev, None, rows)
    ds = load_dataset(engine, "two-impls")
    i = ds.specs.index(spec)
    assert ds.implementations[i] == impls[fastest] and ds.y_ms[i] == pytest.approx(1.0)
    assert device_dispatch(engine, "two-impls").choose(LinearSpec(64, 768, 768, "int8")).name == impls[fastest]
    assert len(ds) == len(set(ds.specs)) and ds.X.shape == (len(ds), N_FEATURES)


def test_stored_xgboost_round_trips_through_the_database(world):
    engine, info = world["engine"], world["xgb"]
    with session_scope(engine) as s:
        row = s.get(Predictor, info["id"])
        assert row.kind == "xgboost" and row.target == "kernel" and row.devices == ["syn"]
        assert row.artefact_format.startswith("xgboost-ubj") and row.artefact[:4] == MAGIC
        held = row.metrics["held_out"]
        assert set(held["all"]) >= {"n", "within_10pct", "within_5pct", "mape", "spearman"} and "linear" in held
    stored = latest(engine, "xgboost", row.device_id)
    ds = load_dataset(engine, "syn")
    answer = registry.best_predictor(engine, "syn")
    assert answer.kind == "xgboost" and answer.predictor_id == info["id"] and "xgboost" in answer.detail
    np.testing.assert_array_equal(stored.load().predict(ds.X), answer.predictor.predict(ds.X))
    assert score(answer.predict_specs(ds.specs), ds.y_ms)["within_10pct"] > 0.8


def test_a_device_with_ten_kernels_gets_the_meta_predictor(world):
    engine = world["engine"]
    assert world["meta"]["metrics"]["split"].startswith("device left out")
    answer = registry.best_predictor(engine, "fresh")
    assert answer.kind == "meta-adapted" and "meta" in answer.detail and "fresh" in answer.detail
    ds = load_dataset(engine, "fresh")
    pred = answer.predict_specs(ds.specs)
    assert pred.shape == (len(ds),) and (pred > 0).all()


def test_errors_name_the_problem_and_what_is_accepted(world):
    engine = world["engine"]
    with pytest.raises(HwsearchError, match="unknown device 'nope'; accepted: empty, fresh, syn, syn-slow"):
        registry.best_predictor(engine, "nope")
    with pytest.raises(HwsearchError, match="no measurements; profile it first: `hwsearch profile"):
        registry.train(engine, "empty", "xgboost")
    with pytest.raises(HwsearchError, match="unknown predictor kind"):
        registry.train(engine, "syn", "forest")
    with pytest.raises(HwsearchError, match="unknown model 'nomodel'; accepted: vit_tiny"):
        ModelLatency(get_model("nomodel"), None)


# -- whole-model latency ---------------------------------------------------------------------------
def test_vectorised_model_latency_is_the_sum_of_kernel_predictions(world):
    answer = registry.best_predictor(world["engine"], "syn")
    model = get_model("vit_tiny")
    space = SearchSpace(model, Capabilities(), Knobs(rank_step=64, allow_emulated=True))
    rng = random.Random(0)
    plans = [space.sample(rng, 0.7) for _ in range(12)]
    plans.append(Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": LayerChoice(format="int4", group_size=64, rank=64)},
                      merge=MergePlan(r=8, start_block=2)))
    ml = ModelLatency(model, answer, Overhead(scale=1.1, per_forward_ms=0.3, per_kernel_ms=0.01, per_cast_melem_ms=0.2))
    merges = list(space.merge_options)
    table = ml.table({n: s.choices() for n, s in space.layers.items()}, merges)
    fast = table.predict(plans)
    for plan, got in zip(plans, fast, strict=True):
        specs = [s for _, s in model_kernels(model, full_choices(model, plan), plan.merge, dtype=model.dtype)]
        kernel_sum = answer.predict_specs(specs).sum()
        assert ml.plan(plan).kernel_ms == pytest.approx(kernel_sum, rel=1e-12)
        assert got == pytest.approx(ml.plan(plan).total_ms, rel=1e-9)
    merged = ml.plan(plans[-1])
    assert merged.by_op.get("tome_merge", 0) > 0  # the merge op itself costs time
    with pytest.raises(HwsearchError, match="not in this table"):
        ml.table({}, [None]).predict([plans[-1]])


def test_an_anchored_model_predicts_its_measured_latency_plus_the_plan_difference(world):
    answer = registry.best_predictor(world["engine"], "syn")
    model = get_model("vit_tiny")
    space = SearchSpace(model, Capabilities(), Knobs(rank_step=64, allow_emulated=True))
    plans = [space.sample(random.Random(i), 0.7) for i in range(6)]
    oh = Overhead(scale=1.1, per_forward_ms=0.3, per_kernel_ms=0.01, per_cast_melem_ms=0.2,
                  family_scale={"linear/fp32": 1.1, "linear/int8": 1.8}, family_offset_ms={"linear/int8": 0.02})
    bare = ModelLatency(model, answer, oh)
    anchored = ModelLatency(model, answer, Overhead.from_bytes(oh.with_anchors({anchor_key(model): 42.0}).to_bytes()))
    assert anchored.anchored and not bare.anchored
    assert anchored.plan(None).total_ms == pytest.approx(42.0)
    for plan in plans:  # the composed difference a plan makes is kept; the constant comes from the measurement
        diff = bare.plan(plan).total_ms - bare.plan(None).total_ms
        assert anchored.plan(plan).total_ms == pytest.approx(42.0 + diff)
    table = anchored.table({n: s.choices() for n, s in space.layers.items()}, list(space.merge_options))
    np.testing.assert_allclose(table.predict(plans), anchored.plans(plans), rtol=1e-9)
    other = get_model("vit_small")  # another model (or the same name with other shapes) is not anchored by it
    assert anchor_key(other) != anchor_key(model) and not ModelLatency(other, answer, anchored.overhead).anchored


def test_layers_timed_in_place_are_used_as_measured(world):
    """A model's in-place table (`Overhead.model_inplace_ms`) answers the layers it holds, as is, in
    the per-plan sum and the search table alike; every other layer keeps its family line."""
    from hwsearch.predictors.model_latency import plan_inplace_keys

    answer = registry.best_predictor(world["engine"], "syn")
    model = get_model("vit_tiny")
    space = SearchSpace(model, Capabilities(), Knobs(rank_step=64, allow_emulated=True))
    plans = [space.sample(random.Random(i), 0.7) for i in range(8)]
    plans.append(Plan(model="vit_tiny", layers={}, merge=MergePlan(r=8, start_block=2)))
    oh = Overhead(scale=1.1, per_forward_ms=0.3, per_kernel_ms=0.01, family_scale={"linear/fp32": 1.1, "linear/int8": 1.8},
                  family_offset_ms={"linear/int8": 0.02}).with_anchors({anchor_key(model): 42.0})
    bare = ModelLatency(model, answer, oh)
    keys = plan_inplace_keys(model, plans[0])
    name, key = next((n, k) for n, k in keys.items() if "int8" in k)
    same = sum(k == key for k in keys.values())
    timed = Overhead.from_bytes(oh.with_inplace(anchor_key(model), {key: 5.0}).to_bytes())
    ml = ModelLatency(model, answer, timed)
    assert ml.overhead.inplace_ms == {key: 5.0} and ModelLatency(get_model("vit_small"), answer, timed).overhead.inplace_ms == {}
    assert ml.plan(None).total_ms == pytest.approx(42.0)  # the anchor is kept
    # each layer running that kernel costs its in-place 5 ms instead of its family line's estimate
    spec = next(s for owner, s in bare.kernels(plans[0]) if owner == name)
    line = (bare.overhead.scale_of(spec) or bare.overhead.scale) * answer.predict_specs([spec])[0] + bare.overhead.offset_of(spec)
    assert ml.plan(plans[0]).total_ms == pytest.approx(bare.plan(plans[0]).total_ms + same * (5.0 - line), rel=1e-9)
    table = ml.table({n: s.choices() for n, s in space.layers.items()}, list(space.merge_options))
    np.testing.assert_allclose(table.predict(plans), ml.plans(plans), rtol=1e-9)
    # a machine 20 % slower throughout: every estimate 20 % higher (what a refit applies on a moved anchor)
    slower = ModelLatency(model, answer, timed.scaled(1.2))
    np.testing.assert_allclose(slower.plans(plans), 1.2 * ml.plans(plans), rtol=1e-9)
    # the rest of the forward pass costs 0.05 ms more per MB of weights streamed (this model's own
    # slope): an anchored plan gains 0.05 ms per MB it streams beyond the uncompressed model
    from dataclasses import replace

    from hwsearch.predictors.model_latency import full_choices, plan_weight_mb

    sloped = ModelLatency(model, answer, replace(timed, weight_ms_per_mb=9.0,
                                                 model_weight_ms_per_mb={anchor_key(model): 0.05}))
    assert sloped.plan(None).total_ms == pytest.approx(42.0)
    extra = [0.05 * (plan_weight_mb(model, full_choices(model, p)) - plan_weight_mb(model, full_choices(model, None)))
             for p in plans]
    np.testing.assert_allclose(sloped.plans(plans), ml.plans(plans) + np.array(extra), rtol=1e-9)
    table = sloped.table({n: s.choices() for n, s in space.layers.items()}, list(space.merge_options))
    np.testing.assert_allclose(table.predict(plans), sloped.plans(plans), rtol=1e-9)


def test_weight_slope_is_fitted_within_each_model():
    """What a forward pass spends beside its layers grows with the MB of weights it streams: the
    slope is fitted within each model (its own intercept), robust to one disturbed timing."""
    from hwsearch.predictors.calibration import weight_slope

    rng = np.random.default_rng(0)
    mb = np.concatenate([rng.uniform(30, 343, 8), rng.uniform(10, 90, 8)])
    groups = ["vit"] * 8 + ["bert"] * 8
    rest = np.where(np.array(groups) == "vit", 15.0, 4.0) + 0.04 * mb + rng.normal(0, 0.05, 16)
    rest[3] += 30.0  # one disturbed timing
    pooled, own = weight_slope(mb, rest, groups)
    assert pooled == pytest.approx(0.04, abs=0.005) and own["vit"] == pytest.approx(0.04, abs=0.005)
    assert own["bert"] == pytest.approx(0.04, abs=0.01)
    assert weight_slope(mb[:3], rest[:3], groups[:3]) == (pytest.approx(0.04, abs=0.01), {})  # too few for its own
    assert weight_slope(mb, -rest, groups)[0] == 0.0  # weights never speed the rest up
    # a small model's noisy residuals: the slope takes no more than a plan's whole rest could pay
    tiny_mb, residual, whole = np.array([0.2, 0.4, 0.8]), np.array([-0.3, 0.0, 0.3]), np.array([0.25, 0.3, 0.35])
    pooled, own = weight_slope(tiny_mb, residual, ["tiny"] * 3, 3, whole)
    assert own["tiny"] == pytest.approx(0.35 / 0.8) and pooled == pytest.approx(0.35 / 0.8)


def test_overhead_fit_recovers_its_terms_and_round_trips():
    rng = np.random.default_rng(0)
    k, n, c = rng.uniform(10, 100, 30), rng.integers(100, 140, 30).astype(float), rng.uniform(0, 5, 30)
    true = Overhead(1.2, 3.0, 0.05, 0.7)
    fit = Overhead.fit(k, n, c, true.apply(k, n, c))
    assert fit.scale == pytest.approx(1.2, rel=1e-6) and fit.per_cast_melem_ms == pytest.approx(0.7, rel=1e-5)
    assert Overhead.from_bytes(fit.to_bytes()) == fit


# -- CLI ---------------------------------------------------------------------------------------------
def _run(args: list[str]):
    from hwsearch.cli import app

    return CliRunner().invoke(app, args)


def test_cli_train_predict_and_bench_json(world, tmp_path: Path):
    url = world["url"]
    res = _run(["train", "--device", "syn-slow", "--kind", "xgboost", "--json", "--db", url])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["device"] == "syn-slow" and doc["trained"][0]["kind"] == "xgboost"
    assert {"within_10pct", "mape", "spearman"} <= set(doc["trained"][0]["metrics"]["held_out"]["all"])
    plan = Plan(model="vit_tiny", layers={"blocks.0.mlp.fc1": LayerChoice(format="int8")}, merge=MergePlan(r=4))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    res = _run(["predict", "--device", "fresh", "--model", "vit_tiny", "--plan", str(plan_file), "--json", "--db", url])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["predictor"]["kind"] == "meta-adapted" and doc["latency_ms"] > 0
    assert set(doc) >= {"kernel_ms", "overhead_ms", "kernels", "by_op_ms", "predictor"}
    res = _run(["bench", "predictors", "--device", "syn", "--json", "--db", url])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for split in ("random", "extrapolation"):
        fam = doc["splits"][split]["scores"]
        assert {"within_10pct", "within_5pct", "mape", "spearman"} <= set(fam["all"]) and "linear" in fam
    assert "median_cov" in doc["noise_floor"] and "nn-Meter" in doc["published"]["source"]


def test_cli_bench_model_latency_times_real_plans(world):
    from hwsearch.predictors.calibration import TIE_POINTS

    res = _run(["bench", "model-latency", "--device", "syn", "--model", "digits_vit,vit_tiny", "--plans", "4", "--json",
                "--db", world["url"]])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"mape", "within_10pct", "rows"} <= set(doc) and len(doc["rows"]) == 4
    assert [r["model"] for r in doc["rows"]] == ["digits_vit", "vit_tiny"] * 2  # the overhead spans both
    assert set(doc["per_model"]) == {"digits_vit", "vit_tiny"}
    # the composition scored and stored is the richest within a point of the lowest held-out error
    assert doc["mape"] <= min(v["mape"] for v in doc["compositions"].values()) + max(TIE_POINTS, doc["noise_floor_mape"]) + 1e-9
    assert doc["covering_plans"] > 0
    assert doc["mape"] == pytest.approx(doc["compositions"][doc["composition"]]["mape"])
    if doc["composition"] == "kernel_sum":
        assert doc["overhead"]["scale"] == 1.0
    assert doc["band_pct"] >= 0 and doc["within_band"] >= 0.5 and set(doc["leave_one_model_out"]) == set(doc["per_model"])
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 and r["layers_in_model_ms"] > 0 for r in doc["rows"])
    stored = latest(world["engine"], "overhead", device_backend(world["engine"], "syn")[0])
    assert stored is not None and stored.target == "model-overhead" and stored.load().band_pct == doc["band_pct"]
    # the re-timing drift as timed, and at the machine states the two timings were taken in
    assert stored.load().retime_state_band_pct == doc["retime_state_band_pct"] >= 0
    # each model's uncompressed latency, timed beside its plans, anchors its predictions
    assert set(doc["anchors_ms"]) == {"digits_vit", "vit_tiny"} and all(v > 0 for v in doc["anchors_ms"].values())
    assert set(stored.load().anchors) == {anchor_key(get_model(m)) for m in ("digits_vit", "vit_tiny")}
    assert set(doc["unanchored"]["per_model"]) == set(doc["per_model"])
    # each plan is judged at the machine state its anchor, timed beside it, shows; raw beside it
    for r in doc["rows"]:
        assert r["machine_state"] > 0 and r["measured_at_median_state_ms"] == pytest.approx(r["measured_ms"] / r["machine_state"])
    state = doc["machine_state"]
    assert state["p10_p50_p90"][0] <= state["p10_p50_p90"][2] and set(state["raw"]["per_model"]) == set(doc["per_model"])
    assert state["raw"]["noise_floor_mape"] is not None


def test_cli_errors_are_one_line(world):
    res = subprocess.run([sys.executable, "-m", "hwsearch.cli", "predict", "--device", "nope", "--model", "vit_base",
                          "--db", world["url"]], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: unknown device 'nope'; accepted: empty, fresh, syn, syn-slow"]
    res = _run(["bench", "model-latency", "--device", "syn-slow", "--model", "digits_vit", "--db", world["url"]])
    assert isinstance(res.exception, HwsearchError) and "profiled on host" in str(res.exception)
    res = _run(["predict", "--device", "syn", "--model", "nomodel", "--db", world["url"]])
    assert isinstance(res.exception, HwsearchError) and "unknown model" in str(res.exception)


def test_cli_bench_search_times_picks_under_several_budgets(world):
    from hwsearch.predictors.model_latency import Overhead, store_overhead

    # the synthetic device's calibration (an earlier test) can carry a band wide enough that no
    # plan fits any budget; an uncalibrated composition keeps the picks
    store_overhead(world["engine"], "syn", Overhead(), {}, {"note": "test"})
    from hwsearch.bench.search import BUDGET_QUANTILES

    res = _run(["bench", "search", "--device", "syn", "--model", "digits_vit,vit_tiny", "--trials", "30", "--seeds", "1",
                "--samplers", "nsga2", "--verify", "2", "--no-profile-missing", "--json", "--db", world["url"]])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for v in (d["violation_rate"] for d in doc["per_model"].values()):
        assert v["measured"] and v["picks"] == len(v["rows"]) and len(v["budgets_ms"]) == len(BUDGET_QUANTILES)
        assert v["plans_timed"] >= 2 and 1 <= len(v["rounds"]) <= 3 and v["rounds"][0]["picks"] >= 2
        assert 0 <= v["violation_rate"] <= 1
        # what is handed over fits its budget by its verified measurement widened by the re-timing drift,
        # and is timed afresh; a budget nothing fits after a refit is refused
        assert all(r["bound_ms"] <= r["budget_ms"] + 1e-9 and r["bound_ms"] >= r["verified_ms"] > 0
                   and r["measured_ms"] > 0 for r in v["rows"])
        assert v["counted_on"].startswith("the picks timed afresh") and v["withdrawn_picks"] >= 0
        assert v["retime_margin_pct"] >= 0 and not v["retime_margin_at_state"]  # an uncalibrated overhead: none stored
        assert v["picks"] > 0 or len(v["refused_budgets_ms"]) == len(BUDGET_QUANTILES)
    # the picks of both models pooled into one rate, each row naming its model
    pooled = doc["violation_rate"]
    assert pooled["picks"] == sum(d["violation_rate"]["picks"] for d in doc["per_model"].values())
    assert {r["model"] for r in pooled["rows"]} <= {"digits_vit", "vit_tiny"} and 0 <= pooled["violation_rate"] <= 1
    assert set(doc["hv_ratio_min"]) == {"nsga2", "nsga2_no_warm_start", "random"}


def test_bench_search_counts_violations_in_the_calibrated_machine_state(world, monkeypatch):
    """The fresh timing that counts violations runs beside the uncompressed model; while that runs
    far from the anchor the device stores (here: stored at a tenth of its time, as if the machine
    had slowed tenfold), the picks are timed again, and a state that never comes back is said."""
    import hwsearch.bench.search as bench_search
    from hwsearch.predictors.model_latency import Overhead, anchor_key, store_overhead
    from hwsearch.search.verify import time_plans
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import Plan

    spec = get_model("digits_vit")
    fp = {"threads": 1}
    now = time_plans(spec, [Plan(model=spec.name, device="syn", layers={})], int(fp["threads"]))[0]["measured_ms"]
    store_overhead(world["engine"], "syn", Overhead(anchors={anchor_key(spec): now / 10}), {}, {"note": "test"})
    monkeypatch.setattr(bench_search, "STATE_PAUSE_S", 0.0)
    monkeypatch.setattr(bench_search, "STATE_TRIES", 2)
    res = _run(["bench", "search", "--device", "syn", "--model", "digits_vit", "--trials", "20", "--seeds", "1",
                "--samplers", "nsga2", "--verify", "1", "--no-profile-missing", "--json", "--db", world["url"]])
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["violation_rate"]
    if v["picks"]:
        assert len(v["machine_states"]) == 2 and all(s > 5 for s in v["machine_states"]) and v["machine_disturbed"]
        assert all(r["machine_state"] == v["machine_states"][-1] and r["verified_state"] > 5 for r in v["rows"])
    store_overhead(world["engine"], "syn", Overhead(), {}, {"note": "test"})
