"""The dashboard's pages (Streamlit AppTest) and data layer on a seeded database.

The database is seeded once for the module (a real profile of a few small kernels, real Optuna
studies, verifications, a predictor); each page runs in AppTest through `app.py`, the way the
server runs it. The data layer is also run on a generated 10,000-trial study: what it returns
is checked, never how long it took.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dashboard_seed import CPU, GPU, Seeded, brute_front, bulk_study, seed
from streamlit.testing.v1 import AppTest

from hwsearch.dashboard import data, plans
from hwsearch.search.pareto import front_mask

APP = Path(__file__).resolve().parent.parent / "hwsearch" / "dashboard" / "app.py"
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    path = tmp_path_factory.mktemp("dash") / "hwsearch.db"
    s = seed(f"sqlite:///{path}", trials=40, profile=True)
    before = os.environ.get("HWSEARCH_DB")
    os.environ["HWSEARCH_DB"] = s.url
    yield s
    if before is None:
        os.environ.pop("HWSEARCH_DB", None)
    else:
        os.environ["HWSEARCH_DB"] = before


def _app(page: str | None = None, **query: object) -> AppTest:
    """Run app.py (and then `page`) with query parameters; no uncaught exception on the way."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    for key, value in query.items():
        at.query_params[key] = str(value)
    at.run()
    if page is not None:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# -- empty database -----------------------------------------------------------------------------
def test_empty_database_reads_as_guidance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwsearch.db.engine import open_db

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    open_db(url).dispose()  # the dashboard only reads: a database some command has created
    monkeypatch.setenv("HWSEARCH_DB", url)
    for page, hint in (("jobs", "hwsearch search"), ("pareto", "hwsearch search"), ("compare", "hwsearch search"),
                       ("devices", "hwsearch profile --local")):
        at = _app(page)
        assert not at.error, _texts(at.error)
        assert any(hint in t for t in _texts(at.info)), (page, _texts(at.info))


def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HWSEARCH_DB", "mysql://nobody@localhost/x")
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S).run()
    assert not at.exception
    assert len(at.error) == 1 and "unsupported database" in at.error[0].value
    assert "\n" not in at.error[0].value


# -- jobs -----------------------------------------------------------------------------------------
def test_jobs_lists_every_job_and_opens_one(seeded: Seeded) -> None:
    at = _app()
    assert _texts(at.title) == ["Jobs"]
    table = at.dataframe[0].value
    assert sorted(table["id"]) == sorted([seeded.done_job, seeded.other_device_job, seeded.running_job,
                                          seeded.queued_job, seeded.failed_job])
    done = table.set_index("id").loc[seeded.done_job]
    assert (done["status"], done["progress"], done["device"], done["model"]) == ("done", 1.0, CPU, "digits_vit")
    assert table.set_index("id").loc[seeded.failed_job, "error"].startswith("predictor for")
    assert _metric(at, "running") == "1" and _metric(at, "done") == "2"

    at.selectbox(key="job_pick").select(seeded.done_job).run()
    at.button[0].click().run()
    assert not at.exception
    assert _texts(at.title) == ["Pareto explorer"]
    assert at.query_params["job"] == [str(seeded.done_job)] or at.query_params["job"] == str(seeded.done_job)


# -- Pareto explorer ------------------------------------------------------------------------------
def test_pareto_shows_front_verified_points_and_default_plan(seeded: Seeded) -> None:
    at = _app("pareto", job=seeded.done_job)
    assert _metric(at, "completed trials") == "40"
    assert _metric(at, "on the front") == str(len(seeded.front))
    assert _metric(at, "verified on device") == "2"
    df, meta = data.study_front(seeded.url, seeded.done_job)
    assert meta.objectives == ("latency_ms", "size_mb", "quality")
    assert sorted(df.loc[df["pareto"], "number"]) == sorted(seeded.front)
    assert sorted(df.loc[df["verified"], "number"]) == sorted(seeded.verified)
    # Default choice: the fastest trial on the front; its plan is on the page.
    fastest = int(df[df["pareto"]].sort_values("latency_ms")["number"].iloc[0])
    assert f"Plan of trial {fastest}" in _texts(at.header)
    shown = json.loads(at.code[0].value)
    assert shown == data.trial_plan(seeded.url, seeded.done_job, fastest)
    # Verified trials: predicted and measured latency side by side.
    ver = at.dataframe[0].value
    assert sorted(ver["trial_number"]) == sorted(seeded.verified)
    assert (ver["measured_ms"] > ver["predicted_ms"]).all()
    # The chart: constraint line, dominated and front traces, measured diamonds.
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in fig["data"]]
    assert {"Pareto front", "dominated", "measured on device", "predicted → measured"} <= set(names)
    assert any(s.get("type") == "line" for s in fig["layout"].get("shapes", []))
    # Downloads: the plan and its exports, each with its file name.
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["plan", "compressed-tensors", "modelopt"]


def test_choosing_a_trial_shows_its_plan_and_merge_schedule(seeded: Seeded) -> None:
    at = _app("pareto", job=seeded.done_job)
    picked = next(n for n in sorted(seeded.front) if f"Plan of trial {n}" not in _texts(at.header))
    at.selectbox(key=f"trial_pick_{seeded.done_job}").select(picked).run()
    assert not at.exception
    assert f"Plan of trial {picked}" in _texts(at.header)
    assert at.query_params["trial"] in (str(picked), [str(picked)])
    plan = data.trial_plan(seeded.url, seeded.done_job, picked)
    assert json.loads(at.code[0].value) == plan
    layers = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    assert list(layers["layer"]) == list(plans.layer_table(plan)["layer"])
    assert len(layers) == 17  # digits_vit: 4 blocks × 4 + head


def test_url_trial_and_paged_table(seeded: Seeded) -> None:
    at = _app("pareto", job=seeded.done_job, trial=5)
    assert "Plan of trial 5" in _texts(at.header)
    trials = at.dataframe[-1].value
    assert len(trials) == 40 and list(trials["latency_ms"]) == sorted(trials["latency_ms"])


@pytest.mark.parametrize("which, expect", [
    ("running_job", "no trial has finished yet"),
    ("queued_job", "queued"),
    ("failed_job", "no completed trials"),
])
def test_jobs_without_trials_read_as_guidance(seeded: Seeded, which: str, expect: str) -> None:
    at = _app("pareto", job=getattr(seeded, which))
    assert any(expect in t for t in _texts(at.info)), _texts(at.info)
    if which == "failed_job":
        assert [e.value for e in at.error] == ["This job failed: predictor for 'test-cpu' missing"]
    else:
        assert not at.error


# -- compare and devices ----------------------------------------------------------------------------
def test_compare_draws_one_front_per_job(seeded: Seeded) -> None:
    at = _app("compare")
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = [t for t in fig["data"] if t["mode"] == "markers"]  # each with the line through its front
    assert len(fig["data"]) == 2 * len(points)
    names = sorted(t["name"].rsplit(" · ", 1)[1] for t in points)
    assert names == ["measured", "predicted", "predicted"]  # the verified job's measured points, and both fronts
    measured = next(t for t in points if t["name"].endswith("measured"))
    assert sorted(int(c[0]) for c in measured["customdata"]) == sorted(seeded.verified)
    assert any("still running" in t for t in _texts(at.caption))  # the running job has no trials yet, and says so
    summary = at.dataframe[0].value
    assert summary["front"].sum() == len(seeded.front) + len(data.study_front(seeded.url, seeded.other_device_job)[0]
                                                             .query("pareto"))
    assert summary["verified"].max() == len(seeded.verified)
    at.segmented_control(key="cmp_basis").set_value("predicted").run()
    assert not at.exception
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = [t for t in fig["data"] if t["mode"] == "markers"]
    assert all(t["name"].endswith("predicted") for t in points) and len(points) == 2


def test_devices_show_fingerprint_coverage_and_predictor_accuracy(seeded: Seeded) -> None:
    at = _app("devices")
    assert at.selectbox(key="device_pick").value == CPU
    coverage = next(d.value for d in at.dataframe if "op/format" in d.value.columns)
    table = {d["name"]: d for d in data.devices(seeded.url)}
    assert coverage["measured"].sum() == table[CPU]["measurements"] > 0
    preds = next(d.value for d in at.dataframe if "within_10pct" in d.value.columns)
    assert list(preds["family"]) == ["all", "linear"] and preds["n"].iloc[0] == 24
    fig = json.loads(at.get("plotly_chart")[-1].proto.spec)
    names = [t.get("name") for t in fig["data"]]
    assert "±10 %" in names and "verified plans (whole model)" in names
    at.segmented_control(key=f"acc_view_{CPU}").set_value("error %").run()
    assert not at.exception

    at.selectbox(key="device_pick").select(GPU).run()
    assert _metric(at, "emulated") == "2"
    assert any("hwsearch train --device test-gpu" in t for t in _texts(at.info))


# -- data layer -----------------------------------------------------------------------------------
def test_front_mask_matches_brute_force() -> None:
    """The dashboard's front is the search package's: non-dominated, equal points counted once (the first)."""
    rng = random.Random(3)
    for k in (2, 3):
        vals = [tuple(round(rng.random(), 1) for _ in range(k)) for _ in range(300)]  # many ties
        vals += vals[:10]  # exact duplicates: only the first of each is on the front
        feasible = [rng.random() > 0.1 for _ in vals]
        mask = front_mask(np.array(vals), ["minimize", "minimize", "maximize"][:k], np.array(feasible))
        brute = brute_front(vals, feasible)
        first = [i for i in brute if vals[i] not in [vals[j] for j in brute if j < i]]
        assert sorted(np.flatnonzero(mask).tolist()) == first


def test_ten_thousand_trials_are_paged(seeded: Seeded) -> None:
    job_id = bulk_study(seeded.url, "dash-big", 10_000)
    df, meta = data.study_front(seeded.url, job_id)
    assert len(df) == 10_000 and meta.objectives == ("latency_ms", "size_mb")
    # 2-D front, independently: sorted by latency, a point is on it iff its size beats all before it.
    order = df.sort_values(["latency_ms", "size_mb"])
    best, expect = np.inf, set()
    for n, s in zip(order["number"], order["size_mb"], strict=True):
        if s < best:
            best, expect = s, expect | {int(n)}
    assert set(df.loc[df["pareto"], "number"]) == expect
    page, pages = data.trials_page(df, 3, sort_by="number")
    assert pages == 100 and list(page["number"]) == list(range(200, 300))
    page, pages = data.trials_page(df, 1, only_front=True, sort_by="size_mb")
    assert pages == -(-len(expect) // data.PAGE_SIZE) and len(page) == min(len(expect), data.PAGE_SIZE)
    assert list(page["size_mb"]) == sorted(page["size_mb"])
    assert data.trial_plan(seeded.url, job_id, 1000)["model"] == "digits_vit"
    assert data.trial_plan(seeded.url, job_id, 1001) is None
    # The page itself: a front chart in WebGL, the table a page at a time.
    at = _app("pareto", job=job_id, trial=1000)
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["type"] for t in fig["data"] if t.get("name") == "dominated"} == {"scattergl"}
    assert len(at.dataframe[-1].value) == data.PAGE_SIZE
    at.get("pagination")[0].set_value(100).run()
    assert not at.exception
    assert list(at.dataframe[-1].value["latency_ms"])[-1] == df["latency_ms"].max()


def test_plan_tables_and_exports() -> None:
    doc = {"schema": "hwsearch.plan/v1", "model": "digits_vit",
           "layers": {"blocks.0.mlp.fc1": {"format": "int4", "group_size": 32, "sparsity": "2:4"},
                      "blocks.1.attn.proj": {"format": "fp32", "rank": 16}},
           "merge": {"r": 2, "start_block": 1}}
    layers = plans.layer_table(doc).set_index("layer")
    assert layers.loc["blocks.0.mlp.fc1", "choice"] == "int4g32/2:4"
    assert layers.loc["blocks.0.mlp.fc1", "size %"] < 15
    assert layers.loc["blocks.0.attn.qkv", "size %"] == 100.0
    merge = plans.merge_table(doc)
    assert list(merge["r (merged)"]) == [0, 2, 2, 2] and list(merge["tokens in"]) == [17, 17, 15, 13]
    files = {f.format: f for f in plans.export_files(json.dumps(doc))}
    assert set(files) == {"plan", "compressed-tensors", "modelopt"}
    assert json.loads(files["plan"].data)["model"] == "digits_vit"
    assert files["compressed-tensors"].warnings and all("/tmp" not in w for w in files["modelopt"].warnings)
    assert plans.merge_table({"model": "llama3_8b"}) is None


# -- CLI ------------------------------------------------------------------------------------------
def test_dashboard_command_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "hwsearch.cli", "dashboard", "--port", str(port),
                               "--db", f"sqlite:///{tmp_path / 'x.db'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot serve on 127.0.0.1:{port}")
