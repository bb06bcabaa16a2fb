"""The local profiler: timing, sampling plans, resume, SIGKILL half-way, CLI output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hwsearch.db.engine import open_db, session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement, ProfileRun
from hwsearch.errors import HwsearchError
from hwsearch.profilers import sampling
from hwsearch.profilers.runner import plan_tasks, profile_local

HWSEARCH = [sys.executable, "-m", "hwsearch.cli"]
TINY = 5e7  # FLOP cap that keeps test plans to small kernels


def test_plans_are_deterministic_and_start_with_the_reference_set():
    quick = sampling.plan_specs("quick")
    assert quick == sampling.plan_specs("quick")
    ref = sampling.reference_set()
    assert quick[: len(ref)] == ref
    assert set(sampling.bench_set()) <= set(quick)
    assert len(sampling.plan_specs(25)) == 25
    assert all(s.flops <= TINY for s in sampling.plan_specs(10, max_flops=TINY))
    assert len(sampling.plan_specs("standard")) > len(quick)


@pytest.mark.parametrize("bad", ["0", "-3", "huge"])
def test_bad_budget(bad):
    with pytest.raises(HwsearchError, match="accepted: quick, standard, full or a positive number"):
        sampling.parse_budget(bad)


def _counts(url: str, name: str) -> tuple[int, int]:
    engine = open_db(url)
    with session_scope(engine) as s:
        dev = s.scalar(select(Device.id).where(Device.name == name))
        total = s.scalar(select(func.count()).select_from(Measurement).where(Measurement.device_id == dev)) or 0
        distinct = s.execute(
            select(func.count()).select_from(
                select(Measurement.kernel_id, Measurement.implementation).where(Measurement.device_id == dev).distinct().subquery()
            )
        ).scalar_one()
    engine.dispose()
    return total, distinct


def test_profile_twice_measures_nothing_new(db_url):
    engine = open_db(db_url)
    first = profile_local(engine, name="dev-a", budget=8, threads=1, show_progress=False, max_flops=TINY)
    assert first.measured == first.planned == len(plan_tasks(8, max_flops=TINY))
    second = profile_local(engine, name="dev-a", budget=8, threads=1, show_progress=False, max_flops=TINY)
    assert second.measured == 0 and second.already_stored == second.planned
    with pytest.raises(HwsearchError, match=r"profiled at 1 thread\(s\), this run times at 2; accepted: --threads 1"):
        profile_local(engine, name="dev-a", budget=8, threads=2, show_progress=False, max_flops=TINY)
    with session_scope(engine) as s:
        m = s.scalars(select(Measurement)).first()
        assert m.rounds >= 3 and m.p10_us <= m.p90_us and m.median_us <= m.p90_us and m.threads == 1
        assert m.environment["round_floors_us"] and m.environment["achieved"]["gbs"] > 0
        run = s.scalars(select(ProfileRun)).one()
        assert run.status == "done" and run.n_done == first.measured
        assert run.machine["limits"]["memory_gbs"] > 0 and "loadavg" in run.machine["before"]
        limits = s.scalars(select(Device)).one().fingerprint["limits"]
        assert limits["cold_bytes"] > 0 and limits["peak_gflops"]
        configs = len(sampling.plan_specs(8, max_flops=TINY))  # a number budget counts configurations
        assert s.scalar(select(func.count()).select_from(KernelConfig)) == configs == 8
    engine.dispose()
    assert _counts(db_url, "dev-a") == (first.planned, first.planned)
    assert not _kernel_children(), "the kernel-measuring child outlived its profile"


def _kernel_children() -> list[int]:
    """This process's children that measure kernels (`profilers.kernel_process`), still running."""
    import psutil

    return [c.pid for c in psutil.Process().children()
            if c.status() != psutil.STATUS_ZOMBIE and "kernel_process" in " ".join(c.cmdline())]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*HWSEARCH, *args], capture_output=True, text=True, env=env, timeout=600)


def test_sigkill_half_way_then_rerun_completes_without_duplicates(db_url, tmp_path: Path):
    env = {**os.environ, "HWSEARCH_HOME": str(tmp_path)}
    args = ["profile", "--local", "--name", "killed", "--budget", "48", "--threads", "1", "--max-gflops", "0.05", "--db", db_url]
    planned = len(plan_tasks(48, max_flops=TINY))
    proc = subprocess.Popen([*HWSEARCH, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    engine = open_db(db_url)
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        with session_scope(engine) as s:
            stored = s.scalar(select(func.count()).select_from(Measurement)) or 0
        if stored >= 4:
            break
        time.sleep(0.05)
    engine.dispose()
    assert proc.poll() is None, "the profile finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial, _ = _counts(db_url, "killed")
    assert 0 < partial < planned
    rerun = _cli(*args, "--json", env=env)
    assert rerun.returncode == 0, rerun.stderr
    doc = json.loads(rerun.stdout)
    assert doc["already_stored"] == partial and doc["measured"] == planned - partial
    assert _counts(db_url, "killed") == (planned, planned)  # none missing, none twice
    again = json.loads(_cli(*args, "--json", env=env).stdout)
    assert again["measured"] == 0


def test_cli_devices_json_and_errors(sqlite_url, tmp_path: Path):
    env = {**os.environ, "HWSEARCH_HOME": str(tmp_path)}
    empty = _cli("devices", "--json", "--db", sqlite_url, env=env)
    assert json.loads(empty.stdout) == {"devices": []}
    out = _cli("profile", "--local", "--name", "cli", "--budget", "3", "--max-gflops", "0.05", "--db", sqlite_url, env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(_cli("devices", "--json", "--db", sqlite_url, env=env).stdout)
    (dev,) = doc["devices"]
    tasks = len(plan_tasks(3, max_flops=TINY))
    assert dev["name"] == "cli" and dev["measurements"] == tasks and dev["native"] + dev["emulated"] == tasks
    assert dev["fingerprint"]["threads"] >= 1 and dev["by_op"]
    for args, needle in [
        (["profile", "--local", "--budget", "lots"], "unknown budget 'lots'; accepted: quick, standard, full"),
        (["profile"], "say where to profile; accepted: --local, or --device NAME"),
        (["devices", "--db", "postgresql://postgres@127.0.0.1:1/x"], "cannot reach database"),
        (["devices", "--db", "nonsense://"], "accepted: sqlite:///PATH or postgresql://"),
        (["bench", "kernels", "--device", "nope", "--db", sqlite_url], "unknown device 'nope'; accepted: cli"),
    ]:
        res = _cli(*args, env=env)
        assert res.returncode == 2, (args, res.stderr)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, res.stderr)


def test_devices_export_import_round_trip(db_url, sqlite_url, tmp_path: Path):
    from hwsearch.profilers.transfer import export_device, import_device

    source = open_db(sqlite_url)
    first = profile_local(source, name="box", budget=5, threads=1, show_progress=False, max_flops=TINY)
    out = export_device(source, "box", tmp_path / "box.json.gz")
    assert out["measurements"] == first.measured
    target = open_db(db_url) if db_url != sqlite_url else open_db(f"sqlite:///{tmp_path / 'other.db'}")
    done = import_device(target, tmp_path / "box.json.gz")
    assert done["imported"] == first.measured and done["already_stored"] == 0
    again = import_device(target, tmp_path / "box.json.gz")
    assert again["imported"] == 0 and again["already_stored"] == first.measured
    with session_scope(target) as s:
        dev = s.scalars(select(Device)).one()
        assert dev.name == "box" and dev.fingerprint["cpu_model"]
        medians = sorted(m.median_us for m in s.scalars(select(Measurement)))
    with session_scope(source) as s:
        assert medians == sorted(m.median_us for m in s.scalars(select(Measurement)))
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    with pytest.raises(HwsearchError, match="accepted: hwsearch.device-profile/v1"):
        import_device(target, tmp_path / "bad.json")


def test_bench_repeat_retimes_stored_kernels(sqlite_url):
    from hwsearch.bench.repeat import run as run_repeat

    engine = open_db(sqlite_url)
    profile_local(engine, name="again", budget=6, threads=1, show_progress=False, max_flops=TINY)
    doc = run_repeat(engine, "again", sample=4, seed=1)
    assert doc["n"] == 4 and len(doc["rows"]) == 4 and 0.0 <= doc["within_10pct"] <= 1.0
    assert doc["within_5pct"] <= doc["within_10pct"] and doc["median_abs_log_ratio"] >= 0
    assert {r["implementation"] for r in doc["rows"]} and all(r["now_us"] > 0 for r in doc["rows"])
    with pytest.raises(HwsearchError, match="accepted: 1 or more"):
        run_repeat(engine, "again", sample=0)
    engine.dispose()


def test_bench_kernels_times_each_shape_side_by_side():
    """On the device's machine a speed-up is a ratio timed in the same interleaved rounds as its
    baseline, not two stored measurements taken minutes apart."""
    from types import SimpleNamespace

    from hwsearch.bench.kernels import _side_by_side
    from hwsearch.kernels.specs import LinearSpec

    base, int8 = LinearSpec(M=8, K=64, N=64, format="bf16"), LinearSpec(M=8, K=64, N=64, format="int8")
    other = LinearSpec(M=1, K=64, N=128, format="bf16")
    rows = [(int8, SimpleNamespace(implementation="cpu.linear.int8_fbgemm")),
            (base, SimpleNamespace(implementation="cpu.linear.dense")),
            (other, SimpleNamespace(implementation="cpu.linear.dense"))]
    timed = _side_by_side(rows, threads=1, backend="cpu", limits=None)
    assert set(timed) == {(s, m.implementation) for s, m in rows}
    assert all(t.median_us > 0 and t.rounds >= 1 and t.implementation == impl for (_, impl), t in timed.items())
