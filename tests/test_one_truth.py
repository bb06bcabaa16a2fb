"""One definition each of the front, a prediction's error and the best plan under a budget, and the
small pieces the explorer builds on them (reading a clicked point, a plan's latency per layer)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hwsearch.dashboard.charts import trial_of_point
from hwsearch.errors import HwsearchError
from hwsearch.search.accuracy import describe, error_pct
from hwsearch.search.pareto import best_under, front_mask


def test_front_counts_a_point_once_and_skips_infeasible_and_missing() -> None:
    values = np.array([[1.0, 5.0], [2.0, 3.0], [2.0, 3.0], [3.0, 3.0], [0.5, 9.0], [np.nan, 1.0], [0.1, 0.1]])
    feasible = np.array([True, True, True, True, True, True, False])
    mask = front_mask(values, ["minimize", "minimize"], feasible)
    assert np.flatnonzero(mask).tolist() == [0, 1, 4]  # row 2 ties row 1 (the earlier stays); 6 breaks a constraint
    assert np.flatnonzero(front_mask(values, ["minimize", "maximize"])).tolist() == [4, 6]  # directions count
    assert not front_mask(np.zeros((0, 2)), ["minimize", "minimize"]).any()


FRONT = pd.DataFrame({"trial": [7, 3, 9, 4], "latency_ms": [10.0, 20.0, 30.0, 40.0], "size_mb": [90.0, 50.0, 40.0, 20.0],
                      "quality": [0.80, 0.90, 0.95, 0.97]})


def test_best_under_a_budget_is_best_on_the_first_free_objective() -> None:
    objectives = ["latency", "size"]
    assert best_under(FRONT, objectives, {})["trial"] == 7  # no bound: the fastest
    assert best_under(FRONT, objectives, {"latency_ms": 35})["trial"] == 9  # latency bounded: the smallest within it
    assert best_under(FRONT, objectives, {"size_mb": 45})["trial"] == 9  # size bounded: the fastest within it
    assert best_under(FRONT, ["latency", "quality"], {"min_quality": 0.9})["trial"] == 3
    assert best_under(FRONT, objectives, {"latency_ms": 35}, band_pct=20.0)["trial"] == 3  # 30 ms is 36 ms at most
    with pytest.raises(HwsearchError, match=r"no Pareto plan has latency_ms <= 5 \(the front spans 10 to 40\); "
                                            r"accepted: a bound >= 10$"):
        best_under(FRONT, objectives, {"latency_ms": 5})
    with pytest.raises(HwsearchError, match="unknown budget 'speed'"):
        best_under(FRONT, objectives, {"speed": 5})
    with pytest.raises(HwsearchError, match="no feasible Pareto plan yet"):
        best_under(FRONT.iloc[0:0], objectives, {})


def test_error_has_one_sign_convention() -> None:
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)  # predicted above measured: the device was faster
    assert error_pct(88.3, 100.0) == pytest.approx(-11.7)  # the device was slower than predicted
    assert describe(-11.7) == "-11.7 % (slower than predicted)" and describe(4.0) == "+4.0 % (faster than predicted)"
    assert np.isnan(error_pct(None, 3.0))
    series = error_pct(pd.Series([2.0, 1.0]), pd.Series([1.0, 2.0]))
    assert series.tolist() == [100.0, -50.0]


@pytest.mark.parametrize("point, trial", [
    ({"customdata": [12.0, 3.1]}, 12),
    ({"customdata": {"0": 41, "1": 0.2}}, 41),  # a typed array's row, as the browser sends it
    ({"customdata": 5}, 5),
    ({"x": 1.0, "y": 2.0}, None),  # a line or a shape: no trial
    ({"customdata": []}, None),
    ({"customdata": ["n/a"]}, None),
])
def test_a_clicked_point_names_its_trial_or_nothing(point: dict, trial: int | None) -> None:
    assert trial_of_point(point) == trial


def test_layer_breakdown_adds_up_to_the_plan_latency() -> None:
    from hwsearch.predictors.model_latency import ModelLatency, Overhead
    from hwsearch.search.breakdown import OVERHEAD_ROW, layer_latency
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import LayerChoice, Plan

    class Flops:
        """A kernel predictor: 1 ms per GFLOP plus 0.01 ms a kernel."""

        def predict_specs(self, specs):
            return np.array([s.flops / 1e9 + 0.01 for s in specs])

    model = get_model("digits_vit")
    ml = ModelLatency(model, Flops(), Overhead(scale=1.2, per_forward_ms=0.5))
    plan = Plan(model="digits_vit", layers={"blocks.0.mlp.fc1": LayerChoice(format="int8", rank=32)})
    table = layer_latency(ml, plan)
    assert table["predicted_ms"].sum() == pytest.approx(ml.plan(plan).total_ms)
    assert table["layer"].iloc[-1] == OVERHEAD_ROW and table["predicted_ms"].iloc[-1] > 0.5
    assert table.set_index("layer").loc["blocks.0.mlp.fc1", "choice"] == "int8/r32"
    assert list(table["block"].dropna()) == sorted(table["block"].dropna())  # model order: blocks, then the head
    assert set(model.layer_names) <= set(table["layer"])
