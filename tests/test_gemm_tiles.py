"""GPU spec sheets, the tile/wave roofline and the cross-GPU GEMM predictor, on small synthetic data.

Synthetic GPUs follow ``overhead + smooth_max(compute / e_c, memory / e_m)`` times one shared
shape-dependent factor, so the predictor can be checked against a known truth in well under a
second; the real numbers come from ``hwsearch bench gemm-transfer``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hwsearch.errors import HwsearchError
from hwsearch.predictors.gemm_tiles import (
    GEMM_TILE_FEATURES,
    GemmTask,
    GemmTransferPredictor,
    RooflineFit,
    fit_roofline,
    gemm_terms,
    gemm_tile_features,
)
from hwsearch.profilers import fingerprint as fp
from hwsearch.profilers.gpu_specs import SPECS, gpu_spec, gpu_spec_from_properties

SMALL = {"n_estimators": 40, "max_depth": 3}


def shapes(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (2.0 ** rng.integers(0, 13, n), 2.0 ** rng.integers(9, 15, n), 2.0 ** rng.integers(10, 16, n))


def synthetic(name: str, fit: RooflineFit, n: int = 120, seed: int = 0) -> GemmTask:
    """A GPU whose GEMMs follow its roofline times a shape factor every GPU shares (+-3 %)."""
    M, K, N = shapes(n, seed)
    spec = gpu_spec(name)
    compute, memory = gemm_terms(M, K, N, spec)
    shared = 1.0 + 0.03 * np.sin(np.log2(M) + np.log2(N))
    return GemmTask(name, spec, M, K, N, fit.seconds(compute, memory) * shared * 1e3)


# -- spec sheets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,key", [
    ("h100", "h100-sxm"), ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
    ("a100", "a100-sxm4-80gb"), ("NVIDIA A40", "a40"), ("NVIDIA H200", "h200-sxm"), ("Tesla V100-SXM2-32GB", "v100-sxm2"),
])
def test_gpu_spec_names(name, key):
    assert gpu_spec(name) is SPECS[key]


def test_gpu_spec_table_is_consistent():
    for s in SPECS.values():
        assert s.sm_count > 0 and s.fp16_tflops > 0 and s.memory_gbs > 0 and s.l2_mb > 0 and s.source
        assert s.peak_flops == s.fp16_tflops * 1e12
    assert (gpu_spec("h100").fp16_tflops, gpu_spec("h100").memory_gbs) == (989.4, 3350.0)
    assert gpu_spec("a40").sm_count == 84 and gpu_spec("a100").l2_mb == 40.0


def test_unknown_gpu_lists_the_table():
    with pytest.raises(HwsearchError, match="no spec sheet for GPU 'x100'; accepted: .*h100-sxm"):
        gpu_spec("x100")


def test_spec_from_driver_properties():
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", multi_processor_count=114, L2_cache_size=25 << 20)
    spec = gpu_spec_from_properties(props)
    assert spec is not None and spec.sm_count == 114 and spec.l2_mb == 25.0 and spec.fp16_tflops == 989.4
    assert gpu_spec_from_properties(SimpleNamespace(name="NVIDIA GeForce GTX 480")) is None


def test_fingerprint_stores_the_spec_sheet(monkeypatch):
    props = SimpleNamespace(name="NVIDIA A40", major=8, minor=6, multi_processor_count=84, total_memory=48 << 30,
                            L2_cache_size=6 << 20)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    doc = fp.fingerprint("cuda")
    assert doc["sm_count"] == 84 and doc["gpu_spec"]["name"] == "a40" and doc["gpu_spec"]["memory_gbs"] == 696.0
    assert "gpu_spec" not in fp.fingerprint("cpu")


# -- tiles, waves, roofline --------------------------------------------------------------------
def test_wave_quantisation_stretches_compute():
    spec = gpu_spec("a100")
    # 108 SMs: a partly filled last wave costs more per FLOP than full waves
    full, _ = gemm_terms([128 * 108], [4096], [128], spec)
    tail, _ = gemm_terms([128 * 109], [4096], [128], spec)
    ideal = 2.0 * 128 * 4096 * 128 / spec.peak_flops
    assert full[0] / (108 * ideal) < tail[0] / (109 * ideal)
    _, mem = gemm_terms([1], [4096], [4096], spec)
    assert mem[0] == pytest.approx(2.0 * (4096 + 4096 * 4096 + 4096) / spec.bandwidth)


def test_tile_features_are_finite_and_named():
    f = gemm_tile_features(*shapes(50), gpu_spec("h100"))
    assert f.shape == (50, len(GEMM_TILE_FEATURES)) and np.isfinite(f).all()
    with pytest.raises(HwsearchError, match="one length"):
        gemm_tile_features([1, 2], [3], [4, 5], gpu_spec("h100"))
    with pytest.raises(HwsearchError, match=">= 1"):
        gemm_terms([0], [1], [1], gpu_spec("h100"))


def test_fit_roofline_recovers_a_gpu():
    truth = RooflineFit(4.0, 0.75, 0.85)
    t = synthetic("h100", truth)
    c, m = gemm_terms(t.M, t.K, t.N, t.spec)
    got = fit_roofline(c, m, np.log(truth.seconds(c, m)))
    assert got.compute_eff == pytest.approx(0.75, rel=0.02) and got.memory_eff == pytest.approx(0.85, rel=0.02)
    # a strong prior holds the fit near it
    prior = RooflineFit(4.0, 0.5, 0.5)
    held = fit_roofline(c[:3], m[:3], np.log(truth.seconds(c[:3], m[:3])), prior=prior, strength=100.0)
    assert held.compute_eff == pytest.approx(0.5, rel=0.05)


# -- transfer ------------------------------------------------------------------------------------
def test_transfer_to_a_new_gpu_from_its_spec_sheet_and_shots():
    sources = [synthetic("a100", RooflineFit(4.0, 0.75, 0.8)), synthetic("a40", RooflineFit(6.0, 0.7, 0.75), seed=1)]
    model = GemmTransferPredictor(**SMALL).fit(sources)
    target = synthetic("h100", RooflineFit(3.0, 0.6, 0.9), seed=2)
    zero = model.adapt(target.spec).predict(target.M, target.K, target.N)
    few = model.adapt(target.spec, target.M[:10], target.K[:10], target.N[:10], target.y_ms[:10])
    err_zero = np.abs(zero / target.y_ms - 1)
    err_few = np.abs(few.predict(target.M[10:], target.K[10:], target.N[10:]) / target.y_ms[10:] - 1)
    assert np.median(err_few) < 0.05 and np.median(err_few) < np.median(err_zero)
    assert few.fit.compute_eff < model.prior_.compute_eff  # the shots pulled it toward the truth (0.6)


def test_transfer_bad_input():
    with pytest.raises(HwsearchError, match="at least one source GPU"):
        GemmTransferPredictor().fit([])
    with pytest.raises(HwsearchError, match="not fitted"):
        GemmTransferPredictor().adapt(gpu_spec("h100"))
    t = synthetic("a100", RooflineFit(4.0, 0.75, 0.8), n=20)
    with pytest.raises(HwsearchError, match="positive finite"):
        GemmTransferPredictor(**SMALL).fit([GemmTask("a100", t.spec, t.M, t.K, t.N, -t.y_ms)])
    model = GemmTransferPredictor(**SMALL).fit([t])
    with pytest.raises(HwsearchError, match="2 positive finite"):
        model.adapt(t.spec, t.M[:2], t.K[:2], t.N[:2], t.y_ms[:3])
