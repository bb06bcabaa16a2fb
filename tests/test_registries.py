"""Every extension point is a registry its members join by themselves.

Shown here with toy members defined in this file: a new predictor kind, a new backend (with its
capability function and one kernel) and a new export target each take one module's worth of
code plus its registration, are listed and usable end to end through the public paths, and are
gone again once unregistered. The conformance checks (`predictors.checks`, `kernels.checks`)
run over every registered kind and every backend this machine runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from hwsearch.db.engine import open_db
from hwsearch.errors import HwsearchError
from hwsearch.export import ExportWarning, export
from hwsearch.export.targets import Target, formats, register_target, unregister_target
from hwsearch.kernels import registry as kernel_registry
from hwsearch.kernels.apply import apply_plan
from hwsearch.kernels.checks import check_backend, check_native, check_specs
from hwsearch.kernels.models import ViT
from hwsearch.kernels.specs import LinearSpec, OpSpec
from hwsearch.predictors import registry
from hwsearch.predictors.base import Estimator, check_latency, check_X
from hwsearch.predictors.checks import check_estimator, check_round_trip
from hwsearch.predictors.dataset import device_backend, load_dataset
from hwsearch.predictors.kinds import (
    PredictorKind,
    get_kind,
    kinds,
    register_kind,
    train_choices,
    unregister_kind,
)
from hwsearch.predictors.meta import ADAPTED_KIND, META_KIND, MetaPredictor, MetaTask
from hwsearch.predictors.model_latency import OVERHEAD_KIND, Overhead
from hwsearch.predictors.store import latest, store_predictor
from hwsearch.predictors.xgb import XGB_KIND, XGBoostPredictor
from hwsearch.profilers import store
from hwsearch.profilers.sampling import random_set
from hwsearch.spaces.catalog import DIGITS_VIT, get_model
from hwsearch.spaces.knobs import Capabilities, SearchSpace
from hwsearch.spaces.plan import LayerChoice, MergePlan, Plan


def _data(n: int = 120, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.exp(X @ rng.normal(size=d) * 0.3 + 0.05 * rng.normal(size=n))


# -- predictor kinds: conformance of every registered one -----------------------------------------
FAST_META = {"hidden": 16, "n_basis": 4, "steps": 20, "batch_tasks": 2, "query": 32, "support_max": 20}


def _meta_case() -> tuple[MetaPredictor, Any, Any]:
    X, y = _data()
    ref = np.arange(8)
    tasks = [MetaTask(f"d{i}", X, y * f, y[ref] * f) for i, f in enumerate((0.5, 1.0, 3.0))]
    return MetaPredictor(**FAST_META), (lambda m: m.meta_fit(tasks)), (lambda m: m.adapt(y[ref] * 2.0, X[:12], y[:12] * 2.0))


def _check_xgboost() -> None:
    X, y = _data()
    check_estimator(XGBoostPredictor(n_estimators=40, learning_rate=0.2, early_stopping_rounds=10), X, y)


def _check_meta() -> None:
    X, y = _data()
    est, fit, adapt = _meta_case()
    check_estimator(est, X, y, fit=fit, as_predictor=adapt)


def _check_meta_adapted() -> None:
    X, _ = _data()
    est, fit, adapt = _meta_case()
    check_round_trip(adapt(fit(est)), X)


def _check_overhead() -> None:
    overhead = Overhead(scale=1.2, per_forward_ms=0.3, per_kernel_ms=0.01, per_cast_melem_ms=0.002, fitted_on=9,
                        family_scale={"linear/bf16": 0.9}, band_pct=5.0, per_merge_block_ms=0.05,
                        anchors={"digits_vit@1": 1.5})
    parts = (np.array([1.0, 2.0]), np.array([30, 40]), np.array([0.5, 0.1]), 0.2, 3.0)
    loaded = check_round_trip(overhead, np.zeros((2, 1)), lambda o, _: o.apply(*parts), kind=OVERHEAD_KIND)
    assert loaded == overhead


KIND_CHECKS = {XGB_KIND: _check_xgboost, META_KIND: _check_meta, ADAPTED_KIND: _check_meta_adapted,
               OVERHEAD_KIND: _check_overhead}


def test_every_registered_kind_has_a_conformance_check():
    assert set(kinds()) == set(KIND_CHECKS)
    assert train_choices() == ["xgboost", "meta", "all"]


@pytest.mark.parametrize("kind", sorted(KIND_CHECKS))
def test_registered_kind_conforms(kind):
    KIND_CHECKS[kind]()


def test_the_checks_catch_a_predictor_that_breaks_the_rules():
    X, y = _data()

    @dataclass(eq=False)
    class Sloppy(XGBoostPredictor):
        def fit(self, X, y):  # noqa: N803 - scikit-learn's names
            super().fit(X, y)
            self.history = [1.0]  # a fitted attribute without the trailing underscore
            return self

    with pytest.raises(HwsearchError, match="predictor check 'fit' failed: fitting adds attributes \\['history'\\]"):
        check_estimator(Sloppy(n_estimators=10), X, y)


# -- a new predictor kind: one module's worth of code plus its registration -------------------------
@dataclass(eq=False)
class MedianRatio(Estimator):
    """Toy kind: latency = the training rows' median ratio to the roofline column, times it."""

    kind: ClassVar[str] = "median-ratio"
    fitted_attr: ClassVar[str] = "ratio_"
    column: int = 0

    def __post_init__(self) -> None:
        self.ratio_: float | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> MedianRatio:
        X = check_X(X)
        y = check_latency(y, X.shape[0])
        self.ratio_ = float(np.median(np.log(y) - X[:, self.column]))
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._require_fitted()
        X = check_X(X, self.n_features_in_)
        return np.exp(X[:, self.column] + self.ratio_)

    def _fitted_state(self) -> tuple[dict[str, Any], bytes]:
        return {"n_features": self.n_features_in_}, json.dumps({"ratio": self.ratio_}).encode()

    def _restore(self, header: dict[str, Any], payload: bytes) -> None:
        self.ratio_ = json.loads(payload)["ratio"]
        self.n_features_in_ = int(header["n_features"])


def train_median(engine: Any, device: str, params: dict[str, Any] | None = None, seed: int = 0,
                 progress: Any = None) -> dict[str, Any]:
    ds = load_dataset(engine, device)
    model = MedianRatio(**(params or {})).fit(ds.X, ds.y_ms)
    dev_id, _ = device_backend(engine, device)
    pid = store_predictor(engine, kind=MedianRatio.kind, name=f"median-{device}", device_id=dev_id, devices=[device],
                          target="kernel", train_summary=ds.summary(), metrics={}, artefact=model.to_bytes())
    return {"id": pid, "kind": MedianRatio.kind, "device": device, "metrics": {}, "train_summary": ds.summary()}


@pytest.fixture
def toy_kind():
    register_kind(PredictorKind(MedianRatio.kind, MedianRatio.from_bytes, "json", train_median, order=2))
    yield MedianRatio.kind
    unregister_kind(MedianRatio.kind)


def _device_db(tmp_path) -> tuple[str, Any]:
    url = f"sqlite:///{tmp_path / 'kinds.db'}"
    engine = open_db(url)
    dev = store.ensure_device(engine, "toybox", "cpu", {"backend": "cpu", "host": "elsewhere", "threads": 1})
    rows = []
    for spec in list(dict.fromkeys(random_set(30, seed=2, max_flops=1e8)))[:30]:
        us = 5.0 + spec.flops / 1e4
        rows.append((spec, {"implementation": kernel_registry.select(spec, "cpu").name, "backend": "cpu", "native": True,
                            "median_us": us, "p10_us": us, "p90_us": us, "mean_us": us, "repeats": 5, "cov": 0.01,
                            "threads": 1, "environment": {}}))
    store.write_chunk(engine, dev, None, rows)
    return url, engine


def test_a_new_predictor_kind_is_one_module_plus_registration(tmp_path, toy_kind):
    from hwsearch.cli import app

    X, y = _data()
    check_estimator(MedianRatio(column=1), X, y)  # it conforms like the built-in kinds
    assert train_choices() == ["xgboost", "meta", toy_kind, "all"]
    url, engine = _device_db(tmp_path)
    [done] = registry.train(engine, "toybox", toy_kind)
    row = latest(engine, toy_kind, device_backend(engine, "toybox")[0])
    assert row is not None and row.id == done["id"] and row.artefact_format == "json"
    ds = load_dataset(engine, "toybox")
    assert np.allclose(row.load().predict(ds.X), MedianRatio().fit(ds.X, ds.y_ms).predict(ds.X))
    result = CliRunner().invoke(app, ["train", "--device", "toybox", "--kind", toy_kind, "--db", url])
    assert result.exit_code == 0, result.output
    assert f"stored {toy_kind} predictor #{done['id'] + 1}" in result.output
    engine.dispose()
    unregister_kind(toy_kind)
    with pytest.raises(HwsearchError, match=f"unknown predictor kind '{toy_kind}'; accepted: xgboost, meta, all"):
        registry.train(engine, "toybox", toy_kind)
    with pytest.raises(HwsearchError, match=f"unknown stored predictor kind '{toy_kind}'"):
        get_kind(toy_kind)


# -- backends: conformance of every one this machine runs; a new one ---------------------------------
@pytest.mark.parametrize("backend", kernel_registry.backends())
def test_every_runnable_backend_passes_the_kernel_checks(backend):
    if not kernel_registry.capabilities(backend)["available"]:
        pytest.skip(f"this machine has no {backend} device")
    report = check_backend(backend)
    available = {k.name for k in kernel_registry.all_kernels() if k.backend == backend and k.available()}
    assert available <= set(report.kernels) and report.cases >= len(available)


class ToyLinear(kernel_registry.Kernel):
    """The toy backend's one kernel: fp32 dense GEMMs."""

    name = "toy.linear.fp32"
    op = "linear"
    backend = "toy"

    def supports(self, spec: OpSpec) -> bool:
        return isinstance(spec, LinearSpec) and spec.rank is None and spec.format == "fp32" and spec.nm is None

    def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
        return bool(caps.get("fp32"))

    def run(self, spec: OpSpec, state: kernel_registry.State, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, state["weight"], state.get("bias"))


def toy_capabilities() -> dict[str, Any]:
    return {"available": True, "fp32": True, "nm": False}


@pytest.fixture
def toy_backend():
    kernel_registry.register_backend(kernel_registry.Backend("toy", toy_capabilities, "cpu"))
    kernel_registry.register(ToyLinear)
    yield "toy"
    kernel_registry.unregister_backend("toy")


def test_a_new_backend_is_one_module_plus_registration(toy_backend):
    assert toy_backend in kernel_registry.backends()
    fp32 = [s for s in check_specs() if isinstance(s, LinearSpec) and s.format == "fp32" and s.sparsity == "dense"]
    report = check_backend(toy_backend, fp32)  # low rank comes for free: two toy GEMMs
    assert report.kernels == ["lowrank[toy.linear.fp32]", "toy.linear.fp32"]
    spec = get_model("digits_vit")
    space = SearchSpace(spec, Capabilities.from_dict(kernel_registry.capabilities(toy_backend), toy_backend))
    assert {c.format for c in space.layers["head"].choices()} == {"fp32"}
    torch.manual_seed(0)
    model = ViT(DIGITS_VIT).eval()
    plan = Plan(model="digits_vit", layers={"blocks.0.mlp.fc1": LayerChoice(format="fp32", rank=32)})
    built = apply_plan(model, plan, spec, backend=toy_backend)
    assert "(fc1): CompressedLinear(64→128, fp32/r32, kernel=lowrank[toy.linear.fp32])" in repr(built)
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert built(x).shape == model(x).shape
    kernel_registry.unregister_backend(toy_backend)
    with pytest.raises(HwsearchError, match="unknown backend 'toy'; accepted: cpu, cuda"):
        kernel_registry.select(LinearSpec(4, 32, 32, "fp32"), toy_backend)


def test_a_backend_the_machine_cannot_run_is_one_line(toy_backend):
    kernel_registry.unregister_backend(toy_backend)
    kernel_registry.register_backend(kernel_registry.Backend("toy", lambda: {"available": False}, "cpu",
                                                             missing="there is no toy here"))
    with pytest.raises(HwsearchError, match="backend 'toy' asked for but there is no toy here; accepted: --backend cpu"):
        check_backend(toy_backend)


def test_the_kernel_checks_catch_a_dishonest_native_flag(toy_backend):
    class Boastful(ToyLinear):
        name = "toy.linear.boastful"
        priority = 1

        def supports(self, spec: OpSpec) -> bool:
            return isinstance(spec, LinearSpec) and spec.rank is None and spec.format == "fp8"

        def native(self, spec: OpSpec, caps: dict[str, Any]) -> bool:
            return True

        def prepare(self, spec: OpSpec, params: kernel_registry.State) -> kernel_registry.State:
            return {"weight": params["weight"]}

        def run(self, spec: OpSpec, state: kernel_registry.State, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x.float(), state["weight"]).to(x.dtype)

    kernel_registry.register(Boastful)
    with pytest.raises(HwsearchError, match="toy.linear.boastful claims a fast path for linear.*fp8=False"):
        check_native(toy_backend, [LinearSpec(9, 256, 48, "fp8")])


# -- export targets: a new one --------------------------------------------------------------------
def render_toy(view: Any, path: Any, kept_in: str) -> tuple[str, list[str]]:
    """Toy target: each layer's format; it has no word for the merge schedule."""
    lost = [f"the merge schedule is not expressed (kept in {kept_in})"] if view.plan.merge else []
    return json.dumps({name: c.format for name, c in view.plan.layers.items()}) + "\n", lost


def test_a_new_export_target_is_one_module_plus_registration(tmp_path):
    register_target(Target("toy-json", render_toy, "toy.json"))
    try:
        assert "toy-json" in formats()
        plan = Plan(model="digits_vit", layers={"head": LayerChoice(format="int8")}, merge=MergePlan(r=2))
        with pytest.warns(ExportWarning, match="merge schedule is not expressed"):
            result = export(plan, "toy-json", tmp_path / "out.json")
        assert json.loads(result.path.read_text()) == {"head": "int8"}
        assert Plan.from_file(result.plan_path) == plan
    finally:
        unregister_target("toy-json")
    with pytest.raises(HwsearchError, match="unknown export format 'toy-json'; accepted: plan, compressed-tensors, modelopt"):
        export(plan, "toy-json", tmp_path / "again.json")
