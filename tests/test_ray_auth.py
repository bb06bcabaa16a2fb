"""A closed cluster by default: `hwsearch cluster start` on loopback requires the installation's
Ray token, so a client without it is refused and one with it is admitted.

The head runs in a data folder of its own (its token is made there on first use, mode 0600);
clients are real processes: `hwsearch cluster status` from another data folder (no token), plain
Ray drivers with no token or a wrong one (refused by the cluster itself), and `hwsearch cluster
status` with the head's token, then with a copy of it in the other folder (admitted).
Everything started is stopped with `hwsearch cluster stop`, then by the temp folder's name.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from raycluster import LOOPBACK, free_port

HWSEARCH = [sys.executable, "-m", "hwsearch.cli"]
DRIVER = """
import sys, ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    print("admitted", len([n for n in ray.nodes() if n["Alive"]]))
except Exception as err:
    print("refused", type(err).__name__, " ".join(str(err).split())[:300])
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "HWSEARCH_DB")}
    env.update(HWSEARCH_HOME=str(home), **extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def _leftovers(root: Path) -> int:
    """Kill what is left whose command line names `root`; returns how many there were."""
    import psutil

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
    return len(mine)


@pytest.mark.ray
@pytest.mark.slow
def test_cluster_start_refuses_clients_without_the_token_and_admits_those_with_it() -> None:
    root = Path(tempfile.mkdtemp(prefix="hwa", dir="/tmp"))  # short: Ray's socket paths live under it
    head_home, other_home = root / "head-home", root / "other-home"
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    head_env = _env(head_home)
    try:
        start = _run([*HWSEARCH, "cluster", "start", "--port", str(port), "--node-ip-address", LOOPBACK, "--num-cpus", "1",
                      "--temp-dir", str(root / "head"), "--", "--object-store-memory", str(100 << 20),
                      "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                      "--dashboard-agent-listen-port", str(free_port())], head_env)
        assert start.returncode == 0, start.stdout + start.stderr
        token = head_home / "ray-auth-token"
        assert f"head running at {address}" in start.stdout and f"token: {token}" in start.stdout
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64
        assert token.read_text() not in (head_home / "ray-nodes.json").read_text() + start.stdout + start.stderr

        # no token here: hwsearch says what is missing, in one line, before Ray tries
        other = _env(other_home)
        status = _run([*HWSEARCH, "cluster", "status", "--address", address], other)
        assert status.returncode == 2 and status.stderr.count("\n") == 1, status.stderr
        assert "no Ray token at" in status.stderr and "copy the head's token file" in status.stderr
        # plain Ray drivers: without authentication, and with a wrong token, the cluster refuses them
        for env in (_env(other_home, RAY_AUTH_MODE="disabled"),
                    _env(other_home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)):
            driver = _run([sys.executable, "-c", DRIVER, address], env, timeout=240)
            assert driver.stdout.startswith("refused"), (driver.stdout, driver.stderr[-2000:])

        # with the token: the head's own folder, then a copy in the other folder (as on a device)
        admitted = _run([*HWSEARCH, "cluster", "status", "--address", address, "--json"], head_env)
        assert admitted.returncode == 0, admitted.stderr
        nodes = json.loads(admitted.stdout)["nodes"]
        assert len(nodes) == 1 and nodes[0]["alive"] and nodes[0]["address"] == LOOPBACK
        other_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(token, other_home / "ray-auth-token")
        (other_home / "ray-auth-token").chmod(0o600)
        copied = _run([*HWSEARCH, "cluster", "status", "--address", address, "--json"], other)
        assert copied.returncode == 0 and len(json.loads(copied.stdout)["nodes"]) == 1, copied.stderr
        driver = _run([sys.executable, "-c", DRIVER, address],
                      _env(other_home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)))
        assert driver.stdout.startswith("admitted 1"), (driver.stdout, driver.stderr[-2000:])
    finally:
        stop = _run([*HWSEARCH, "cluster", "stop"], head_env)
        left = _leftovers(root)
        shutil.rmtree(root, ignore_errors=True)
    assert stop.returncode == 0 and "stopped head" in stop.stdout, stop.stdout + stop.stderr
    assert left == 0  # `cluster stop` stopped every process of the head it had recorded, and what they started
