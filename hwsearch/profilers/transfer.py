"""Move a device's measurements between installations (`hwsearch devices export/import`).

The file is one JSON document (gzip-compressed when the name ends in .gz): the device's name,
kind and fingerprint, and every measurement with its kernel's op and parameters (its schema:
`device_file`). Importing validates the whole file first, then goes through the same
insert-or-skip writes as profiling in one transaction, so importing twice, or a profile that
overlaps one already stored, never stores a measurement twice, and a refused file stores nothing.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.profilers import store
from hwsearch.profilers.cluster import check_device_name
from hwsearch.profilers.coverage import device_id
from hwsearch.profilers.device_file import SCHEMA, read_device_file

FIELDS = ("implementation", "backend", "native", "median_us", "p10_us", "p90_us", "mean_us", "repeats", "cov",
          "threads", "environment")
ROUND_FIELDS = ("rounds", "spread", "unstable")  # absent in files written before rounds existed
CHUNK = 500


def export_device(engine: Engine, name: str, path: str | Path) -> dict[str, Any]:
    """Write the device and all its measurements to `path` (whole or not at all); returns a summary."""
    path = Path(path)
    if path.is_dir():
        raise HwsearchError(f"{str(path)!r} is a folder; accepted: a file path (JSON; gzip when it ends in .gz)")
    dev = device_id(engine, name)
    with session_scope(engine) as session:
        device = session.get(Device, dev)
        rows = session.execute(
            select(KernelConfig.op, KernelConfig.params, Measurement)
            .join(Measurement, Measurement.kernel_id == KernelConfig.id)
            .where(Measurement.device_id == dev)
            .order_by(Measurement.id)
        ).all()
        doc = {
            "schema": SCHEMA,
            "device": {"name": device.name, "kind": device.kind, "fingerprint": device.fingerprint},
            "measurements": [
                {"op": op, "params": params, **{f: getattr(m, f) for f in FIELDS + ROUND_FIELDS},
                 "created_at": m.created_at.isoformat()}
                for op, params, m in rows
            ],
        }
    part = path.with_name(f".{path.name}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(part, "wt", encoding="utf-8") if path.suffix == ".gz" else part.open("w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(part, path)  # readers never see half a file
    except OSError as err:
        part.unlink(missing_ok=True)
        raise HwsearchError(f"cannot write {str(path)!r} ({err.strerror or err}); accepted: a writable file path") from None
    return {"device": name, "path": str(path), "measurements": len(doc["measurements"])}


def import_device(engine: Engine, path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Store the file's device (under `name` if given) and its measurements not stored yet.

    The whole file is validated first (`device_file.read_device_file`), then written in one
    transaction: a refused import stores nothing, not even the device. An existing device takes
    the measurements only when the file shows the same hardware (`same_hardware`).
    """
    parsed, specs = read_device_file(path)
    entry = parsed.device
    target = check_device_name(name) if name is not None else entry.name
    rows = [(spec, m.fields()) for spec, m in zip(specs, parsed.measurements, strict=True)]
    inserted = 0
    with session_scope(engine, immediate=True) as session:
        device = session.scalars(select(Device).where(Device.name == target)).first()
        if device is None:
            device = Device(name=target, kind=entry.kind, fingerprint=entry.fingerprint)
            session.add(device)
            session.flush()
        else:
            clash = same_hardware(device.fingerprint or {}, entry.fingerprint)
            if clash:
                raise HwsearchError(f"device {target!r} is stored already and {str(path)!r} does not show the same "
                                    f"hardware ({clash}); nothing was stored; accepted: a file from the same hardware, "
                                    "or --name NEW to store it as another device")
        for start in range(0, len(rows), CHUNK):
            inserted += store.insert_measurements(session, device.id, None, rows[start : start + CHUNK])
    return {"device": target, "path": str(path), "measurements": len(rows), "imported": inserted,
            "already_stored": len(rows) - inserted}


def same_hardware(stored: dict[str, Any], incoming: dict[str, Any]) -> str | None:
    """None when both fingerprints name the same hardware; else what differs or is missing.

    Every hardware key either side has must be on both sides and equal, and one naming the machine
    (not just its backend) must be there: a file without such keys proves nothing, so it never
    merges into a device.
    """
    keys = [k for k in store.HARDWARE_KEYS if k in stored or k in incoming]
    machine = [k for k in store.HARDWARE_KEYS if k != "backend"]
    if not any(k in keys for k in machine):
        return f"neither fingerprint names the machine with {', '.join(machine)}"
    for key in keys:
        if key not in incoming:
            return f"the file has no {key}; the stored device has {key}={stored[key]!r}"
        if key not in stored:
            return f"the stored device has no {key}; the file has {key}={incoming[key]!r}"
        if stored[key] != incoming[key]:
            return f"{key}={incoming[key]!r} in the file, {stored[key]!r} stored"
    return None
