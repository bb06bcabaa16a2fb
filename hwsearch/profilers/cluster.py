"""Profile a device through Ray: one actor per node offering `device:NAME`, chunks shared among them.

The driver (where `hwsearch profile --device NAME` runs) never measures anything itself. It
asks the device's node(s) for their fingerprint and their plan (what that device can run is
read there, not on the driver), subtracts what the database already holds, and hands chunks of
a few kernels to actors pinned one per node. Each finished chunk is written in one transaction
as soon as it arrives, so a worker process or node that dies loses at most its chunk in flight;
that chunk goes back on the queue for the remaining actors (or for the restarted one). The
measurements' unique key, not luck, keeps anything from being stored twice.

`ray` is imported inside functions: the CLI imports this module only for cluster commands.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hwsearch.errors import HwsearchError
from hwsearch.profilers.threads import check_threads

if TYPE_CHECKING:  # torch comes with these; `hwsearch worker` checks its arguments before loading it
    from sqlalchemy.engine import Engine

    from hwsearch.profilers.runner import ProfileSummary

RESOURCE_PREFIX = "device:"
NAMESPACE = "hwsearch"
ACTOR_PREFIX = "profiler"
MAX_RESTARTS = 3  # a killed worker process comes back this often per node
MAX_ATTEMPTS = 3  # a chunk whose worker dies this often is reported, not retried forever
# Kernels per chunk handed to a node: several nodes of one device share the work chunk by chunk, so
# chunks stay small here; a chunk's kernels are still timed together in interleaved rounds.
NODE_CHUNK = 4
CONNECT_TIMEOUT_S = 3.0
START_GRACE_S = 15.0  # how long nodes that start together wait for each other
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WORKER_HINT = "hwsearch worker --device {name} --address {address}"


def check_device_name(name: str) -> str:
    """Device names become Ray resource names and database keys: keep them plain."""
    if not NAME_PATTERN.match(name or ""):
        raise HwsearchError(
            f"invalid device name {name!r}; accepted: 1-64 letters, digits, '_', '.', '-' starting with a letter or digit"
        )
    return name


def resource_name(device: str) -> str:
    return f"{RESOURCE_PREFIX}{device}"


# --- connecting --------------------------------------------------------------------------


def _split_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def check_reachable(address: str) -> None:
    """A TCP connect to HOST:PORT first: Ray itself retries for a minute before giving up."""
    parts = _split_address(address)
    if parts is None:
        raise HwsearchError(f"malformed Ray address {address!r}; accepted: HOST:PORT of the head, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection(parts, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise HwsearchError(
            f"no Ray head answers at {address} ({err.strerror or err}); accepted: the address `hwsearch cluster start` "
            "printed (HOST:PORT), with the head running"
        ) from err


def connect(address: str | None = None) -> str:
    """Join the cluster as a driver (once per process); returns the head's address."""
    import ray

    if not ray.is_initialized():
        from hwsearch import ray_auth

        target = address or os.environ.get("RAY_ADDRESS") or "auto"
        if target != "auto" and not target.startswith("ray://"):
            check_reachable(target)
        ray_auth.apply_to_driver(create=False)  # the head's token, never a new one
        try:
            ray.init(address=target, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as err:
            reason = " ".join(str(getattr(err, "message", None) or err).split())[:200]
            raise HwsearchError(
                f"cannot join a Ray cluster at {target} ({reason}); accepted: --address HOST:PORT of a running head "
                "(start one with `hwsearch cluster start`), run from a machine that is a node of the cluster, with "
                f"the head's token ({ray_auth.token_in_use()})"
            ) from err
    return ray.get_runtime_context().gcs_address


def offered_devices() -> dict[str, list[dict[str, Any]]]:
    """Device name → the alive nodes offering `device:NAME` (Ray's node dicts)."""
    import ray

    found: dict[str, list[dict[str, Any]]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key, amount in (node.get("Resources") or {}).items():
            if key.startswith(RESOURCE_PREFIX) and amount > 0:
                found.setdefault(key[len(RESOURCE_PREFIX) :], []).append(node)
    return found


def nodes_offering(device: str, head: str) -> list[dict[str, Any]]:
    """The nodes offering the device, or a one-line error naming the devices that are offered.

    Without this check Ray would keep an actor asking for a missing resource pending forever.
    """
    offered = offered_devices()
    if device not in offered:
        names = ", ".join(sorted(offered)) or "none"
        raise HwsearchError(
            f"no Ray node offers device:{device}; the cluster offers: {names}; accepted: one of those, or start a worker "
            f"on the device with `{WORKER_HINT.format(name=device, address=head)}`"
        )
    return offered[device]


# --- the actor ----------------------------------------------------------------------------


def node_threads(requested: int | None) -> int:
    """Threads per kernel on this node: asked for, else the worker's --threads, else its cores.

    Not torch.get_num_threads(): Ray sets OMP_NUM_THREADS=1 in its worker processes.
    """
    if requested:
        return requested
    env = os.environ.get("HWSEARCH_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class NodeProfiler:
    """Lives on one node offering the device and measures chunks there.

    Made a Ray actor by `_actor_class`; a plain class here so it pickles by reference.
    """

    def __init__(self, backend: str | None, threads: int | None, seed: int):
        self.backend = backend or os.environ.get("HWSEARCH_BACKEND") or "cpu"
        self.threads = node_threads(threads)
        self.seed = seed
        self.limits: Any = None

    def pid(self) -> int:
        """The worker process's id; call it through `worker_pid` to get an answer mid-chunk."""
        return os.getpid()

    def info(self) -> dict[str, Any]:
        """Who and what this node is; the fingerprint is read here, on the device."""
        import ray

        from hwsearch.profilers import machine
        from hwsearch.profilers.fingerprint import device_kind, fingerprint
        from hwsearch.profilers.limits import probe

        ctx = ray.get_runtime_context()
        doc = fingerprint(self.backend, self.threads)
        doc["ray_node_id"] = ctx.get_node_id()
        state = {"before": {**machine.snapshot(), "other_share": machine.LoadMonitor().idle_share()}}
        self.limits = probe(self.threads, self.backend)  # on the node: its memory, its peaks
        return {"pid": os.getpid(), "node_id": ctx.get_node_id(), "host": socket.gethostname(),
                "backend": self.backend, "kind": device_kind(self.backend), "threads": self.threads, "fingerprint": doc,
                "limits": self.limits.as_dict(), "machine": state}

    def plan(self, budget: str | int, max_flops: float | None) -> list[tuple[str, dict[str, Any], str]]:
        """(op, params, implementation) the budget measures here: implementations are the device's own."""
        from hwsearch.profilers.runner import plan_tasks

        return [(spec.op, spec.params(), impl) for spec, impl in plan_tasks(budget, self.backend, self.seed, max_flops)]

    def measure_chunk(self, chunk: list[tuple[str, dict[str, Any], str]]) -> list[dict[str, Any]]:
        """Time the chunk's kernels together in interleaved rounds; the thread count is set for every
        chunk (Ray reuses processes)."""
        import ray

        from hwsearch.profilers.limits import probe
        from hwsearch.profilers.measure import measure_many

        if self.limits is None:  # a restarted actor probes again
            self.limits = probe(self.threads, self.backend)
        node = ray.get_runtime_context().get_node_id()
        results = measure_many(chunk, threads=self.threads, backend=self.backend, seed=self.seed, limits=self.limits)
        for fields in results:
            fields["environment"] = {**fields["environment"], "ray_node_id": node, "host": socket.gethostname()}
        return results


def _actor_class():
    import ray

    return ray.remote(concurrency_groups={"control": 1})(NodeProfiler)


def worker_pid(handle: Any, timeout: float = 30.0) -> int:
    """The pid of a profiler actor's process, answered from its control thread even mid-chunk."""
    import ray

    return ray.get(handle.pid.options(concurrency_group="control").remote(), timeout=timeout)


def actor_name(device: str, node_id: str, token: str) -> str:
    """Named so tests and operators can find a run's actors: profiler:DEVICE:NODE:RUN."""
    return f"{ACTOR_PREFIX}:{device}:{node_id[:12]}:{token}"


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Errors meaning the actor's process or node went away (the chunk was not measured)."""
    from ray import exceptions as rex

    return (rex.RayActorError, rex.ActorUnschedulableError, rex.NodeDiedError, rex.WorkerCrashedError,
            rex.ObjectLostError)


def _restarting(err: BaseException) -> bool:
    """Ray's word for "the actor is coming back": ask again rather than give it up."""
    from ray.exceptions import ActorUnavailableError

    return isinstance(err, ActorUnavailableError)


# --- dispatch -----------------------------------------------------------------------------


@dataclass
class _Chunk:
    tasks: list[tuple[Any, str]]  # (spec, implementation)
    attempts: int = 0


@dataclass
class _Actor:
    handle: Any
    node_id: str
    name: str
    info: dict[str, Any] | None = None
    failures: int = 0
    gone: bool = False


def _spawn(device: str, nodes: list[dict[str, Any]], backend: str | None, threads: int | None, seed: int) -> list[_Actor]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = _actor_class()
    token = uuid.uuid4().hex[:8]
    actors = []
    for node in nodes:
        node_id = node["NodeID"]
        name = actor_name(device, node_id, token)
        handle = cls.options(
            name=name,
            namespace=NAMESPACE,
            num_cpus=0,  # the device resource, not CPU slots, is what a profiler holds
            resources={resource_name(device): 1},  # one profiler per device node: timings do not contend
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            max_restarts=MAX_RESTARTS,
            max_task_retries=0,  # the driver requeues a lost chunk itself
        ).remote(backend, threads, seed)
        actors.append(_Actor(handle, node_id, name))
    return actors


def _same_hardware(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    from hwsearch.profilers import store

    for key in store.HARDWARE_KEYS:
        if key in a and key in b and a[key] != b[key]:
            return f"{key}={b[key]!r} instead of {a[key]!r}"
    return None


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def profile_cluster(
    engine: Engine,
    device: str,
    budget: str | int = "quick",
    threads: int | None = None,
    seed: int = 0,
    show_progress: bool = True,
    max_flops: float | None = None,
    address: str | None = None,
    backend: str | None = None,
) -> ProfileSummary:
    """Measure what the database lacks for `device` on the Ray node(s) offering `device:NAME`.

    Ray prints the raylet's messages (a worker that died ...) on stdout: they are sent to stderr
    here, since stdout belongs to the caller (`--json`); a connection made here is closed here.
    """
    import ray

    check_device_name(device)
    check_threads(threads)
    joined = not ray.is_initialized()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return _profile(engine, device, budget, threads, seed, show_progress, max_flops, address, backend)
    finally:
        if joined and ray.is_initialized():
            with contextlib.redirect_stdout(sys.stderr):
                ray.shutdown()


def _profile(engine: Engine, device: str, budget: str | int, threads: int | None, seed: int, show_progress: bool,
             max_flops: float | None, address: str | None, backend: str | None) -> ProfileSummary:
    import ray

    from hwsearch.kernels.specs import spec_from_params
    from hwsearch.profilers import sampling, store
    from hwsearch.profilers.limits import Limits
    from hwsearch.profilers.progress import progress_bar
    from hwsearch.profilers.runner import ProfileSummary

    budget = sampling.parse_budget(budget)
    check_device_name(device)
    head = connect(address)
    nodes = nodes_offering(device, head)
    actors = _spawn(device, nodes, backend, threads, seed)
    started = time.perf_counter()
    run_id: int | None = None
    try:
        with progress_bar(show_progress) as bar:
            bar_id = bar.add_task(f"{device}: starting on {len(actors)} node(s)", total=None)
            probes = {a.handle.info.remote(): a for a in actors}
            first = _first_info(probes, device, bar, bar_id)
            info = first.info or {}
            device_id = store.ensure_device(engine, device, info["kind"], info["fingerprint"])
            machine_state: dict[str, Any] = {**(info.get("machine") or {}), "limits": info.get("limits")}
            limits = Limits.from_dict(info.get("limits"))
            plan = ray.get(first.handle.plan.remote(budget, max_flops))
            tasks = [(spec_from_params(op, params), impl) for op, params, impl in plan]
            done = store.measured(engine, device_id)
            todo = [(spec, impl) for spec, impl in tasks if (store.kernel_key(spec), impl) not in done]
            if not todo:
                return ProfileSummary(device, device_id, None, str(budget), len(tasks), len(tasks), 0, 0.0)
            run_id = store.start_run(
                engine, device_id, str(budget),
                {"budget": budget, "seed": seed, "threads": info["threads"], "backend": info["backend"],
                 "max_flops": max_flops, "mode": "cluster", "address": head,
                 "nodes": [n["NodeManagerAddress"] for n in nodes]},
                n_planned=len(tasks), n_skipped=len(tasks) - len(todo), machine=machine_state,
            )
            if limits is not None:
                store.save_limits(engine, device_id, limits)
            queue = deque(_Chunk(todo[i : i + NODE_CHUNK]) for i in range(0, len(todo), NODE_CHUNK))
            bar.update(bar_id, total=len(todo), completed=0, description=f"profiling {device}")
            inserted = _dispatch(engine, device, device_id, run_id, first, probes, queue, bar, bar_id)
    except BaseException as err:
        if run_id is not None:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            store.finish_run(engine, run_id, status, repr(err)[:2000])
        raise
    finally:
        for actor in actors:
            ray.kill(actor.handle, no_restart=True)
    store.finish_run(engine, run_id, "done")
    return ProfileSummary(device, device_id, run_id, str(budget), len(tasks), len(tasks) - len(todo), inserted,
                          round(time.perf_counter() - started, 2))


def _first_info(probes: dict[Any, _Actor], device: str, bar: Any, bar_id: Any) -> _Actor:
    """Wait for the first node to answer; one that cannot start its actor is reported, not waited on.

    The others get up to START_GRACE_S more to answer before work is handed out, so nodes that
    start together share the work from the first chunk on; a node still busy later joins late.
    """
    import ray

    lost = _lost_errors()
    first: _Actor | None = None
    answered: list[_Actor] = []
    waited = 0.0
    while probes and (first is None or waited < START_GRACE_S):
        ready, _ = ray.wait(list(probes), num_returns=1, timeout=1.0)
        if not ready:
            waited += 1.0
            if first is None and waited == 10.0:
                bar.update(bar_id, description=f"{device}: waiting for a free node (another run may hold device:{device})")
            continue
        actor = probes.pop(ready[0])
        try:
            actor.info = ray.get(ready[0])
        except lost as err:
            actor.gone = True
            _warn(f"node {actor.node_id[:12]} could not start a profiler ({type(err).__name__})")
            continue
        if first is None:
            first, waited = actor, 0.0
        else:
            answered.append(actor)
    for actor in answered:
        probes[_answered(actor)] = actor  # handed to the dispatcher as a ready probe
    if first is None:
        raise HwsearchError(f"no node offering device:{device} could start a profiler; accepted: a worker started with "
                            f"`hwsearch worker --device {device}` whose self-check passed")
    return first


def _answered(actor: _Actor) -> Any:
    """An object ref already holding the actor's info, so the dispatcher takes it like any probe."""
    import ray

    return ray.put(actor.info)


def _dispatch(engine: Engine, device: str, device_id: int, run_id: int, first: _Actor, probes: dict[Any, _Actor],
              queue: deque[_Chunk], bar: Any, bar_id: Any) -> int:
    """Keep one chunk in flight per live actor; write each result as it lands; requeue lost chunks."""
    import ray

    from hwsearch.profilers import store

    lost = _lost_errors()
    reference = (first.info or {})["fingerprint"]
    idle: deque[_Actor] = deque([first])
    flying: dict[Any, tuple[_Actor, _Chunk]] = {}
    inserted = 0
    while queue or flying:
        while idle and queue:
            actor, chunk = idle.popleft(), queue.popleft()
            chunk.attempts += 1
            payload = [(spec.op, spec.params(), impl) for spec, impl in chunk.tasks]
            flying[actor.handle.measure_chunk.remote(payload)] = (actor, chunk)
        if not flying and not probes:
            raise HwsearchError(
                f"every node offering device:{device} was lost with {sum(len(c.tasks) for c in queue)} kernels left; "
                "accepted: re-run the same command once a worker is back (only the missing kernels are measured)"
            )
        ready, _ = ray.wait([*flying, *probes], num_returns=1, timeout=1.0)
        for ref in ready:
            if ref in probes:
                actor = probes.pop(ref)
                try:
                    actor.info = ray.get(ref)
                except lost as err:
                    if _restarting(err) and actor.failures <= MAX_RESTARTS + 1:
                        actor.failures += 1
                        time.sleep(0.5)
                        probes[actor.handle.info.remote()] = actor
                        continue
                    actor.gone = True
                    _warn(f"profiler on node {actor.node_id[:12]} is gone ({type(err).__name__}); continuing without it")
                    continue
                clash = _same_hardware(reference, actor.info["fingerprint"])
                if clash:
                    actor.gone = True
                    _warn(f"node {actor.node_id[:12]} offers device:{device} on other hardware ({clash}); not used")
                    ray.kill(actor.handle, no_restart=True)
                    continue
                idle.append(actor)
                continue
            actor, chunk = flying.pop(ref)
            try:
                results = ray.get(ref)
            except lost as err:
                actor.failures += 1
                if chunk.attempts >= MAX_ATTEMPTS:
                    names = ", ".join(f"{s.describe()} [{impl}]" for s, impl in chunk.tasks)
                    raise HwsearchError(
                        f"the worker measuring {names} died {chunk.attempts} times; accepted: kernels that run on "
                        f"device:{device} (check the worker's self-check and its logs)"
                    ) from err
                queue.appendleft(chunk)
                # Probe it: a restarted actor answers and gets work again; a dead one is dropped.
                probes[actor.handle.info.remote()] = actor
                continue
            inserted += store.write_chunk(engine, device_id, run_id, list(zip([s for s, _ in chunk.tasks], results, strict=True)))
            bar.advance(bar_id, len(chunk.tasks))
            idle.append(actor)
    return inserted
