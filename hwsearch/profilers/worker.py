"""Adding hardware to a Ray cluster: the head, device workers, and stopping what we started.

`hwsearch worker --device NAME` first checks that this machine computes every kernel right
(each registered implementation on a tiny shape against the fp64 reference, and one timed
measurement), then runs `ray start` offering the custom resource `device:NAME`. A broken
install is refused here, with the kernel named, rather than found half-way through a profile.

Worker nodes offer no CPU slots by default (`--num-cpus 0`): only work that asks for
`device:NAME` lands there, so nothing else runs beside the kernels being timed.

Nodes started with `--detach` are recorded (their processes, with their start times) in the data
folder, so `hwsearch cluster stop` stops exactly those and never Ray processes someone else
started, nor a process that took a recorded pid later.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwsearch.errors import HwsearchError
from hwsearch.processes import group_members, still_ours
from hwsearch.profilers.cluster import check_device_name, check_reachable, resource_name
from hwsearch.profilers.threads import check_threads

STOP_GRACE_S = 10.0


# --- self-check ---------------------------------------------------------------------------


@dataclass
class SelfCheck:
    backend: str
    kernels: list[str]  # implementations checked
    cases: int  # (spec, implementation) pairs compared against the reference
    measured_us: float  # median of the one timed kernel


def self_check(backend: str = "cpu", threads: int | None = None) -> SelfCheck:
    """The kernel conformance checks of `backend` (`hwsearch.kernels.checks`), then one timing."""
    from hwsearch.kernels import registry
    from hwsearch.kernels.checks import check_backend
    from hwsearch.kernels.specs import LinearSpec
    from hwsearch.profilers.measure import measure

    registry.require_backend(backend)  # unknown or not runnable here: one line
    try:
        report = check_backend(backend)
    except HwsearchError as err:
        raise HwsearchError(f"self-check: {err}") from None
    spec = LinearSpec(8, 256, 256, "bf16")
    timed = measure("linear", spec.params(), registry.select(spec, backend).name, threads=threads or 1, backend=backend)
    return SelfCheck(backend, report.kernels, report.cases, timed["median_us"])


# --- ray start / stop ---------------------------------------------------------------------


def ray_executable() -> str:
    """The `ray` command of this environment (the one next to this Python first)."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise HwsearchError("the `ray` command is not installed here; accepted: pip install 'ray[default]'")
    return found


def nodes_file() -> Path:
    from hwsearch.config import data_dir

    return data_dir() / "ray-nodes.json"


def _load_nodes() -> list[dict[str, Any]]:
    try:
        nodes = json.loads(nodes_file().read_text())
    except (OSError, ValueError):
        return []
    return [n for n in nodes if isinstance(n, dict)] if isinstance(nodes, list) else []


def _save_nodes(nodes: list[dict[str, Any]]) -> None:
    nodes_file().write_text(json.dumps(nodes, indent=2))


def _ray_env(extra: dict[str, str], insecure: bool, create_token: bool) -> dict[str, str]:
    """Ray's processes inherit this: the node's actors read HWSEARCH_* from it, Ray finds its token
    through it (`ray_auth`), and no secret of this shell (the database URL) reaches them."""
    from hwsearch import ray_auth

    why = ray_auth.opted_out(insecure)
    if why:
        sys.stderr.write(ray_auth.INSECURE_WARNING.format(why=why) + "\n")
    return {**ray_auth.node_env(insecure, create_token), **extra}


def _run_ray(args: list[str], env: dict[str, str], block: bool, record: dict[str, Any]) -> int:
    """Run `ray start ...`: in the foreground (Ctrl-C stops the node) or detached and recorded."""
    cmd = [ray_executable(), "start", *args, "--disable-usage-stats"]
    if block:
        proc = subprocess.Popen([*cmd, "--block"], env=env)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to ray too: it stops its processes; a stop asked for is a success.
            try:
                proc.wait(timeout=STOP_GRACE_S * 3)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait()
            return 0
    # A session of its own: every process this node starts carries its process-group id.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
    code = proc.wait()
    if code == 0:
        # each daemon of the node with its start time: `stop_recorded` signals only those still running
        _save_nodes([*_load_nodes(), {**record, "pgid": proc.pid, "started": time.time(),
                                      "processes": group_members(proc.pid)}])
    return code


def reachable_ip(toward: str = "8.8.8.8") -> str:
    """The address of this machine's interface toward `toward` (default: the outgoing one, Ray's
    own choice): what other machines reach this one on."""
    import ipaddress
    import socket

    try:
        if ipaddress.ip_address(toward).is_loopback:
            return toward  # a head on loopback (a one-machine cluster): the node is reached there too
    except ValueError:
        pass  # a host name
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((toward, 80))  # UDP: picks the interface, sends nothing
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def start_worker(device: str, address: str, *, threads: int | None = None, num_cpus: int = 0, backend: str = "cpu",
                 block: bool = True, node_ip: str | None = None, temp_dir: str | None = None,
                 extra_args: list[str] | None = None, insecure: bool = False) -> int:
    """Join the cluster at `address` as a node offering `device:NAME` (after `self_check`), with the
    head's token (`ray_auth`) unless `insecure`; this node is reached on `node_ip` (default: this
    machine's interface toward the head)."""
    check_device_name(device)
    check_threads(threads)
    check_reachable(address)
    env = _ray_env({}, insecure, create_token=False)
    node_ip = node_ip or reachable_ip(address.rpartition(":")[0].strip("[]"))
    args = ["--address", address, "--resources", json.dumps({resource_name(device): 1}), "--num-cpus", str(num_cpus),
            "--node-ip-address", node_ip]
    if temp_dir:
        args += ["--temp-dir", temp_dir]
    env.update(HWSEARCH_DEVICE=device, HWSEARCH_BACKEND=backend)
    if threads:
        env["HWSEARCH_THREADS"] = str(threads)
    return _run_ray([*args, *(extra_args or [])], env, block,
                    {"role": "worker", "device": device, "address": address, "node_ip": node_ip})


def start_head(*, port: int = 6379, num_cpus: int | None = None, node_ip: str | None = None, block: bool = False,
               temp_dir: str | None = None, dashboard: bool = False, extra_args: list[str] | None = None,
               insecure: bool = False) -> int:
    """Start the head: it schedules, it measures nothing unless it also offers a device. It requires
    this installation's token (generated on first use, `ray_auth`) unless `insecure`, and is
    reached on `node_ip` (default: `reachable_ip()`)."""
    env = _ray_env({}, insecure, create_token=True)
    node_ip = node_ip or reachable_ip()
    args = ["--head", "--port", str(port), f"--include-dashboard={str(dashboard).lower()}", "--node-ip-address", node_ip]
    if num_cpus is not None:
        args += ["--num-cpus", str(num_cpus)]
    if temp_dir:
        args += ["--temp-dir", temp_dir]
    return _run_ray([*args, *(extra_args or [])], env, block, {"role": "head", "port": port, "node_ip": node_ip})


def stop_group(pgid: int, grace: float = STOP_GRACE_S) -> int:
    """SIGTERM the processes of a process group this caller started (and what they started),
    SIGKILL what is left after `grace`; returns how many."""
    return stop_processes(still_ours(group_members(pgid)), grace)


def stop_processes(procs: list[Any], grace: float = STOP_GRACE_S) -> int:
    """SIGTERM `procs` (psutil handles), SIGKILL what is left after `grace`; returns how many."""
    import psutil

    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=grace)
    return len(procs)


def stop_recorded() -> list[dict[str, Any]]:
    """Stop every node this machine started with hwsearch (detached); returns their records.

    Only the processes recorded when the node started that still run as themselves (same pid
    and start time, `processes.still_ours`) and what they started are signalled: a pid reused
    by another program since is left alone. A record from before start times were kept is
    dropped without signalling anything."""
    nodes = list(reversed(_load_nodes()))  # workers before the head
    for node in nodes:
        node["processes"] = stop_processes(still_ours(node.get("processes") or []))
    _save_nodes([])
    return nodes


def cluster_status(address: str | None = None) -> dict[str, Any]:
    """Nodes of the cluster and the devices they offer (as one JSON-ready document)."""
    import ray

    from hwsearch.profilers.cluster import RESOURCE_PREFIX, connect, offered_devices

    head = connect(address)
    nodes = []
    for node in ray.nodes():
        res = node.get("Resources") or {}
        nodes.append({
            "node_id": node["NodeID"], "address": node["NodeManagerAddress"], "alive": bool(node.get("Alive")),
            "devices": sorted(k[len(RESOURCE_PREFIX):] for k in res if k.startswith(RESOURCE_PREFIX)),
            "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0),
        })
    devices = {name: len(found) for name, found in sorted(offered_devices().items())}
    return {"address": head, "nodes": nodes, "devices": devices}
