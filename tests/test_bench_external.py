"""External benchmarks: encoders, loaders, HELP query sets, bad input, and the CLI JSON contract.

Reads the external data where `hwsearch bench` does (`config.external_data_dir()`: HWSEARCH_EXTERNAL_DATA,
else ``external`` in the data folder) and skips when it is absent.
The CLI runs use tiny settings (few devices, few training steps) through the benchmark's
``DEFAULT_PARAMS`` so they stay fast; the real numbers come from ``hwsearch bench ...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hwsearch.bench import gemm_transfer
from hwsearch.bench import help as help_bench
from hwsearch.bench.external import (
    encode_fbnet,
    encode_nb201,
    encode_ofa,
    fbnet_costs,
    gemm_features,
    load_help,
    load_vidur,
    load_vidur_rows,
    repeat_agreement,
)
from hwsearch.bench.help import PROTOCOLS, query_indices, run_help
from hwsearch.cli import app
from hwsearch.config import external_data_dir
from hwsearch.errors import HwsearchError
from hwsearch.predictors.gemm_tiles import RooflineFit, gemm_terms
from hwsearch.profilers.gpu_specs import gpu_spec

EXTERNAL = external_data_dir()
HELP_DIR = EXTERNAL / "help"
VIDUR = EXTERNAL / "vidur" / "gemm_fp16.csv"
needs_help = pytest.mark.skipif(not HELP_DIR.is_dir(), reason=f"HELP data not found at {HELP_DIR}")
needs_vidur = pytest.mark.skipif(not VIDUR.is_file(), reason=f"Vidur data not found at {VIDUR}")
TINY = {"hidden": 16, "n_basis": 8, "steps": 15, "batch_tasks": 2, "query": 32}


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(help_bench, "DEFAULT_PARAMS", TINY)
    monkeypatch.setattr(gemm_transfer, "DEFAULT_PARAMS", TINY)
    monkeypatch.setattr(gemm_transfer, "TRANSFER_PARAMS", {"n_estimators": 20, "max_depth": 3})


def vidur_like(path: Path, gpus=("a100", "a40", "h100"), n: int = 80) -> Path:
    """A small Vidur-shaped CSV: each GPU's spec-sheet roofline, 2 models per shape (one 3 % off)."""
    rng = np.random.default_rng(0)
    M, K, N = 2 ** rng.integers(0, 12, n), 2 ** rng.integers(9, 14, n), 2 ** rng.integers(10, 15, n)
    rows = []
    for g in gpus:
        c, m = gemm_terms(M, K, N, gpu_spec(g if g != "x100" else "a100"))
        ms = RooflineFit(4.0, 0.7, 0.8).seconds(c, m) * 1e3
        for model, f in (("x", 1.0), ("y", 1.03)):
            rows += [{"gpu": g, "model": model, "M": a, "K": b, "N": d, "median_ms": t * f}
                     for a, b, d, t in zip(M, K, N, ms, strict=True)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# -- encoders ----------------------------------------------------------------------------------
def test_nb201_encoder_one_hot_and_live_edges():
    v = encode_nb201("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    assert v.shape == (60,)
    assert v[:30].reshape(6, 5).sum(1).tolist() == [1] * 6
    assert v[0 * 5 + 3] == 1 and v[3 * 5 + 1] == 1
    # node 1 never reaches the output (its out-edges are 'none'), so the conv on 0->1 is dead
    live = v[30:].reshape(6, 5)
    assert live[0].sum() == 0 and live[3, 1] == 1 and live.sum() == 1
    with pytest.raises(HwsearchError, match="accepted"):
        encode_nb201("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(HwsearchError, match="6"):
        encode_nb201("|none~0|")


def test_fbnet_encoder_matches_help_encoding():
    v = encode_fbnet([0, 3, 4, 7, 8] + [1] * 17).reshape(22, 6)
    assert v.shape == (22, 6)
    assert v[0].tolist() == [1, 0, 1, 0, 0, 0]  # k3, e1
    assert v[1].tolist() == [1, 0, 0, 0, 0, 1]  # k3, e6
    assert v[2].tolist() == [0, 1, 1, 0, 0, 0]  # k5, e1
    assert v[4].sum() == 0  # skip
    assert encode_fbnet("[" + ", ".join(["2"] * 22) + "]").shape == (132,)
    with pytest.raises(HwsearchError):
        encode_fbnet([9] * 22)


def test_fbnet_costs_order_architectures_by_work():
    """Cost estimates: 5 finite logs; all-skip is cheapest, k5/e6 everywhere the most expensive."""
    skip, light, heavy = fbnet_costs([8] * 22), fbnet_costs([0] * 22), fbnet_costs([7] * 22)
    assert skip.shape == (5,) and np.isfinite(heavy).all()
    assert (skip <= light).all() and (light < heavy).all()
    assert fbnet_costs([1] * 22)[1] < fbnet_costs([0] * 22)[1]  # grouped 1x1: fewer pointwise MACs
    np.testing.assert_array_equal(fbnet_costs(str([3] * 22)), fbnet_costs([3] * 22))


def test_ofa_encoder_zeroes_inactive_layers():
    arch = {"ks": [3] * 20, "e": [6] * 20, "d": [2, 3, 4, 2, 2], "r": 160}
    v = encode_ofa(json.dumps(arch))
    assert v.shape == (146,)
    assert v[:60].sum() == 13 and v[60:120].sum() == 13
    assert v[120 + (160 - 128) // 4] == 1 and v[145] == pytest.approx((160 / 224) ** 2)
    with pytest.raises(HwsearchError):
        encode_ofa({"ks": [3], "e": [6], "d": [2], "r": 160})


def test_gemm_features_are_finite():
    f = gemm_features(np.array([1, 4096]), np.array([4096, 4096]), np.array([11008, 4096]))
    assert f.shape == (2, 11) and np.isfinite(f).all()


# -- loaders and protocol -----------------------------------------------------------------------
@needs_help
@pytest.mark.parametrize("space,d,n", [("nasbench201", 60, 15625), ("fbnet", 132, 5000), ("ofa", 146, 5000)])
def test_load_help(space, d, n):
    data = load_help(HELP_DIR, space)
    assert data.X.shape == (n, d)
    proto = PROTOCOLS[space]
    assert set(proto.train + proto.valid + proto.test) <= set(data.devices)
    assert (data.latency.to_numpy() > 0).all()


@needs_help
def test_query_set_is_help_protocol():
    data = load_help(HELP_DIR, "nasbench201")
    y = data.latency["fpga"].to_numpy()
    q = query_indices(y, 900, 1000)
    assert q.size == 800 and q.min() >= 900 and q.max() <= 1899
    window = np.sort(y[900:1900])
    assert y[q].min() >= window[100] and y[q].max() <= window[899]


@needs_vidur
def test_load_vidur_one_row_per_shape():
    df = load_vidur(VIDUR)
    assert set(df["gpu"]) == {"a100", "a40", "h100"}
    assert not df.duplicated(["gpu", "M", "K", "N"]).any()


def test_bad_input(tmp_path):
    with pytest.raises(HwsearchError, match="accepted: nasbench201, fbnet, ofa"):
        run_help(tmp_path, "darts")
    with pytest.raises(HwsearchError, match="does not exist"):
        run_help(tmp_path / "missing", "fbnet")
    with pytest.raises(HwsearchError, match="does not exist"):
        gemm_transfer.run_gemm_transfer(tmp_path / "missing.csv", ["a100"], "h100")


@needs_help
def test_bad_devices_and_shots():
    with pytest.raises(HwsearchError, match="unknown test device 'tpu'.*fpga"):
        run_help(HELP_DIR, "nasbench201", test_devices=["tpu"])
    with pytest.raises(HwsearchError, match="shots 0 out of range"):
        run_help(HELP_DIR, "nasbench201", shots=0)
    with pytest.raises(HwsearchError, match="both train and test"):
        run_help(HELP_DIR, "fbnet", train_devices=["fpga"], test_devices=["fpga"])


# -- CLI ---------------------------------------------------------------------------------------
@needs_help
def test_cli_help_json_keys(tiny_models):
    res = CliRunner().invoke(app, [
        "bench", "help", "--data", str(HELP_DIR), "--space", "fbnet", "--train-devices",
        "1080ti_1,pixel3,silver_4114", "--valid-devices", "", "--test-devices", "raspi4,fpga",
        "--shots", "5", "--seeds", "2", "--json",
    ])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc) == {"space", "shots", "seeds", "devices", "mean_spearman", "mean_within_10pct", "published"}
    assert doc["space"] == "fbnet" and doc["shots"] == 5 and doc["seeds"] == 2
    assert set(doc["devices"]) == {"raspi4", "fpga"}
    for m in doc["devices"].values():
        assert set(m) == {"spearman", "within_10pct"}
        assert -1 <= m["spearman"] <= 1 and 0 <= m["within_10pct"] <= 1
    assert "HELP" in doc["published"]["source"] and doc["published"]["mean_spearman"] == 0.910


@needs_help
def test_cli_help_table_shows_published(tiny_models):
    res = CliRunner().invoke(app, [
        "bench", "help", "--data", str(HELP_DIR), "--space", "nasbench201", "--train-devices",
        "1080ti_1,pixel3", "--valid-devices", "titanx_1", "--test-devices", "fpga", "--seeds", "1",
    ])
    assert res.exit_code == 0, res.output
    assert "0.985" in res.stdout and "Table 3" in res.stdout


@needs_vidur
def test_cli_gemm_transfer_json_keys(tiny_models):
    res = CliRunner().invoke(app, [
        "bench", "gemm-transfer", "--data", str(VIDUR), "--source", "a100", "--target", "h100",
        "--shots", "6", "--seeds", "1", "--json",
    ])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {"spearman", "within_10pct", "mape", "targets", "published", "method", "baseline_method"} <= set(doc)
    row = doc["targets"]["h100"]
    assert row["source"] == ["a100"] and row["spec"]["name"] == "h100-sxm"
    assert 0 <= doc["within_10pct"] <= 1 and doc["mape"] > 0 and doc["within_10pct"] == row["within_10pct"]
    assert set(row["zero_shot"]) == set(row["baseline"]) == {"spearman", "within_10pct", "mape"}
    assert 0.9 < row["noise_floor"]["within_10pct"] <= 1 and "NeuSight" in doc["published"]["methods"]


@needs_vidur
def test_cli_gemm_transfer_bad_gpu():
    with pytest.raises(HwsearchError, match="unknown GPU 'v100'; accepted: a100, a40, h100, all"):
        gemm_transfer.run_gemm_transfer(VIDUR, ["a100"], "v100")


def test_gemm_transfer_every_target_and_zero_shots(tmp_path, tiny_models):
    """--target all: one row per GPU, the others as sources; 0 shots scores the spec sheet alone."""
    data = vidur_like(tmp_path / "g.csv")
    doc = gemm_transfer.run_gemm_transfer(data, [], "all", shots=0, seeds=2)
    assert list(doc["targets"]) == ["a100", "a40", "h100"] and doc["reference"] == 0
    for name, row in doc["targets"].items():
        assert name not in row["source"] and len(row["source"]) == 2 and row["baseline"] is None
        assert row["zero_shot"]["within_10pct"] == row["within_10pct"]
        assert row["zero_shot"]["within_10pct"] > 0.9  # the data is the roofline: the spec sheet suffices
        assert row["noise_floor"] == {"within_10pct": 1.0, "repeated_rows": 160}
    few = gemm_transfer.run_gemm_transfer(data, ["a100", "a40"], "all", shots=5, seeds=2, baseline=False)
    assert list(few["targets"]) == ["h100"] and few["source"] == ["a100", "a40"] and few["reference"] == 4
    assert few["targets"]["h100"]["spearman"] > 0.95


def test_gemm_transfer_cli_table(tmp_path, tiny_models):
    data = vidur_like(tmp_path / "g.csv")
    res = CliRunner().invoke(app, ["bench", "gemm-transfer", "--data", str(data), "--target", "all", "--shots", "4",
                                   "--seeds", "1"])
    assert res.exit_code == 0, res.output
    assert all(g in res.stdout for g in ("a100", "a40", "h100")) and "NeuSight" in res.stdout
    assert "baseline" in res.stdout and "noise floor" in res.stdout


def test_gemm_transfer_bad_input(tmp_path):
    data = vidur_like(tmp_path / "g.csv", gpus=("a100", "x100"), n=10)
    with pytest.raises(HwsearchError, match="no spec sheet for GPU 'x100'"):
        gemm_transfer.run_gemm_transfer(data, ["a100"], "x100")
    with pytest.raises(HwsearchError, match="shots -1 out of range; accepted: 0 or more"):
        gemm_transfer.run_gemm_transfer(data, ["a100"], "x100", shots=-1)
    with pytest.raises(HwsearchError, match="also a source"):
        gemm_transfer.run_gemm_transfer(data, ["a100"], "a100")
    one = vidur_like(tmp_path / "one.csv", gpus=("a100",), n=10)
    with pytest.raises(HwsearchError, match="no source GPU left for target 'a100'"):
        gemm_transfer.run_gemm_transfer(one, [], "all")
    two = vidur_like(tmp_path / "two.csv", gpus=("a100", "a40"), n=10)
    with pytest.raises(HwsearchError, match="shots 10 out of range for 'a40'; accepted: 0..9"):
        gemm_transfer.run_gemm_transfer(two, ["a100"], "a40", shots=10)


def test_repeat_agreement_is_the_noise_floor(tmp_path):
    rows = load_vidur_rows(vidur_like(tmp_path / "g.csv", gpus=("a40",), n=5))
    assert repeat_agreement(rows, "a40") == (1.0, 10)
    assert repeat_agreement(rows, "a40", pct=1.0)[0] == 0.0
    assert repeat_agreement(rows, "h100") == (None, 0)
