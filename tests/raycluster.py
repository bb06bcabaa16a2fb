"""A real Ray cluster for tests: a head and a second node, `ray start` on loopback, free ports.

The pattern of `test_cluster.py`: 127.0.0.2 (``ray start`` rewrites 127.0.0.1 into the network
address), each `ray start` in a session of its own so its daemons share a process group, and at
the end those groups are stopped, then anything left whose command line names the cluster's
temp folder. Only processes this helper started are touched.
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]
    root: Path


def _popen(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(root: Path, groups: list[int]) -> None:
    import psutil

    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
    time.sleep(1.0)
    mine = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.pid != os.getpid() and (str(root) in " ".join(proc.info["cmdline"] or []) or
                                            os.getpgid(proc.pid) in groups):
                mine += [proc, *proc.children(recursive=True)]
        except (psutil.Error, OSError):
            continue
    for proc in mine:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(mine, timeout=10)


@contextmanager
def ray_cluster(head_cpus: int = 2, node_cpus: int = 2, node_resources: dict[str, float] | None = None,
                home: Path | None = None) -> Iterator[RayCluster]:
    """Start head + one node, connect this process as a driver, stop everything afterwards."""
    import ray

    root = Path(tempfile.mkdtemp(prefix="hwj", dir="/tmp"))  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", HWSEARCH_HOME=str(home or root / "home"))
    groups: list[int] = []
    auth_before = os.environ.get("RAY_AUTH_MODE")
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    common = ["--node-ip-address", LOOPBACK, "--object-store-memory", str(100 << 20), "--disable-usage-stats"]
    try:
        head = _popen([RAY, "start", "--head", "--port", str(port), "--temp-dir", str(root / "head"), *common,
                       "--include-dashboard=false", "--dashboard-port", str(free_port()),
                       "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                       "--num-cpus", str(head_cpus)], env, root / "head.log")
        groups.append(head.pid)
        assert head.wait(timeout=180) == 0, (root / "head.log").read_text()[-3000:]
        node = _popen([RAY, "start", "--address", address, "--temp-dir", str(root / "node"), *common,
                       "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", str(node_cpus),
                       "--resources", json.dumps(node_resources or {})], env, root / "node.log")
        groups.append(node.pid)
        assert node.wait(timeout=180) == 0, (root / "node.log").read_text()[-3000:]
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=address, namespace="hwsearch", logging_level="ERROR", log_to_driver=False)
        deadline = time.time() + 120
        while time.time() < deadline and len([n for n in ray.nodes() if n["Alive"]]) < 2:
            time.sleep(0.5)
        assert len([n for n in ray.nodes() if n["Alive"]]) >= 2, f"nodes did not join: {ray.nodes()}"
        yield RayCluster(address, env, root)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if auth_before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_before
        _stop(root, groups)
        shutil.rmtree(root, ignore_errors=True)
