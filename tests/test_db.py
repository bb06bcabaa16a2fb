"""The database layer, run on a fresh SQLite file and a fresh PostgreSQL database alike."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import delete, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from hwsearch.db.engine import (
    VERSION_TABLE,
    current_revision,
    database_url,
    head_revision,
    make_engine,
    open_db,
    schema_differences,
    session_scope,
    sessionmaker_for,
    upgrade_schema,
)
from hwsearch.db.models import (
    Device,
    Job,
    KernelConfig,
    Measurement,
    Predictor,
    ProfileRun,
    Verification,
)
from hwsearch.db.ops import get_or_create, insert_ignore
from hwsearch.errors import HwsearchError

REPO = Path(__file__).resolve().parents[1]


def _measurement(device_id: int, kernel_id: int, implementation: str = "torch", **kw) -> dict:
    row = dict(
        device_id=device_id,
        kernel_id=kernel_id,
        implementation=implementation,
        backend="cpu",
        native=True,
        median_us=10.0,
        p10_us=9.0,
        p90_us=12.0,
        mean_us=10.5,
        repeats=20,
        cov=0.05,
    )
    row.update(kw)
    return row


def _insert_old_measurements(session, rows: list[dict]) -> None:
    """Rows as an older schema stores them: plain SQL naming only the columns it had."""
    cols = [c for c in rows[0] if c != "environment"] + ["environment", "created_at"]
    sql = text(f"INSERT INTO measurements ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})")
    for row in rows:
        session.execute(sql, {**row, "environment": "{}", "created_at": datetime.now(UTC).replace(tzinfo=None)})


def _device_and_kernels(session, n: int = 3) -> tuple[Device, list[KernelConfig]]:
    device = Device(name="cpu-test", kind="cpu", fingerprint={"cores": 2})
    kernels = [KernelConfig.build("linear", {"m": 1, "k": 64 * (i + 1), "n": 64}) for i in range(n)]
    session.add_all([device, *kernels])
    session.flush()
    return device, kernels


@pytest.fixture
def engine(db_url):
    eng = open_db(db_url)
    yield eng
    eng.dispose()


# --- keys ---------------------------------------------------------------------------------------


def test_kernel_key_is_canonical_and_stable():
    a = KernelConfig.make_key("linear", {"m": 1, "k": 4096, "n": 4096, "format": "int4", "group": 128})
    b = KernelConfig.make_key("linear", {"group": 128, "format": "int4", "n": 4096, "k": 4096, "m": 1})
    assert a == b
    # sha256 of '{"op":"linear","params":{"format":"int4","group":128,"k":4096,"m":1,"n":4096}}':
    # a literal, so a change in canonicalisation (and so every stored key) cannot go unnoticed.
    assert a == "e90cf1af2809635ab7eda87b9bf650c82c00b6b9ba9483c6926d2505877463f3"
    assert KernelConfig.make_key("linear", {"m": 2}) != KernelConfig.make_key("linear", {"m": 2.5})
    assert KernelConfig.make_key("linear", {"m": 2}) != KernelConfig.make_key("attention", {"m": 2})
    with pytest.raises(ValueError):
        KernelConfig.make_key("linear", {"m": float("nan")})


def test_kernel_key_same_in_another_process():
    code = "from hwsearch.db.models import KernelConfig as K; print(K.make_key('x', {'b': [1, 2], 'a': 'é'}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout.strip()
    assert out == KernelConfig.make_key("x", {"a": "é", "b": [1, 2]})


# --- models -------------------------------------------------------------------------------------


def test_models_round_trip(engine):
    with session_scope(engine) as s:
        device, (kernel, *_) = _device_and_kernels(s)
        run = ProfileRun(
            device=device,
            budget="quick",
            requested={"budget": "quick", "seed": 0, "n_planned": 3},
            n_planned=3,
            host="localhost",
        )
        s.add(run)
        s.flush()
        s.add(
            Measurement(
                **_measurement(device.id, kernel.id, threads=2, environment={"torch": "2.13"}),
                profile_run_id=run.id,
            )
        )
        s.add(
            Predictor(
                kind="xgboost",
                name="cpu-xgb",
                device=device,
                devices=["cpu-test"],
                train_summary={"n": 3},
                metrics={"mape": 0.1},
                artefact=b"\x00\x01{UBJ}\xff",
                artefact_format="xgboost-ubj",
            )
        )
        job = Job(name="search", spec={"model": "tiny", "trials": 4}, n_trials_total=4)
        s.add(job)
        s.flush()
        s.add(
            Verification(
                job=job,
                trial_number=3,
                device=device,
                plan={"layers": []},
                predicted_ms=1.5,
                measured_ms=1.7,
                measured_p10_ms=1.6,
                measured_p90_ms=1.9,
            )
        )
        ids = (device.id, kernel.id, run.id, job.id)

    with session_scope(engine) as s:
        device = s.get(Device, ids[0])
        assert device.fingerprint == {"cores": 2}
        assert device.created_at.tzinfo is not None and device.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - device.created_at) < timedelta(minutes=5)
        kernel = s.get(KernelConfig, ids[1])
        assert kernel.params == {"k": 64, "m": 1, "n": 64}
        assert kernel.key == KernelConfig.make_key("linear", {"m": 1, "k": 64, "n": 64})
        (m,) = device.measurements
        assert (m.kernel.id, m.profile_run.id, m.threads, m.environment) == (
            ids[1],
            ids[2],
            2,
            {"torch": "2.13"},
        )
        assert m.native is True and m.median_us == 10.0 and m.repeats == 20
        run = s.get(ProfileRun, ids[2])
        assert run.status == "running" and run.requested["n_planned"] == 3 and run.finished_at is None
        pred = s.scalars(select(Predictor)).one()
        assert pred.artefact == b"\x00\x01{UBJ}\xff" and pred.devices == ["cpu-test"]
        assert pred.target == "kernel"
        job = s.get(Job, ids[3])
        assert job.status == "queued" and job.result is None and job.spec["trials"] == 4
        (v,) = job.verifications
        assert (v.trial_number, v.device.name, v.predicted_ms, v.measured_ms) == (3, "cpu-test", 1.5, 1.7)
        # an aware non-UTC time is stored as the same instant and read back in UTC
        job.heartbeat_at = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with session_scope(engine) as s:
        hb = s.get(Job, ids[3]).heartbeat_at
        assert hb == datetime(2025, 1, 1, 10, 0, tzinfo=UTC) and hb.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(engine):
    with pytest.raises(StatementError, match="naive datetime"), session_scope(engine) as s:
        s.add(Job(name="j", spec={}, started_at=datetime(2025, 1, 1)))
        s.flush()


def test_status_values_are_checked(engine):
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Job(name="j", spec={}, status="finished"))
        s.flush()


def test_measurement_stored_at_most_once(engine):
    with session_scope(engine) as s:
        device, kernels = _device_and_kernels(s)
        s.add(Measurement(**_measurement(device.id, kernels[0].id)))
        s.add(Measurement(**_measurement(device.id, kernels[0].id, "triton")))  # other implementation
        ids = device.id, kernels[0].id
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add(Measurement(**_measurement(*ids)))
        s.flush()
    with session_scope(engine) as s:
        assert len(s.scalars(select(Measurement)).all()) == 2


def test_kernel_key_unique(engine):
    with pytest.raises(IntegrityError), session_scope(engine) as s:
        s.add_all([KernelConfig.build("linear", {"m": 1}), KernelConfig.build("linear", {"m": 1})])
        s.flush()


def test_deleting_a_parent_cascades(engine):
    with session_scope(engine) as s:
        device, kernels = _device_and_kernels(s)
        run = ProfileRun(device=device, budget="quick")
        s.add(run)
        s.flush()
        s.add_all([Measurement(**_measurement(device.id, k.id), profile_run_id=run.id) for k in kernels])
        job = Job(name="j", spec={})
        s.add(job)
        s.flush()
        s.add(Verification(job=job, trial_number=0, device=device, plan={}, measured_ms=1.0))
        device_id, run_id, job_id = device.id, run.id, job.id
    with session_scope(engine) as s:  # a profile run can go; its measurements stay
        s.execute(delete(ProfileRun).where(ProfileRun.id == run_id))
    with session_scope(engine) as s:
        assert [m.profile_run_id for m in s.scalars(select(Measurement))] == [None] * 3
        s.execute(delete(Job).where(Job.id == job_id))
    with session_scope(engine) as s:
        assert s.scalars(select(Verification)).all() == []
        s.execute(delete(Device).where(Device.id == device_id))
    with session_scope(engine) as s:
        assert s.scalars(select(Measurement)).all() == []
        assert len(s.scalars(select(KernelConfig)).all()) == 3  # kernels are device-independent


def test_session_scope_rolls_back(engine):
    with pytest.raises(RuntimeError), session_scope(engine) as s:
        s.add(Device(name="gone", kind="cpu", fingerprint={}))
        s.flush()
        raise RuntimeError("boom")
    with sessionmaker_for(engine)() as s:
        assert s.scalars(select(Device)).all() == []


# --- ops ----------------------------------------------------------------------------------------


def test_insert_ignore_counts_real_inserts(engine):
    with session_scope(engine) as s:
        device, kernels = _device_and_kernels(s)
        rows = [_measurement(device.id, k.id) for k in kernels]
        assert insert_ignore(s, Measurement, rows) == 3
        assert insert_ignore(s, Measurement, rows) == 0
        more = [*rows, _measurement(device.id, kernels[0].id, "triton", native=False, threads=1)]
        assert insert_ignore(s, Measurement, more) == 1
        assert insert_ignore(s, Measurement, []) == 0
        with pytest.raises(HwsearchError, match="unknown column.*speed"):
            insert_ignore(s, Measurement, [{**rows[0], "speed": 1}])
    with session_scope(engine) as s:
        stored = s.scalars(select(Measurement).order_by(Measurement.id)).all()
        assert len(stored) == 4
        assert stored[-1].native is False and stored[-1].threads == 1
        assert all(m.created_at.tzinfo is not None and m.environment == {} for m in stored)  # defaults


def test_insert_ignore_kernels_by_key(engine):
    params = [{"m": m, "k": 128, "n": 128} for m in (1, 8, 64)]
    rows = [{"op": "linear", "params": p, "key": KernelConfig.make_key("linear", p)} for p in params]
    with session_scope(engine) as s:
        assert insert_ignore(s, KernelConfig, rows[:2]) == 2
    with session_scope(engine) as s:
        assert insert_ignore(s, KernelConfig, rows) == 1
        assert sorted(k.params["m"] for k in s.scalars(select(KernelConfig))) == [1, 8, 64]


def test_get_or_create(engine):
    with session_scope(engine) as s:
        dev, created = get_or_create(s, Device, {"name": "orin"}, {"kind": "cuda", "fingerprint": {"sm": 87}})
        assert created and dev.kind == "cuda" and dev.id is not None
        again, created = get_or_create(s, Device, {"name": "orin"}, {"kind": "cpu", "fingerprint": {}})
        assert not created and again.id == dev.id and again.kind == "cuda"
        with pytest.raises(HwsearchError):
            get_or_create(s, Device, {}, {"kind": "cpu"})
    with session_scope(engine) as s:
        assert len(s.scalars(select(Device)).all()) == 1


# --- migrations -----------------------------------------------------------------------------------


def test_fresh_database_is_at_head_and_matches_models(engine):
    assert current_revision(engine) == head_revision() == "0004"
    assert schema_differences(engine) == []
    tables = set(inspect(engine).get_table_names())
    assert {
        "devices",
        "kernel_configs",
        "profile_runs",
        "measurements",
        "predictors",
        "jobs",
        "verifications",
        VERSION_TABLE,
    } <= tables


def test_open_without_upgrade_leaves_database_alone(db_url):
    eng = open_db(db_url, upgrade=False)
    try:
        assert current_revision(eng) is None
        assert inspect(eng).get_table_names() == []
    finally:
        eng.dispose()


def test_database_from_older_revision_opens_with_its_data(db_url):
    old = make_engine(db_url)
    upgrade_schema(old, "0001")
    assert current_revision(old) == "0001"
    assert "jobs" not in inspect(old).get_table_names()
    with session_scope(old) as s:
        device, kernels = _device_and_kernels(s)
        _insert_old_measurements(s, [_measurement(device.id, k.id) for k in kernels])
    old.dispose()

    eng = open_db(db_url)
    try:
        assert current_revision(eng) == "0004"
        assert schema_differences(eng) == []
        with session_scope(eng) as s:
            device = s.scalars(select(Device)).one()
            assert device.name == "cpu-test" and len(device.measurements) == 3
            s.add(Job(name="after-upgrade", spec={"x": 1}))
        with session_scope(eng) as s:
            assert s.scalars(select(Job.name)).all() == ["after-upgrade"]
    finally:
        eng.dispose()


def test_optuna_tables_live_beside_ours(db_url):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_engine(db_url).dispose()  # creates the SQLite folder; Optuna goes first on purpose
    url = database_url(db_url)
    storage = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name="s", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), 2)
    storage.engine.dispose()
    eng = open_db(db_url)
    try:
        assert current_revision(eng) == head_revision()
        assert schema_differences(eng) == []
        storage = optuna.storages.RDBStorage(url)  # and Optuna still opens after us
        assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2
        storage.engine.dispose()
    finally:
        eng.dispose()


# --- engines and errors ---------------------------------------------------------------------------


def test_sqlite_pragmas_and_folder(sqlite_url, tmp_path):
    eng = open_db(sqlite_url)
    try:
        assert (tmp_path / "db" / "hwsearch.db").is_file()
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    finally:
        eng.dispose()


def test_default_url_comes_from_environment(sqlite_url, monkeypatch):
    monkeypatch.setenv("HWSEARCH_DB", sqlite_url)
    eng = open_db()
    try:
        assert str(eng.url) == sqlite_url and current_revision(eng) == head_revision()
    finally:
        eng.dispose()


def test_in_memory_sqlite_works():
    eng = open_db("sqlite://")
    with session_scope(eng) as s:
        s.add(Device(name="mem", kind="cpu", fingerprint={}))
    with session_scope(eng) as s:
        assert s.scalars(select(Device.name)).all() == ["mem"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:1/x",
            r"^cannot reach database postgresql://postgres@127\.0\.0\.1:1/x \(connection refused\); accepted: sqlite",
        ),
        ("not a url", r"^malformed database URL 'not a url'; accepted: sqlite:///PATH or postgresql://"),
        ("postgresql://u@h:port/x", r"^malformed database URL"),
        ("mysql://u@h/x", r"^unsupported database 'mysql'.*; accepted: sqlite"),
        ("postgresql://u:secret@127.0.0.1:1/x", r"^cannot reach database .*u:\*\*\*@"),
    ],
)
def test_bad_urls_give_one_line_errors(url, expected):
    with pytest.raises(HwsearchError, match=expected) as info:
        open_db(url)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


def test_missing_postgres_database_is_named(pg_server):
    from sqlalchemy import make_url

    url = make_url(pg_server).set(database="hwsearch_no_such_db").render_as_string(hide_password=False)
    with pytest.raises(HwsearchError, match='database "hwsearch_no_such_db" does not exist'):
        open_db(url)


def test_sqlite_folder_that_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HwsearchError, match="cannot create the folder"):
        open_db(f"sqlite:///{blocker / 'sub' / 'x.db'}")


OPENER = textwrap.dedent(
    """
    import sys, time
    from hwsearch.db.engine import current_revision, open_db
    from hwsearch.db.ops import get_or_create
    from hwsearch.db.engine import session_scope
    from hwsearch.db.models import Device
    url, start = sys.argv[1], float(sys.argv[2])
    time.sleep(max(0.0, start - time.time()))
    eng = open_db(url)
    with session_scope(eng) as s:
        get_or_create(s, Device, {"name": "shared"}, {"kind": "cpu", "fingerprint": {}})
    print(current_revision(eng))
    """
)


def test_concurrent_open_db_on_fresh_database(db_url):
    start = time.time() + 3.0  # all three import first, then race into the migration together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, db_url, str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err
        assert out.strip() == "0004"
    eng = make_engine(db_url)
    try:
        assert schema_differences(eng) == []
        with eng.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1
            assert conn.execute(text("SELECT count(*) FROM devices")).scalar() == 1
    finally:
        eng.dispose()


def test_immediate_sessions_serialise_read_then_write(db_url):
    """Read-then-write blocks from several threads at once all succeed (each waits its turn)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    eng = open_db(db_url)
    with session_scope(eng) as s:
        s.add(Job(name="counter", spec={}, n_trials_total=0))
    barrier = Barrier(4)

    def bump(_: int) -> None:
        barrier.wait()
        with session_scope(eng, immediate=True) as s:
            job = s.scalars(select(Job).with_for_update()).one()  # FOR UPDATE: PostgreSQL's way
            time.sleep(0.05)
            job.n_trials_total += 1

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(bump, range(4)))
        with session_scope(eng) as s:
            assert s.scalars(select(Job.n_trials_total)).one() == 4
    finally:
        eng.dispose()
