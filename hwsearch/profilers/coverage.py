"""What is measured on each device: counts per op and format, and how many are native."""

from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement, ProfileRun
from hwsearch.errors import HwsearchError, unknown


def _family(op: str, params: dict[str, Any]) -> str:
    """`linear/int4`, `attention/bf16` ...: the op and its format or dtype."""
    return f"{op}/{params.get('format') or params.get('dtype') or '-'}"


def device_table(engine: Engine) -> list[dict[str, Any]]:
    """One entry per device: name, kind, fingerprint summary, counts by op/format, native count."""
    with session_scope(engine) as session:
        devices = session.scalars(select(Device).order_by(Device.name)).all()
        rows = session.execute(
            select(Measurement.device_id, KernelConfig.op, KernelConfig.params, Measurement.native, Measurement.unstable)
            .join(KernelConfig, KernelConfig.id == Measurement.kernel_id)
        ).all()
        runs = session.execute(
            select(ProfileRun.device_id, ProfileRun.machine).where(ProfileRun.machine.is_not(None)).order_by(ProfileRun.id)
        ).all()
        last_profile = {device: state for device, state in runs}  # the latest run with a record wins
        last = dict(session.execute(select(Measurement.device_id, func.max(Measurement.created_at)).group_by(Measurement.device_id)).all())
    per: dict[int, dict[str, Any]] = {
        d.id: {"by_op": {}, "measurements": 0, "native": 0, "unstable": 0} for d in devices
    }
    for device_id, op, params, native, unstable in rows:
        entry = per[device_id]
        family = _family(op, params or {})
        counts = entry["by_op"].setdefault(family, {"total": 0, "native": 0})
        counts["total"] += 1
        counts["native"] += int(bool(native))
        entry["measurements"] += 1
        entry["native"] += int(bool(native))
        entry["unstable"] += int(bool(unstable))
    out = []
    for d in devices:
        fp = d.fingerprint or {}
        out.append({
            "name": d.name,
            "kind": d.kind,
            "hardware": fp.get("gpu_name") or fp.get("cpu_model"),
            "threads": fp.get("threads"),
            "fingerprint": fp,
            "measurements": per[d.id]["measurements"],
            "native": per[d.id]["native"],
            "emulated": per[d.id]["measurements"] - per[d.id]["native"],
            "unstable": per[d.id]["unstable"],
            "last_profile": last_profile.get(d.id),
            "by_op": dict(sorted(per[d.id]["by_op"].items())),
            "last_measured": last.get(d.id),
            "created_at": d.created_at,
        })
    return out


def device_id(engine: Engine, name: str) -> int:
    """The id of a stored device, or a one-line error listing the stored ones."""
    with session_scope(engine) as session:
        found = session.scalar(select(Device.id).where(Device.name == name))
        if found is None:
            names = session.scalars(select(Device.name).order_by(Device.name)).all()
            raise unknown("device", name, names or ["(none yet: run `hwsearch profile --local`)"])
        return found


def local_fingerprint(engine: Engine, name: str, command: str) -> dict[str, Any]:
    """The fingerprint of a device profiled on this machine; `command` needs its host to time anything."""
    dev = device_id(engine, name)
    with session_scope(engine) as session:
        fp = dict(session.get(Device, dev).fingerprint or {})
    if fp.get("host") != socket.gethostname():
        raise HwsearchError(
            f"device {name!r} was profiled on host {fp.get('host')!r}, not this one ({socket.gethostname()!r}); "
            f"accepted: run `{command}` on the device's own machine"
        )
    return fp
