"""Issue 14's hardening, piece by piece: incremental trial reads, the verification key, read-only
databases, Ray tokens, processes that are still ours, signals to the dashboard's child, secrets
kept off command lines. (Bad inputs: `test_badinputs.py`; random inputs: `test_properties.py`;
token authentication on a real cluster: `test_ray_auth.py`.)
"""

from __future__ import annotations

import os
import random
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from sqlalchemy import func, select, text

from hwsearch.db.engine import current_revision, make_engine, open_db, session_scope, upgrade_schema
from hwsearch.db.models import Device, Job, Verification
from hwsearch.errors import HwsearchError

# --- incremental trial reads ----------------------------------------------------------------------


def _trials(n: int, seed: int) -> list[optuna.trial.FrozenTrial]:
    rng = random.Random(seed)
    dists = {"a": CategoricalDistribution(("x", "y", "z")), "b": CategoricalDistribution((1, 2, 3))}
    out = []
    for _ in range(n):
        values = [rng.random(), rng.random()]
        out.append(optuna.trial.create_trial(
            params={"a": rng.choice("xyz"), "b": rng.choice((1, 2, 3))}, distributions=dists, values=values,
            user_attrs={"latency_ms": values[0], "note": [1, "two"]},
            system_attrs={"constraints": [values[0] - 0.5]}))
    return out


def test_read_trials_reads_what_optuna_reads_and_only_what_is_new(db_url: str) -> None:
    from hwsearch.search.study import rdb_storage
    from hwsearch.search.trials import read_trials, values_since, write_trials

    engine = open_db(db_url)
    storage = rdb_storage(db_url)
    optuna.create_study(storage=storage, study_name="s", directions=["minimize", "minimize"])
    sid = storage.get_study_id_from_name("s")
    first = write_trials(engine, sid, _trials(7, 0))
    mine = read_trials(engine, sid)
    theirs = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [(t.number, t.params, t.values, t.user_attrs, t.system_attrs, t.distributions) for t in mine] == \
        [(t.number, t.params, t.values, t.user_attrs, t.system_attrs, t.distributions) for t in theirs]
    second = write_trials(engine, sid, _trials(5, 1))
    new = read_trials(engine, sid, after_id=max(first))
    assert [t._trial_id for t in new] == second and [t.number for t in new] == list(range(7, 12))
    assert read_trials(engine, sid, after_id=max(second)) == []
    ids, nums, values, feasible = values_since(engine, sid, 2, after_id=max(first))
    assert list(ids) == second and list(nums) == list(range(7, 12)) and values.shape == (5, 2)
    assert list(feasible) == [t.values[0] <= 0.5 for t in new]
    storage.remove_session()
    engine.dispose()


def test_study_progress_kept_incrementally_equals_a_full_read(sqlite_url: str) -> None:
    from hwsearch.search import pareto
    from hwsearch.search.jobs import StudyProgress
    from hwsearch.search.study import rdb_storage
    from hwsearch.search.trials import study_values, write_trials

    engine = open_db(sqlite_url)
    storage = rdb_storage(sqlite_url)
    optuna.create_study(storage=storage, study_name="p", directions=["minimize", "minimize"])
    sid = storage.get_study_id_from_name("p")
    progress = StudyProgress(engine, sid, ["latency", "size"])
    bounds = (np.zeros(2), np.ones(2))
    for seed in range(4):
        write_trials(engine, sid, _trials(25, seed))
        doc = progress.update().as_dict(bounds)
        _, values, feasible = study_values(engine, sid, 2)
        assert progress.count == len(values) and doc["feasible"] == int(feasible.sum())
        assert doc["hypervolume"] == pytest.approx(pareto.hypervolume(values[feasible], ["latency", "size"], *bounds))
        assert doc["best"]["latency_ms"] == pytest.approx(values[feasible][:, 0].min())
    storage.remove_session()
    engine.dispose()


# --- verifications: one per job, trial and device --------------------------------------------------


def test_verification_key_drops_old_duplicates_and_a_resumed_job_stores_nothing_twice(db_url: str) -> None:
    from hwsearch.search.verify import store_verifications, verifications

    old = make_engine(db_url)
    upgrade_schema(old, "0003")
    with old.begin() as conn:
        conn.execute(text("INSERT INTO devices (name, kind, fingerprint, created_at) "
                          "VALUES ('d', 'cpu', '{}', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO jobs (name, spec, status, n_trials_done, n_trials_total, created_at) "
                          "VALUES ('j', '{}', 'done', 0, 0, CURRENT_TIMESTAMP)"))
        for ms in (1.0, 2.0, 3.0):
            conn.execute(text("INSERT INTO verifications (job_id, trial_number, device_id, plan, measured_ms, created_at) "
                              "VALUES (1, 4, 1, '{}', :ms, CURRENT_TIMESTAMP)"), {"ms": ms})
    old.dispose()
    engine = open_db(db_url)
    assert current_revision(engine) == "0004"
    assert [r["measured_ms"] for r in verifications(engine, 1)] == [1.0]  # the first row of each is kept
    rows = [{"trial": 4, "plan": {}, "measured_ms": 9.0}, {"trial": 5, "plan": {}, "measured_ms": 5.0}]
    assert store_verifications(engine, 1, 1, rows) == 1  # trial 4 was verified by an earlier attempt
    assert store_verifications(engine, 1, 1, rows) == 0
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(Verification)) == 2
    engine.dispose()


# --- read-only databases -------------------------------------------------------------------------


def test_a_reader_neither_writes_nor_migrates(db_url: str) -> None:
    from sqlalchemy.exc import DBAPIError

    engine = open_db(db_url)
    with session_scope(engine) as s:
        s.add(Device(name="d", kind="cpu", fingerprint={}))
    engine.dispose()
    reader = open_db(db_url, read_only=True)
    with session_scope(reader) as s:
        assert s.scalars(select(Device.name)).all() == ["d"]
    with pytest.raises(DBAPIError), session_scope(reader) as s:
        s.add(Job(name="j", spec={}))
    reader.dispose()
    old = make_engine(db_url)
    with old.begin() as conn:
        conn.execute(text("UPDATE hwsearch_alembic_version SET version_num = '0002'"))
    with pytest.raises(HwsearchError, match="older than this hwsearch's '0004', and a reader does not migrate it"):
        open_db(db_url, read_only=True)
    assert current_revision(old) == "0002"
    with old.begin() as conn:
        conn.execute(text("UPDATE hwsearch_alembic_version SET version_num = '0099'"))
    for read_only in (False, True):
        with pytest.raises(HwsearchError, match="at schema revision '0099', newer than this hwsearch .* accepted: "
                                                "upgrade hwsearch"):
            open_db(db_url, read_only=read_only)
    old.dispose()


def test_a_reader_does_not_create_a_database(tmp_path: Path) -> None:
    with pytest.raises(HwsearchError, match="no database file at"):
        open_db(f"sqlite:///{tmp_path / 'typo.db'}", read_only=True)
    assert not (tmp_path / "typo.db").exists()


# --- Ray tokens ----------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HWSEARCH_HOME", str(tmp_path / "home"))
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "home"


def test_the_token_is_made_once_readable_by_its_user_only(home: Path) -> None:
    from hwsearch import ray_auth

    path = ray_auth.ensure_token()
    assert path == home / "ray-auth-token" and stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64 and ray_auth.ensure_token().read_text() == token
    assert ray_auth.ray_env() == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    path.chmod(0o644)
    with pytest.raises(HwsearchError, match=r"readable by other users .*\(chmod 600"):
        ray_auth.ray_env()


def test_joining_without_the_heads_token_is_one_line_and_opting_out_is_explicit(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwsearch import ray_auth

    with pytest.raises(HwsearchError, match="no Ray token at .* copy the head's token file"):
        ray_auth.ray_env(create=False)
    assert not (home / "ray-auth-token").exists()  # a worker never makes a token of its own
    assert ray_auth.ray_env(insecure=True) == {"RAY_AUTH_MODE": "disabled"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ray_auth.opted_out() == "RAY_AUTH_MODE=disabled"
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.setenv("HWSEARCH_DB", "postgresql://u:secret@db/x")
    env = ray_auth.node_env()
    assert "HWSEARCH_DB" not in env and env["RAY_AUTH_MODE"] == "token"
    assert "secret" not in " ".join(env.values())


def test_a_detached_job_runner_gets_the_database_url_from_its_environment(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hwsearch.search.client import run_in_background

    started: list[tuple[list[str], dict[str, str]]] = []

    class Recorder:
        def __init__(self, cmd: list[str], env: dict[str, str], **_: object) -> None:
            started.append((cmd, env))

    monkeypatch.setattr(subprocess, "Popen", Recorder)
    run_in_background("postgresql+psycopg2://u:secret@db/x", 7)
    (cmd, env), = started
    assert not any("secret" in part for part in cmd) and cmd[-3:] == ["jobs", "run", "7"]
    assert env["HWSEARCH_DB"] == "postgresql+psycopg2://u:secret@db/x"


# --- processes -----------------------------------------------------------------------------------


def test_cluster_stop_signals_only_processes_that_are_still_the_ones_it_started(
        home: Path) -> None:
    import json

    import psutil

    from hwsearch.profilers.worker import nodes_file, stop_recorded

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        created = psutil.Process(proc.pid).create_time()
        other = {"role": "worker", "device": "x", "pgid": proc.pid,
                 "processes": [{"pid": proc.pid, "created": created + 30.0}]}  # the pid, reused by another program
        nodes_file().write_text(json.dumps([other]))
        assert stop_recorded()[0]["processes"] == 0 and proc.poll() is None
        ours = {**other, "processes": [{"pid": proc.pid, "created": created}]}
        nodes_file().write_text(json.dumps([ours]))
        assert stop_recorded()[0]["processes"] == 1
        assert proc.wait(timeout=30) is not None and json.loads(nodes_file().read_text()) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_to_the_dashboard_command_stops_its_streamlit_child(sqlite_url: str, home: Path) -> None:
    import psutil

    open_db(sqlite_url).dispose()
    port = _free_port()
    log = home.parent / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hwsearch.cli", "dashboard", "--port", str(port),
                                 "--db", sqlite_url], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:
            children = psutil.Process(proc.pid).children(recursive=True)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the dashboard did not answer: {log.read_text()[-2000:]}")
        assert children
        proc.terminate()  # SIGTERM to `hwsearch dashboard` alone, as a service manager sends it
        assert proc.wait(timeout=60) in (0, 128 + 15, 143)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [c.pid for c in alive]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


def test_a_workers_mirror_keeps_its_latest_trials_the_front_and_what_is_enqueued() -> None:
    from hwsearch.search.samplers import make_sampler
    from hwsearch.search.study import feasible_trial, recent_and_front

    mem = optuna.create_study(directions=["minimize", "minimize"], sampler=make_sampler("nsga2", 0))
    mem.add_trials(_trials(300, 3))
    mem.enqueue_trial({"a": "x", "b": 2})
    kept = recent_and_front(mem, 50)
    old = mem.get_trials(deepcopy=False)
    done = [t for t in old if t.state == optuna.trial.TrialState.COMPLETE]
    values = np.array([t.values for t in done])
    from hwsearch.search.pareto import front_mask

    front = {tuple(v) for v, f in zip(values, front_mask(values, ["minimize", "minimize"],
                                                        np.array([feasible_trial(t) for t in done])), strict=True) if f}
    new = kept.get_trials(deepcopy=False)
    complete = [tuple(t.values) for t in new if t.state == optuna.trial.TrialState.COMPLETE]
    assert kept.sampler is mem.sampler and 50 <= len(complete) <= 50 + len(front)
    assert {tuple(t.values) for t in done[-50:]} <= set(complete) and front <= set(complete)
    assert [t.system_attrs.get("fixed_params") for t in new if t.state == optuna.trial.TrialState.WAITING] == \
        [{"a": "x", "b": 2}]
