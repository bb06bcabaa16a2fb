"""Profiling devices through a real Ray cluster, and several profilers writing one PostgreSQL database.

One cluster for the module, on loopback: a head offering `device:xavier`, a node started with
plain `ray start --address ... --resources '{"device:orin": 1}'`, and a second orin node started
with `hwsearch worker --device orin --detach`. Everything it starts is stopped at the end, also
when a test fails: `hwsearch cluster stop` for the recorded worker, then the process groups of the
`ray start` calls, then anything left whose command line names the cluster's temp folder.

127.0.0.2, not 127.0.0.1: `ray start` rewrites 127.0.0.1 into the machine's network address;
the rest of 127.0.0.0/8 is loopback too and is kept as given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from hwsearch.db.engine import open_db, session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement, ProfileRun
from hwsearch.errors import HwsearchError
from hwsearch.profilers.runner import plan_tasks
from hwsearch.profilers.store import kernel_key

HWSEARCH = [sys.executable, "-m", "hwsearch.cli"]
RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = "127.0.0.2"
TINY = 5e7  # FLOP cap that keeps plans to small kernels (--max-gflops 0.05)
SMALL = ["--threads", "1", "--max-gflops", "0.05"]
TINIER = ["--threads", "1", "--max-gflops", "0.005"]


# --- helpers --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*HWSEARCH, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def _planned(budget: int, seed: int = 0, max_flops: float = TINY) -> set[tuple[str, str]]:
    return {(kernel_key(spec), impl) for spec, impl in plan_tasks(budget, seed=seed, max_flops=max_flops)}


def _stored(url: str, device: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(kernel key, implementation) of every stored row of the device (duplicates kept), environments."""
    engine = open_db(url)
    with session_scope(engine) as s:
        rows = s.execute(
            select(KernelConfig.key, Measurement.implementation, Measurement.environment)
            .join(Measurement, Measurement.kernel_id == KernelConfig.id)
            .join(Device, Device.id == Measurement.device_id)
            .where(Device.name == device)
        ).all()
    engine.dispose()
    return [(k, i) for k, i, _ in rows], [e for _, _, e in rows]


def _device(url: str, name: str) -> tuple[dict, list[ProfileRun]]:
    engine = open_db(url)
    with session_scope(engine) as s:
        dev = s.scalars(select(Device).where(Device.name == name)).one()
        runs = list(s.scalars(select(ProfileRun).where(ProfileRun.device_id == dev.id).order_by(ProfileRun.id)))
    engine.dispose()
    return dev.fingerprint, runs


# --- without a cluster ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_four_profilers_into_one_postgres_store_exactly_the_union(pg_url: str, tmp_path: Path):
    env = {**os.environ, "HWSEARCH_HOME": str(tmp_path)}
    # Overlapping, not nested: every plan starts with the same reference kernels, then its own seeded draw.
    plans = [(5, 0), (5, 1), (5, 2), (5, 3)]
    procs = [
        subprocess.Popen([*HWSEARCH, "profile", "--local", "--name", "shared", "--budget", str(budget), "--seed", str(seed),
                          "--db", pg_url, "--json", *TINIER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for budget, seed in plans
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    union = set().union(*(_planned(budget, seed, 5e6) for budget, seed in plans))
    assert len(union) > max(len(_planned(b, s, 5e6)) for b, s in plans)  # the plans really differ
    rows, _ = _stored(pg_url, "shared")
    assert len(rows) == len(union) and set(rows) == union
    assert sum(json.loads(out)["measured"] for out, _ in results) == len(union)  # each row counted by one writer


def test_worker_refuses_bad_names_and_unreachable_heads(tmp_path: Path):
    env = {**os.environ, "HWSEARCH_HOME": str(tmp_path)}
    for args, needle in [
        (["worker", "--device", "my orin!", "--address", "127.0.0.2:1"], "invalid device name 'my orin!'; accepted:"),
        (["worker", "--device", "orin", "--address", "127.0.0.2:1"], "no Ray head answers at 127.0.0.2:1"),
        (["worker", "--device", "orin", "--address", "nohost"], "malformed Ray address 'nohost'; accepted: HOST:PORT"),
        (["profile", "--device", "orin", "--name", "x"], "--name goes with --local; a --device is stored under its own NAME"),
        (["profile", "--device", "a/b", "--address", "127.0.0.2:1"], "invalid device name 'a/b'; accepted:"),
    ]:
        res = _cli(*args, env=env, timeout=120)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in _one_line(res.stderr), (args, res.stderr)
    stop = _cli("cluster", "stop", env=env, timeout=120)
    assert stop.returncode == 0 and "no Ray node started by hwsearch" in stop.stdout


def test_self_check_runs_every_cpu_kernel():
    from hwsearch.kernels import registry
    from hwsearch.profilers.worker import self_check

    report = self_check("cpu", threads=1)
    available = {k.name for k in registry.all_kernels() if k.backend == "cpu" and k.available()}
    assert available <= set(report.kernels) and report.cases >= len(available) and report.measured_us > 0
    with pytest.raises(HwsearchError, match="unknown backend 'tpu'; accepted: cpu, cuda"):
        self_check("tpu")


# --- the cluster ----------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    head_node: str
    orin_nodes: set[str]


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # A session of its own: every daemon this `ray start` leaves behind carries its process group.
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ok(proc: subprocess.Popen, log: Path, what: str) -> None:
    code = proc.wait(timeout=180)
    assert code == 0, f"{what} failed ({code}):\n{log.read_text()[-3000:]}"


def _kill_leftovers(root: Path, groups: list[int]) -> None:
    """Stop the process groups we started, then anything left that names our temp folder."""
    import psutil

    from hwsearch.profilers.worker import stop_group

    for pgid in groups:
        stop_group(pgid, grace=5)
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if str(root) in " ".join(proc.info["cmdline"] or []):
                mine += [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in mine:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(mine, timeout=10)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    import ray

    root = Path(tempfile.mkdtemp(prefix="hwr", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HWSEARCH_HOME=str(root / "home"))
    groups: list[int] = []
    auth_before = os.environ.get("RAY_AUTH_MODE")
    port = _free_port()
    address = f"{LOOPBACK}:{port}"
    common = ["--node-ip-address", LOOPBACK, "--object-store-memory", str(100 << 20), "--disable-usage-stats"]
    try:
        head = _popen([RAY, "start", "--head", "--port", str(port), "--temp-dir", str(root / "head"), *common,
                       "--include-dashboard=false", "--dashboard-port", str(_free_port()),
                       "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
                       "--num-cpus", "1", "--resources", json.dumps({"device:xavier": 1})], env, root / "head.log")
        groups.append(head.pid)
        _wait_ok(head, root / "head.log", "ray start --head")
        orin1 = _popen([RAY, "start", "--address", address, "--temp-dir", str(root / "orin1"), *common,
                        "--dashboard-agent-listen-port", str(_free_port()), "--num-cpus", "1",
                        "--resources", json.dumps({"device:orin": 1})], env, root / "orin1.log")
        groups.append(orin1.pid)
        orin2 = _popen([*HWSEARCH, "worker", "--device", "orin", "--address", address, "--node-ip-address", LOOPBACK,
                        "--threads", "1", "--detach", "--temp-dir", str(root / "orin2"), "--",
                        "--object-store-memory", str(100 << 20), "--dashboard-agent-listen-port", str(_free_port())],
                       env, root / "orin2.log")
        groups.append(orin2.pid)
        _wait_ok(orin1, root / "orin1.log", "ray start --address (orin)")
        _wait_ok(orin2, root / "orin2.log", "hwsearch worker --device orin")
        os.environ["RAY_AUTH_MODE"] = "disabled"  # this process is a driver too (to find actors); restored below
        ray.init(address=address, namespace="hwsearch", logging_level="ERROR", log_to_driver=False)
        deadline = time.time() + 120
        while time.time() < deadline:
            alive = [n for n in ray.nodes() if n["Alive"]]
            orin = {n["NodeID"] for n in alive if n["Resources"].get("device:orin")}
            xavier = [n["NodeID"] for n in alive if n["Resources"].get("device:xavier")]
            if len(orin) == 2 and xavier:
                break
            time.sleep(0.5)
        assert len(orin) == 2 and xavier, f"nodes did not join: {ray.nodes()}"
        yield Cluster(address, env, xavier[0], orin)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if auth_before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_before
        try:
            subprocess.run([*HWSEARCH, "cluster", "stop"], env=env, timeout=120, capture_output=True)
        finally:
            _kill_leftovers(root, groups)
            shutil.rmtree(root, ignore_errors=True)


# --- Ray tests ------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_missing_device_fails_fast_with_the_devices_offered(cluster: Cluster, sqlite_url: str):
    res = _cli("profile", "--device", "nope", "--address", cluster.address, "--db", sqlite_url, env=cluster.env,
               timeout=120)  # Ray alone would wait for the resource forever
    assert res.returncode == 2, res.stderr
    line = _one_line(res.stderr)
    assert "no Ray node offers device:nope; the cluster offers: orin, xavier" in line
    assert f"hwsearch worker --device nope --address {cluster.address}" in line
    status = json.loads(_cli("cluster", "status", "--address", cluster.address, "--json", env=cluster.env).stdout)
    assert status["devices"] == {"orin": 2, "xavier": 1}
    bad = _cli("profile", "--device", "orin", "--address", "127.0.0.2:1", "--db", sqlite_url, env=cluster.env)
    assert bad.returncode == 2 and "no Ray head answers at 127.0.0.2:1" in _one_line(bad.stderr)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.postgres
def test_profile_two_devices_at_once_through_the_cli_into_postgres(cluster: Cluster, pg_url: str):
    args = ["--address", cluster.address, "--db", pg_url, "--json", *SMALL]
    orin = subprocess.Popen([*HWSEARCH, "profile", "--device", "orin", "--budget", "12", *args], env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    xavier = _cli("profile", "--device", "xavier", "--budget", "4", *args, env=cluster.env)
    out, err = orin.communicate(timeout=600)
    assert orin.returncode == 0, err
    assert xavier.returncode == 0, xavier.stderr
    planned = _planned(12)
    doc = json.loads(out)
    assert doc["device"] == "orin" and doc["planned"] == doc["measured"] == len(planned)
    rows, envs = _stored(pg_url, "orin")
    assert len(rows) == len(planned) and set(rows) == planned  # exactly the plan, nothing twice
    assert {e["ray_node_id"] for e in envs} == cluster.orin_nodes  # both orin nodes took chunks
    fp, runs = _device(pg_url, "orin")
    assert fp["ray_node_id"] in cluster.orin_nodes and fp["threads"] == 1  # read on the node, not here
    assert [(r.status, r.n_done, r.n_planned) for r in runs] == [("done", len(planned), len(planned))]
    x_rows, x_envs = _stored(pg_url, "xavier")
    assert set(x_rows) == _planned(4) and len(x_rows) == len(_planned(4))
    assert {e["ray_node_id"] for e in x_envs} == {cluster.head_node}
    again = json.loads(_cli("profile", "--device", "orin", "--budget", "12", *args, env=cluster.env).stdout)
    assert again["measured"] == 0 and again["already_stored"] == len(planned)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.postgres
def test_worker_killed_mid_run_loses_nothing_and_stores_nothing_twice(cluster: Cluster, pg_url: str):
    import ray

    from hwsearch.profilers.cluster import NAMESPACE, worker_pid

    planned = _planned(16)
    proc = subprocess.Popen([*HWSEARCH, "profile", "--device", "orin", "--budget", "16", "--address", cluster.address,
                             "--db", pg_url, "--json", *SMALL], env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = open_db(pg_url)
    killed = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            with session_scope(engine) as s:
                stored = s.scalar(select(func.count()).select_from(Measurement)) or 0
            if stored >= 4:  # the first chunk landed: both profilers are at work
                names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                               if a["name"].startswith("profiler:orin:"))
                pid = worker_pid(ray.get_actor(names[0], namespace=NAMESPACE))
                os.kill(pid, signal.SIGKILL)
                killed = (pid, stored)
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
        out, err = proc.communicate(timeout=600)
    assert killed is not None, f"the run ended before a worker could be killed: {err}"
    assert killed[1] < len(planned)
    assert proc.returncode == 0, err
    assert out.lstrip().startswith("{"), (out, err)
    doc = json.loads(out)
    assert doc["measured"] == doc["planned"] == len(planned)
    rows, _ = _stored(pg_url, "orin")
    assert len(rows) == len(planned) and set(rows) == planned
    _, runs = _device(pg_url, "orin")
    assert [r.status for r in runs] == ["done"] and runs[0].n_done == len(planned)
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
