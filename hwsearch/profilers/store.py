"""Writing measurements: one transaction per chunk, never a row twice.

Kernel configs and measurements are inserted with INSERT ... ON CONFLICT DO NOTHING against
their unique keys, so two processes (or a re-run after a crash) storing the same measurement
keep exactly one row, and a chunk either lands whole or not at all.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement, ProfileRun, utcnow
from hwsearch.db.ops import get_or_create, insert_ignore
from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import OpSpec
from hwsearch.profilers.limits import Limits

HARDWARE_KEYS = ("cpu_model", "cpu_count", "gpu_name", "backend")


def kernel_key(spec: OpSpec) -> str:
    return KernelConfig.make_key(spec.op, spec.params())


def ensure_device(engine: Engine, name: str, kind: str, fingerprint: dict[str, Any]) -> int:
    """The device's id; created with this fingerprint, or checked against the stored one."""
    with session_scope(engine) as session:
        device, created = get_or_create(session, Device, {"name": name}, {"kind": kind, "fingerprint": fingerprint})
        if not created:
            stored = device.fingerprint or {}
            clash = [k for k in HARDWARE_KEYS if k in stored and k in fingerprint and stored[k] != fingerprint[k]]
            if clash:
                k = clash[0]
                raise HwsearchError(
                    f"device {name!r} was profiled on other hardware ({k}={stored[k]!r}, this machine {fingerprint[k]!r}); "
                    "accepted: the same hardware, or a new --name"
                )
            # a kernel's latency is a latency at a thread count: two counts under one name would mix
            if "threads" in stored and "threads" in fingerprint and stored["threads"] != fingerprint["threads"]:
                raise HwsearchError(
                    f"device {name!r} was profiled at {stored['threads']} thread(s), this run times at "
                    f"{fingerprint['threads']}; accepted: --threads {stored['threads']}, or a new --name"
                )
        return device.id


def measured(engine: Engine, device_id: int) -> set[tuple[str, str]]:
    """(kernel key, implementation) pairs already stored for the device."""
    with session_scope(engine) as session:
        rows = session.execute(
            select(KernelConfig.key, Measurement.implementation)
            .join(Measurement, Measurement.kernel_id == KernelConfig.id)
            .where(Measurement.device_id == device_id)
        ).all()
    return {(key, impl) for key, impl in rows}


def start_run(engine: Engine, device_id: int, budget: str, requested: dict[str, Any], n_planned: int, n_skipped: int,
              machine: dict[str, Any] | None = None) -> int:
    """A ProfileRun row; earlier runs of this host whose process is gone are marked interrupted."""
    host = socket.gethostname()
    with session_scope(engine, immediate=True) as session:  # read-then-write: take the write lock first
        for run in session.scalars(
            select(ProfileRun).where(ProfileRun.device_id == device_id, ProfileRun.status == "running", ProfileRun.host == host)
        ):
            pid = (run.requested or {}).get("pid")
            if pid is None or not _alive(int(pid)):
                run.status, run.finished_at = "interrupted", utcnow()
        run = ProfileRun(
            device_id=device_id, budget=budget, requested={**requested, "pid": os.getpid()},
            status="running", n_planned=n_planned, n_skipped=n_skipped, host=host, machine=machine,
        )
        session.add(run)
        session.flush()
        return run.id


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _kernel_ids(session: Session, specs: Iterable[OpSpec]) -> dict[str, int]:
    rows = {}
    for spec in specs:
        config = KernelConfig.build(spec.op, spec.params())
        rows[config.key] = {"op": config.op, "params": config.params, "key": config.key}
    insert_ignore(session, KernelConfig, list(rows.values()))
    found = session.execute(select(KernelConfig.key, KernelConfig.id).where(KernelConfig.key.in_(list(rows)))).all()
    return dict(found)


def write_chunk(engine: Engine, device_id: int, run_id: int | None, results: Sequence[tuple[OpSpec, dict[str, Any]]]) -> int:
    """Store one chunk of (spec, measurement fields) in one transaction; returns rows inserted."""
    if not results:
        return 0
    with session_scope(engine) as session:
        return insert_measurements(session, device_id, run_id, results)


def insert_measurements(session: Session, device_id: int, run_id: int | None,
                        results: Sequence[tuple[OpSpec, dict[str, Any]]]) -> int:
    """`write_chunk` inside the caller's transaction (an import stores a whole file in one)."""
    ids = _kernel_ids(session, [spec for spec, _ in results])
    rows = [
        {**fields, "device_id": device_id, "kernel_id": ids[kernel_key(spec)], "profile_run_id": run_id}
        for spec, fields in results
    ]
    inserted = insert_ignore(session, Measurement, rows)
    if run_id is not None:
        session.execute(update(ProfileRun).where(ProfileRun.id == run_id).values(n_done=ProfileRun.n_done + inserted))
    return inserted


def finish_run(engine: Engine, run_id: int, status: str, error: str | None = None,
               machine: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow()}
    if machine is not None:
        values["machine"] = machine
    with session_scope(engine) as session:
        session.execute(update(ProfileRun).where(ProfileRun.id == run_id).values(**values))


def save_limits(engine: Engine, device_id: int, limits: Limits) -> None:
    """The device's measured limits go into its fingerprint (the latest profile's)."""
    with session_scope(engine) as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.fingerprint = {**(device.fingerprint or {}), "limits": limits.as_dict()}


def count_measurements(engine: Engine, device_id: int) -> int:
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(Measurement).where(Measurement.device_id == device_id)) or 0
