"""Profile this machine: plan → skip what is stored → measure in chunks → store each chunk.

Resumable by construction: what to measure is a deterministic plan, what is stored is read back
before starting, and each chunk is one transaction guarded by the measurements' unique key. A
run killed at any point loses at most the chunk in flight; the next run measures only what is
missing.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from sqlalchemy.engine import Engine

from hwsearch.kernels import registry
from hwsearch.kernels.specs import OpSpec
from hwsearch.profilers import machine, sampling, store
from hwsearch.profilers.fingerprint import device_kind, fingerprint
from hwsearch.profilers.kernel_process import KernelWorker
from hwsearch.profilers.limits import probe
from hwsearch.profilers.progress import progress_bar
from hwsearch.profilers.threads import check_threads
from hwsearch.spaces.knobs import Knobs
from hwsearch.spaces.model import ModelSpec

# A model whose search needs measuring (`--for`): a catalogue name or ModelSpec, with its knobs.
ModelRequest = str | ModelSpec | tuple[str | ModelSpec, Knobs | None]


def _model_name(request: ModelRequest) -> str:
    model = request[0] if isinstance(request, tuple) else request
    return model if isinstance(model, str) else model.name


# Kernels timed together in interleaved rounds and stored in one transaction: large enough that
# a round of the chunk takes a noticeable time (rounds are that far apart), small enough that a
# killed run loses little and the chunk's weight copies fit in memory.
CHUNK = 32


@dataclass
class ProfileSummary:
    device: str
    device_id: int
    run_id: int | None
    budget: str
    planned: int
    already_stored: int
    measured: int
    seconds: float
    unstable: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def default_device_name(backend: str = "cpu") -> str:
    """`<host>-cpu` (lower case, safe characters)."""
    host = re.sub(r"[^a-z0-9_.-]+", "-", socket.gethostname().lower()).strip("-") or "local"
    return f"{host}-{backend}"


def default_threads() -> int:
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def plan_tasks(
    budget: str | int | None, backend: str = "cpu", seed: int = 0, max_flops: float | None = None,
    models: Sequence[ModelRequest] = (),
) -> list[tuple[OpSpec, str]]:
    """(spec, implementation name) pairs a budget measures on `backend`: every implementation, so
    the device's dispatch (`hwsearch.kernels.dispatch`) can pick the one measured fastest; then
    what `models`' searches need (`sampling.model_plan`), native implementations only."""
    budget_specs = [] if budget is None else sampling.plan_specs(budget, seed, max_flops)
    tasks = [(spec, kernel.name) for spec in budget_specs
             for kernel in registry.implementations(spec, backend)]
    caps = registry.capabilities(backend)
    for request in models:
        model, knobs = request if isinstance(request, tuple) else (request, None)
        for spec in sampling.model_plan(model, backend, knobs):
            impls = registry.implementations(spec, backend)
            native = [k for k in impls if k.native(spec, caps)]
            tasks += [(spec, k.name) for k in native or impls[:1]]
    return list(dict.fromkeys(tasks))


def profile_local(
    engine: Engine,
    name: str | None = None,
    budget: str | int | None = "quick",
    threads: int | None = None,
    backend: str = "cpu",
    seed: int = 0,
    show_progress: bool = True,
    max_flops: float | None = None,
    warn: Callable[[str], None] | None = None,
    models: Sequence[ModelRequest] = (),
) -> ProfileSummary:
    """Measure this machine's missing kernels for `budget` into the database.

    Before measuring: how busy the machine is, and its limits (bandwidth, peaks), stored in the
    device's fingerprint; during: the load from other processes after every chunk.
    """
    budget = None if budget is None else sampling.parse_budget(budget)  # None: only what `models` need
    label = "models" if budget is None else str(budget)
    threads = check_threads(threads) or default_threads()
    name = name or default_device_name(backend)
    device_id = store.ensure_device(engine, name, device_kind(backend), fingerprint(backend, threads))
    tasks = plan_tasks(budget, backend, seed, max_flops, models)
    done = store.measured(engine, device_id)
    todo = [(spec, impl) for spec, impl in tasks if (store.kernel_key(spec), impl) not in done]
    started = time.perf_counter()
    if not todo:
        return ProfileSummary(name, device_id, None, label, len(tasks), len(tasks), 0, 0.0)
    warn = warn or _stderr
    said: list[str] = []

    def note(message: str | None) -> None:
        if message and message not in said:
            said.append(message)
            warn(message)

    monitor = machine.LoadMonitor()
    before = monitor.idle_share()
    note(machine.busy_warning(before, "before the profile"))
    state: dict[str, object] = {"before": {**machine.snapshot(), "other_share": before}}
    run_id = store.start_run(
        engine, device_id, label, {"budget": budget, "seed": seed, "threads": threads, "backend": backend, "max_flops": max_flops,
                                         "for": [_model_name(m) for m in models]},
        n_planned=len(tasks), n_skipped=len(tasks) - len(todo), machine=state,
    )
    inserted = unstable = 0
    worker: KernelWorker | None = None
    try:
        limits = probe(threads, backend)
        state["limits"] = limits.as_dict()  # stored with the run when it finishes
        store.save_limits(engine, device_id, limits)
        worker = KernelWorker()  # the kernels run in a child: this process times whole models afterwards
        monitor.own_pids.append(worker.pid)
        monitor.start()
        with progress_bar(show_progress) as bar:
            task = bar.add_task(f"profiling {name}", total=len(todo))
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start : start + CHUNK]
                fields, share = _measure_chunk(worker, chunk, monitor, threads, backend, seed, limits)
                note(machine.busy_warning(share, "during the profile"))
                unstable += sum(bool(f["unstable"]) for f in fields)
                inserted += store.write_chunk(engine, device_id, run_id, list(zip((s for s, _ in chunk), fields, strict=True)))
                bar.advance(task, len(chunk))
    except BaseException as err:
        store.finish_run(engine, run_id, "interrupted" if isinstance(err, KeyboardInterrupt) else "failed", repr(err)[:2000],
                         machine={**state, "during_peak_other_share": monitor.peak})
        raise
    finally:
        if worker is not None:
            worker.close()
    store.finish_run(engine, run_id, "done", machine={**state, "during_peak_other_share": monitor.peak,
                                                      "after": machine.snapshot(), "warnings": said})
    return ProfileSummary(name, device_id, run_id, label, len(tasks), len(tasks) - len(todo), inserted,
                          round(time.perf_counter() - started, 2), unstable, said)


# A chunk measured while other processes took more than `machine.BUSY` of the CPU is measured
# again (after the machine settles), up to this many more times, keeping each kernel's floor:
# contention only ever slows a kernel down, and a whole chunk's rounds can all fall inside a
# burst of someone else's work (seen: a 0.6 ms GEMM stored at 23 ms, its rounds agreeing).
BUSY_RETRIES = 2


def _measure_chunk(worker: KernelWorker, chunk: Sequence[tuple[OpSpec, str]], monitor: machine.LoadMonitor, threads: int,
                   backend: str, seed: int, limits: Any) -> tuple[list[dict[str, Any]], float | None]:
    """Measure a chunk in the worker; again while the machine was busy. (fields per kernel, the last other-share)."""
    tasks = [(spec.op, spec.params(), impl) for spec, impl in chunk]
    fields = worker.measure_many(tasks, threads=threads, backend=backend, seed=seed, limits=limits)
    share = monitor.sample()
    for attempt in range(BUSY_RETRIES):
        if share is None or share <= machine.BUSY:
            break
        machine.settle(limit=10.0)
        monitor.sample()
        again = worker.measure_many(tasks, threads=threads, backend=backend, seed=seed + attempt + 1, limits=limits)
        share = monitor.sample()
        fields = [b if b["median_us"] < a["median_us"] else a for a, b in zip(fields, again, strict=True)]
        for f in fields:
            f.setdefault("environment", {}).setdefault("flags", [])
            if "busy_remeasured" not in f["environment"]["flags"]:
                f["environment"]["flags"].append("busy_remeasured")
    return fields, share


def _stderr(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
