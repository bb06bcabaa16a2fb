"""Predictor rows in the database (the `predictors` table): store one, read the latest back.

A row holds its kind, the device(s) it is for, its target, what it was trained on, its
held-out metrics and the artefact in a version-stable format; `StoredPredictor.load` turns the
artefact back into the object through the kind's registered loader (`predictors.kinds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from hwsearch.db.engine import session_scope
from hwsearch.db.models import Predictor
from hwsearch.errors import HwsearchError
from hwsearch.predictors.kinds import get_kind


def store_predictor(
    engine: Engine, *, kind: str, name: str, device_id: int | None, devices: Sequence[str], target: str,
    train_summary: dict[str, Any], metrics: dict[str, Any], artefact: bytes, artefact_format: str | None = None,
) -> int:
    """Insert one predictor row (one transaction) and return its id; the artefact format
    defaults to the kind's registered one."""
    fmt = get_kind(kind).artefact_format if artefact_format is None else artefact_format
    with session_scope(engine) as session:
        row = Predictor(kind=kind, name=name, device_id=device_id, devices=list(devices), target=target,
                        train_summary=train_summary, metrics=metrics, artefact=artefact,
                        artefact_format=fmt)
        session.add(row)
        session.flush()
        return int(row.id)


@dataclass
class StoredPredictor:
    id: int
    kind: str
    name: str
    device_id: int | None
    devices: list[str]
    target: str
    train_summary: dict[str, Any]
    metrics: dict[str, Any]
    artefact: bytes = field(repr=False)
    artefact_format: str = ""

    def load(self) -> Any:
        """The predictor object (never unpickled); an artefact that does not load is one line."""
        try:
            return get_kind(self.kind).load(self.artefact)
        except Exception as err:  # noqa: BLE001 - xgboost, torch and json each fail their own way on bad bytes
            reason = " ".join(str(err).split())[:200]
            if not isinstance(err, HwsearchError):
                reason = f"{type(err).__name__}: {reason}"
            raise HwsearchError(
                f"stored {self.kind} predictor #{self.id} ({self.name}) cannot be read ({reason}); "
                f"accepted: retrain it (`hwsearch train --device DEVICE`), which stores a new one"
            ) from None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "name": self.name, "devices": self.devices, "target": self.target,
                "metrics": self.metrics, "train_summary": self.train_summary}


def latest(engine: Engine, kind: str, device_id: int | None = None, target: str | None = None) -> StoredPredictor | None:
    """The newest row of `kind` (for a device, or shared when device_id is None)."""
    with session_scope(engine) as session:
        q = select(Predictor).where(Predictor.kind == kind)
        q = q.where(Predictor.device_id.is_(None) if device_id is None else Predictor.device_id == device_id)
        if target is not None:
            q = q.where(Predictor.target == target)
        row = session.scalars(q.order_by(Predictor.id.desc()).limit(1)).first()
        if row is None:
            return None
        return StoredPredictor(row.id, row.kind, row.name, row.device_id, list(row.devices or []), row.target,
                               dict(row.train_summary or {}), dict(row.metrics or {}), bytes(row.artefact),
                               row.artefact_format)
