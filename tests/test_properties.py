"""Property-based tests (hypothesis): whatever a plan document, a search spec or a device file
holds, the answer is a value or one HwsearchError line, never another exception, and a refused
device file writes nothing.

Documents are drawn near the real schemas (real keys with wrong, missing, extra or extreme
values) as well as from arbitrary JSON, so the checks reach past the first `isinstance`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from hwsearch.db.engine import open_db, session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=30),
                    st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=12)


def _one_line(err: HwsearchError) -> None:
    assert "\n" not in str(err) and str(err).strip()


# --- plan documents ------------------------------------------------------------------------------

LAYERS = ["blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.11.mlp.fc2", "head", "nope"]
choices = st.fixed_dictionaries({}, optional={
    "format": st.sampled_from(["fp32", "bf16", "fp16", "int8", "int4", "fp8", "int3", ""]) | scalars,
    "group_size": st.sampled_from([None, 32, 64, 128, 7, -1]) | scalars,
    "sparsity": st.sampled_from(["dense", "2:4", "1:4", "4:8", "3:2", "x"]) | scalars,
    "rank": st.integers(-5, 5000) | scalars,
})
plans = st.fixed_dictionaries({}, optional={
    "schema": st.sampled_from(["hwsearch.plan/v1", "hwsearch.plan/v2"]) | scalars,
    "model": st.sampled_from(["vit_tiny", "vit_base", "llama3_8b:blocks=2", "gpt5", "llama3_8b:context=-1"]) | scalars,
    "device": scalars,
    "layers": st.dictionaries(st.sampled_from(LAYERS) | st.text(max_size=20), choices | json_values, max_size=4)
    | json_values,
    "merge": st.one_of(st.lists(st.integers(-3, 40), max_size=14), json_values),
    "predicted": json_values,
})


@SETTINGS
@given(doc=plans | json_values)
def test_any_plan_document_is_a_plan_or_one_line(doc: Any) -> None:
    from hwsearch.spaces.catalog import get_model
    from hwsearch.spaces.plan import Plan, validate_plan

    try:
        text = json.dumps(doc)
    except (ValueError, TypeError):
        return
    try:
        plan = Plan.from_json(text)
        validate_plan(plan, get_model(plan.model))
    except HwsearchError as err:
        _one_line(err)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_plan_file_are_a_plan_or_one_line(tmp_path: Path, data: bytes) -> None:
    from hwsearch.spaces.plan import Plan

    path = tmp_path / "plan.json"
    path.write_bytes(data)
    try:
        Plan.from_file(path)
    except HwsearchError as err:
        _one_line(err)


# --- search specs --------------------------------------------------------------------------------

specs = st.fixed_dictionaries({"device": st.text(max_size=10) | scalars}, optional={
    "model": st.sampled_from(["vit_tiny", "digits_vit", "llama3_8b:tokens=32", "nope", "vit_base:x=1"]) | scalars,
    "objectives": st.lists(st.sampled_from(["latency", "size", "quality", "speed"]), max_size=4) | json_values,
    "constraints": st.dictionaries(st.sampled_from(["latency_ms", "size_mb", "min_quality", "x"]),
                                   st.floats(allow_nan=True, allow_infinity=True) | scalars, max_size=3) | json_values,
    "knobs": st.dictionaries(st.sampled_from(["formats", "sparsity", "ranks", "merge", "bogus"]), json_values,
                             max_size=3) | json_values,
    "sampler": st.sampled_from(["nsga2", "tpe", "gp", "random", "cmaes"]) | scalars,
    "n_trials": st.integers(-10, 10**16) | scalars,
    "n_workers": st.integers(-10, 10**7) | scalars,
    "seed": st.integers(-(2**40), 2**40) | scalars,
    "verify_top_k": st.integers(-10, 10**10) | scalars,
    "name": st.text(max_size=300) | scalars,
    "warm_start": scalars,
    "extra_field": scalars,
})


@SETTINGS
@given(kwargs=specs)
def test_any_search_spec_is_a_spec_or_one_line(kwargs: dict[str, Any]) -> None:
    from hwsearch.search.spec import LIMITS, SearchSpec

    try:
        spec = SearchSpec(**kwargs)
    except HwsearchError as err:
        _one_line(err)
        return
    for name, (low, high, _) in LIMITS.items():
        assert low <= getattr(spec, name) <= high
    assert len(spec.job_name()) <= 200
    SearchSpec.from_doc(spec.to_doc())  # what a job row keeps reads back


# --- device files --------------------------------------------------------------------------------

def _row(**over: Any) -> dict[str, Any]:
    row = {"op": "linear", "params": {"M": 8, "K": 64, "N": 64, "format": "bf16", "sparsity": "dense", "rank": None,
                                      "group_size": None},
           "implementation": "cpu.linear.dense", "backend": "cpu", "native": True, "median_us": 10.0, "p10_us": 9.0,
           "p90_us": 11.0, "mean_us": 10.0, "repeats": 20, "cov": 0.02, "threads": 1, "environment": {}}
    row.update(over)
    return row


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70), scalars)
mutations = st.just({}) | st.just({}) | st.just({}) | st.dictionaries(
    st.sampled_from(["op", "params", "implementation", "backend", "native", "median_us", "p10_us", "p90_us", "mean_us",
                     "repeats", "cov", "threads", "environment", "rounds", "spread", "unstable", "created_at", "x"]),
    numbers | json_values | st.text(max_size=80), max_size=3)
rows = st.lists(st.builds(lambda n, m: _row(**{"params": {**_row()["params"], "N": 8 * n}, **m}),
                          st.integers(1, 64), mutations), max_size=6)
device_docs = st.fixed_dictionaries({
    "schema": st.sampled_from(["hwsearch.device-profile/v1"] * 3 + ["v0"]),
    "device": st.fixed_dictionaries({
        "name": st.sampled_from(["dev", "dev2", "syn", "a/b", "x" * 70, "<b>x</b>"]),
        "kind": st.sampled_from(["cpu", "cpu", "cuda", "CPU!"]),
        "fingerprint": st.fixed_dictionaries({"backend": st.just("cpu")},
                                             optional={"cpu_model": st.sampled_from(["A", "B"]) | scalars})
        | json_values,
    }, optional={"extra": scalars}) | json_values,
    "measurements": rows | json_values,
}, optional={"extra": scalars})


def _counts(engine: Any) -> tuple[int, int, int]:
    with session_scope(engine) as s:
        return tuple(int(s.scalar(select(func.count()).select_from(t))) for t in (Device, KernelConfig, Measurement))


@pytest.fixture(scope="module")
def device_db(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from hwsearch.profilers import store

    url = f"sqlite:///{tmp_path_factory.mktemp('props') / 'p.db'}"
    engine = open_db(url)
    store.ensure_device(engine, "syn", "cpu", {"backend": "cpu", "cpu_model": "A"})
    yield engine
    engine.dispose()


@SETTINGS
@given(doc=device_docs, name=st.none() | st.sampled_from(["copy", "bad name", "syn"]))
def test_any_device_file_is_stored_whole_or_not_at_all(device_db: Any, tmp_path: Path, doc: dict[str, Any],
                                                       name: str | None) -> None:
    from hwsearch.profilers.transfer import import_device

    path = tmp_path / "dev.json"
    path.write_text(json.dumps(doc))
    before = _counts(device_db)
    try:
        done = import_device(device_db, path, name=name)
    except HwsearchError as err:
        _one_line(err)
        assert _counts(device_db) == before  # nothing half-written: not even the device
        event("refused")
        return
    event("stored")
    for row in doc["measurements"]:  # what was stored passed every check
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("median_us", "p10_us", "p90_us", "mean_us"))
        assert row["repeats"] >= 1 and len(row["implementation"]) <= 64
    assert _counts(device_db)[2] == before[2] + done["imported"]


@SETTINGS
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_device_file_are_one_line(tmp_path: Path, data: bytes) -> None:
    from hwsearch.profilers.device_file import read_device_file

    path = tmp_path / "dev.json.gz"
    path.write_bytes(data)
    try:
        read_device_file(path)
    except HwsearchError as err:
        _one_line(err)
