"""Move a device's measurements between installations (`hwsearch devices export/import`).

The file is one JSON document (gzip-compressed when the name ends in .gz): the device's name,
kind and fingerprint, and every measurement with its kernel's op and parameters. Importing goes
through the same insert-or-skip writes as profiling, so importing twice, or a profile that
overlaps one already stored, never stores a measurement twice.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Device, KernelConfig, Measurement
from hwsearch.errors import HwsearchError
from hwsearch.kernels.specs import spec_from_params
from hwsearch.profilers import store
from hwsearch.profilers.coverage import device_id

SCHEMA = "hwsearch.device-profile/v1"
FIELDS = ("implementation", "backend", "native", "median_us", "p10_us", "p90_us", "mean_us", "repeats", "cov",
          "threads", "environment")
ROUND_FIELDS = ("rounds", "spread", "unstable")  # absent in files written before rounds existed
CHUNK = 500


def _open(path: Path, mode: str):
    return gzip.open(path, mode + "t", encoding="utf-8") if path.suffix == ".gz" else path.open(mode, encoding="utf-8")


def export_device(engine: Engine, name: str, path: str | Path) -> dict[str, Any]:
    """Write the device and all its measurements to `path`; returns a summary."""
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, "w") as fh:
        json.dump(doc, fh)
    return {"device": name, "path": str(path), "measurements": len(doc["measurements"])}


def import_device(engine: Engine, path: str | Path, name: str | None = None) -> dict[str, Any]:
    """Store the file's device (under `name` if given) and its measurements not stored yet."""
    path = Path(path)
    if not path.is_file():
        raise HwsearchError(f"no device profile at {str(path)!r}; accepted: a file written by `hwsearch devices export`")
    try:
        with _open(path, "r") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as err:
        raise HwsearchError(f"{str(path)!r} is not a device profile ({err}); accepted: a file written by `hwsearch devices export`") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise HwsearchError(f"{str(path)!r} has schema {found!r}; accepted: {SCHEMA}")
    device = doc["device"]
    target = name or device["name"]
    dev = store.ensure_device(engine, target, device["kind"], device["fingerprint"])
    rows = doc["measurements"]
    results = []
    for row in rows:
        spec = spec_from_params(row["op"], row["params"])
        results.append((spec, {**{f: row[f] for f in FIELDS}, **{f: row[f] for f in ROUND_FIELDS if f in row}}))
    inserted = 0
    for start in range(0, len(results), CHUNK):
        inserted += store.write_chunk(engine, dev, None, results[start : start + CHUNK])
    return {"device": target, "path": str(path), "measurements": len(rows), "imported": inserted,
            "already_stored": len(rows) - inserted}
