"""SQLAlchemy 2 models: the tables every other package reads and writes.

The schema is owned by the Alembic migrations in ``hwsearch/db/migrations``; these models must
match them exactly (a test compares the two on SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Explicit constraint names so migrations, models and both dialects agree.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PROFILE_RUN_STATUSES = ("running", "done", "failed", "interrupted")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")


def utcnow() -> datetime:
    """Timezone-aware 'now' in UTC (the only clock the database sees)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect.

    SQLite has no time-zone type and hands back naive values; this converts on the way in
    (naive values are refused, so local times never sneak in) and re-attaches UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        # SQLite would store the offset text; keep a plain UTC value there.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Device(Base):
    """A machine (or accelerator) measurements are taken on."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    measurements: Mapped[list[Measurement]] = relationship(
        back_populates="device", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Device(id={self.id!r}, name={self.name!r}, kind={self.kind!r})"


class KernelConfig(Base):
    """One kernel configuration: an op plus canonical parameters, keyed by their hash."""

    __tablename__ = "kernel_configs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    op: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    key: Mapped[str] = mapped_column(String(64), unique=True)

    @staticmethod
    def canonical_json(op: str, params: dict[str, Any]) -> str:
        """Canonical JSON of ``{op, params}``: sorted keys, no whitespace, ASCII only.

        Python's ``json`` with these options is byte-stable across processes and versions
        (unlike ``hash()``), so the key can be recomputed anywhere.
        """
        return json.dumps(
            {"op": op, "params": params},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )

    @staticmethod
    def make_key(op: str, params: dict[str, Any]) -> str:
        """sha256 hex of the canonical JSON of ``{op, params}``."""
        return hashlib.sha256(KernelConfig.canonical_json(op, params).encode("ascii")).hexdigest()

    @classmethod
    def build(cls, op: str, params: dict[str, Any]) -> KernelConfig:
        """A new row with its key filled in and params normalised through JSON."""
        canonical = json.loads(cls.canonical_json(op, params))["params"]
        return cls(op=op, params=canonical, key=cls.make_key(op, params))

    def __repr__(self) -> str:
        return f"KernelConfig(id={self.id!r}, op={self.op!r}, key={self.key[:12]!r}...)"


class ProfileRun(Base):
    """One `hwsearch profile` invocation: what was asked and how far it got (for resume)."""

    __tablename__ = "profile_runs"
    __table_args__ = (
        CheckConstraint(f"status IN {PROFILE_RUN_STATUSES!r}".replace('"', "'"), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    budget: Mapped[str] = mapped_column(String(32))
    requested: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    n_planned: Mapped[int] = mapped_column(Integer, default=0)
    n_done: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    host: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    machine: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # load, frequency policy, limits
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    device: Mapped[Device] = relationship()


class Measurement(Base):
    """A timed kernel on a device with one implementation; stored at most once."""

    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint("device_id", "kernel_id", "implementation"),
        Index(None, "kernel_id"),
        Index(None, "profile_run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    kernel_id: Mapped[int] = mapped_column(ForeignKey("kernel_configs.id", ondelete="CASCADE"))
    implementation: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    native: Mapped[bool] = mapped_column(Boolean, default=True)
    median_us: Mapped[float] = mapped_column(Float)
    p10_us: Mapped[float] = mapped_column(Float)
    p90_us: Mapped[float] = mapped_column(Float)
    mean_us: Mapped[float] = mapped_column(Float)
    repeats: Mapped[int] = mapped_column(Integer)
    cov: Mapped[float] = mapped_column(Float)
    rounds: Mapped[int | None] = mapped_column(Integer)  # NULL: measured before rounds existed
    spread: Mapped[float | None] = mapped_column(Float)  # (max - min) / median of the central rounds
    unstable: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    threads: Mapped[int | None] = mapped_column(Integer)
    environment: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    profile_run_id: Mapped[int | None] = mapped_column(ForeignKey("profile_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    device: Mapped[Device] = relationship(back_populates="measurements")
    kernel: Mapped[KernelConfig] = relationship()
    profile_run: Mapped[ProfileRun | None] = relationship()


class Predictor(Base):
    """A trained latency predictor; the artefact is a version-stable format, never a pickle."""

    __tablename__ = "predictors"
    __table_args__ = (Index(None, "kind", "device_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    devices: Mapped[list[str]] = mapped_column(JSON, default=list)
    target: Mapped[str] = mapped_column(String(32), default="kernel")
    train_summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artefact: Mapped[bytes] = mapped_column(LargeBinary)
    artefact_format: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    device: Mapped[Device | None] = relationship()


class Job(Base):
    """A search job; its Optuna study lives in the same database under ``study_name``."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(f"status IN {JOB_STATUSES!r}".replace('"', "'"), name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    study_name: Mapped[str | None] = mapped_column(String(255))
    n_trials_done: Mapped[int] = mapped_column(Integer, default=0)
    n_trials_total: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    verifications: Mapped[list[Verification]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class Verification(Base):
    """A plan from a job's trial, built and timed on a device: predicted vs measured."""

    __tablename__ = "verifications"
    __table_args__ = (UniqueConstraint("job_id", "trial_number", "device_id"),)  # a resumed job stores nothing twice

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    plan: Mapped[dict[str, Any]] = mapped_column(JSON)
    predicted_ms: Mapped[float | None] = mapped_column(Float)
    measured_ms: Mapped[float] = mapped_column(Float)
    measured_p10_ms: Mapped[float | None] = mapped_column(Float)
    measured_p90_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="verifications")
    device: Mapped[Device] = relationship()


__all__ = [
    "JOB_STATUSES",
    "PROFILE_RUN_STATUSES",
    "Base",
    "Device",
    "Job",
    "KernelConfig",
    "Measurement",
    "Predictor",
    "ProfileRun",
    "Verification",
    "utcnow",
]
