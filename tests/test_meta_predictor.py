"""MetaPredictor: protocol, determinism, milliseconds, storage round-trip, bad input.

Synthetic devices keep these tests independent of the external data: each device's latency is
``scale * exp(x @ w_device)`` with device weights spread around a shared direction, and its
hardware embedding is its latency on 8 fixed reference rows (as in HELP).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hwsearch.errors import HwsearchError
from hwsearch.predictors.base import LatencyPredictor, pack, unpack
from hwsearch.predictors.meta import AdaptedMetaPredictor, MetaPredictor, MetaTask
from hwsearch.predictors.metrics import mape, spearman, within_pct

FAST = {"hidden": 32, "n_basis": 8, "steps": 60, "batch_tasks": 4, "query": 64}


def _world(n_devices: int = 6, n: int = 300, d: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    ref = np.arange(8)
    base = rng.normal(size=d)
    devices = []
    for i in range(n_devices):
        w = base + 0.4 * rng.normal(size=d)
        scale = float(np.exp(rng.normal(1.0, 1.0)))
        y = scale * np.exp(X @ w * 0.5)
        devices.append((f"dev{i}", y))
    return X, ref, devices


def _tasks(X, ref, devices):
    return [MetaTask(name, X, y, y[ref]) for name, y in devices]


@pytest.fixture(scope="module")
def fitted():
    X, ref, devices = _world()
    model = MetaPredictor(**FAST, seed=3).meta_fit(_tasks(X, ref, devices[:-1]))
    return model, X, ref, devices[-1]


def test_adapted_predictor_obeys_protocol_and_outputs_milliseconds(fitted):
    model, X, ref, (_, y) = fitted
    shots = np.arange(8, 18)
    adapted = model.adapt(y[ref], X[shots], y[shots])
    assert isinstance(adapted, LatencyPredictor)
    assert adapted.kind == "meta-adapted"
    pred = adapted.predict(X[100:])
    assert pred.shape == (200,) and (pred > 0).all()
    # right scale: the median ratio to the truth is near 1, and the ranking is learned
    ratio = np.median(pred / y[100:])
    assert 0.7 < ratio < 1.4
    assert spearman(pred, y[100:]) > 0.8


def test_adaptation_uses_the_shots(fitted):
    """Shots of a device twice as slow move the predictions by about 2x (calibration is from shots)."""
    model, X, ref, (_, y) = fitted
    shots = np.arange(8, 28)
    a = model.adapt(y[ref], X[shots], y[shots]).predict(X[100:])
    b = model.adapt(y[ref], X[shots], 2 * y[shots]).predict(X[100:])
    assert 1.6 < np.median(b / a) < 2.4


def test_meta_fit_is_deterministic_given_a_seed():
    X, ref, devices = _world()
    tasks = _tasks(X, ref, devices[:-1])
    y = devices[-1][1]
    preds = []
    for _ in range(2):
        m = MetaPredictor(**FAST, seed=7).meta_fit(tasks)
        preds.append(m.adapt(y[ref], X[8:18], y[8:18]).predict(X[50:]))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_validation_tasks_select_a_checkpoint():
    X, ref, devices = _world()
    tasks = _tasks(X, ref, devices[:4])
    m = MetaPredictor(**FAST).meta_fit(tasks, valid_tasks=_tasks(X, ref, devices[4:5]), eval_every=20)
    assert m.valid_loss_ is not None and np.isfinite(m.valid_loss_)


def test_serialisation_round_trip_gives_identical_predictions(fitted):
    model, X, ref, (_, y) = fitted
    adapted = model.adapt(y[ref], X[8:18], y[8:18])
    blob = adapted.to_bytes()
    assert b"pickle" not in blob[:200]
    again = AdaptedMetaPredictor.from_bytes(blob)
    np.testing.assert_array_equal(again.predict(X), adapted.predict(X))
    meta_again = MetaPredictor.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(
        meta_again.adapt(y[ref], X[8:18], y[8:18]).predict(X), adapted.predict(X)
    )


def test_fit_refits_the_head(fitted):
    model, X, ref, (_, y) = fitted
    adapted = model.adapt(y[ref], X[8:10], y[8:10])
    before = adapted.predict(X[100:])
    adapted.fit(X[:100], y[:100])
    after = adapted.predict(X[100:])
    assert mape(after, y[100:]) < mape(before, y[100:]) + 1e-9


def test_bad_input_is_a_one_line_error(fitted):
    model, X, ref, (_, y) = fitted
    with pytest.raises(HwsearchError, match="accepts 8"):
        model.adapt(y[:3], X[8:18], y[8:18])
    with pytest.raises(HwsearchError, match="columns"):
        model.adapt(y[ref], X[8:18, :4], y[8:18])
    with pytest.raises(HwsearchError, match="positive"):
        model.adapt(y[ref], X[8:18], -y[8:18])
    with pytest.raises(HwsearchError, match="meta_fit"):
        MetaPredictor().adapt(y[ref], X[8:18], y[8:18])
    with pytest.raises(HwsearchError, match="kind"):
        AdaptedMetaPredictor.from_bytes(model.to_bytes())
    with pytest.raises(HwsearchError, match="magic"):
        MetaPredictor.from_bytes(b"not a predictor")
    with pytest.raises(HwsearchError, match="at least one task"):
        MetaPredictor().meta_fit([])


def test_envelope_and_metrics():
    header, payload = unpack(pack({"kind": "x", "a": 1}, b"abc"), "x")
    assert header["a"] == 1 and payload == b"abc"
    assert within_pct(np.array([1.05, 1.2]), np.array([1.0, 1.0])) == 0.5
    assert mape(np.array([1.1]), np.array([1.0])) == pytest.approx(10.0)


def test_device_prior_adaptation_round_trips():
    """With device_prior > 0 the head may move along the training devices' heads; storage keeps it."""
    X, ref, devices = _world()
    model = MetaPredictor(**FAST, device_prior=10.0, seed=1).meta_fit(_tasks(X, ref, devices[:-1]))
    y = devices[-1][1]
    adapted = model.adapt(y[ref], X[8:18], y[8:18])
    pred = adapted.predict(X[100:])
    assert spearman(pred, y[100:]) > 0.8 and 0.7 < np.median(pred / y[100:]) < 1.4
    again = AdaptedMetaPredictor.from_bytes(adapted.to_bytes())
    assert again.config.device_prior == 10.0
    np.testing.assert_array_equal(again.predict(X), adapted.predict(X))


def test_linear_cost_columns_join_the_basis_and_round_trip():
    """n_linear=m feeds the last m columns straight into the head; storage keeps the setting."""
    X, ref, devices = _world()
    model = MetaPredictor(**FAST, n_linear=2, seed=3).meta_fit(_tasks(X, ref, devices[:-1]))
    y = devices[-1][1]
    adapted = model.adapt(y[ref], X[8:18], y[8:18])
    assert spearman(adapted.predict(X[100:]), y[100:]) > 0.8
    again = AdaptedMetaPredictor.from_bytes(adapted.to_bytes())
    assert again.config.n_linear == 2
    np.testing.assert_array_equal(again.predict(X), adapted.predict(X))
    assert MetaPredictor.from_bytes(model.to_bytes()).n_linear == 2


def test_ensemble_round_trips_and_averages_members():
    """n_ensemble=K meta-trains K seeded networks; storage keeps all K and predictions are identical."""
    X, ref, devices = _world()
    tasks = _tasks(X, ref, devices[:-1])
    y = devices[-1][1]
    single = MetaPredictor(**FAST, device_prior=10.0, seed=2).meta_fit(tasks)
    model = MetaPredictor(**FAST, device_prior=10.0, seed=2, n_ensemble=2).meta_fit(tasks)
    assert len(model.nets_) == 2
    adapted = model.adapt(y[ref], X[8:18], y[8:18])
    pred = adapted.predict(X[100:])
    assert spearman(pred, y[100:]) > 0.8 and 0.7 < np.median(pred / y[100:]) < 1.4
    # member 0 is the single network of the same seed; the ensemble is the geometric mean of members
    p0 = single.adapt(y[ref], X[8:18], y[8:18]).predict(X[100:])
    one = replace(model.config_, n_ensemble=1)
    members = [AdaptedMetaPredictor(one, net.state_dict(), y[ref]).fit(X[8:18], y[8:18]).predict(X[100:])
               for net in model.nets_]
    np.testing.assert_allclose(members[0], p0, rtol=1e-12)
    np.testing.assert_allclose(pred, np.sqrt(members[0] * members[1]), rtol=1e-10)
    assert not np.allclose(members[0], members[1])
    again = MetaPredictor.from_bytes(model.to_bytes())
    assert again.n_ensemble == 2 and len(again.nets_) == 2
    np.testing.assert_array_equal(again.adapt(y[ref], X[8:18], y[8:18]).predict(X[100:]), pred)
    stored = AdaptedMetaPredictor.from_bytes(adapted.to_bytes())
    assert stored.config.n_ensemble == 2
    np.testing.assert_array_equal(stored.predict(X[100:]), pred)
    # a single-network blob keeps the pre-ensemble layout (plain tensor names) and still loads
    np.testing.assert_array_equal(
        AdaptedMetaPredictor.from_bytes(single.adapt(y[ref], X[8:18], y[8:18]).to_bytes()).predict(X[100:]), p0
    )
    with pytest.raises(HwsearchError, match="n_ensemble"):
        MetaPredictor(n_ensemble=0)


def test_rank_loss_term_trains():
    X, ref, devices = _world()
    y = devices[-1][1]
    model = MetaPredictor(**FAST, rank_weight=0.05, seed=4).meta_fit(_tasks(X, ref, devices[:-1]))
    pred = model.adapt(y[ref], X[8:18], y[8:18]).predict(X[100:])
    assert spearman(pred, y[100:]) > 0.8
