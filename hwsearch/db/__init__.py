"""hwsearch.db: SQLAlchemy 2 models, engines/sessions from a URL, and the Alembic migrations.

Typical use::

    from hwsearch.db import open_db, session_scope, Device
    engine = open_db()                      # HWSEARCH_DB or the SQLite file; schema at head
    with session_scope(engine) as s:
        s.add(Device(name="laptop", kind="cpu", fingerprint={...}))
"""

from hwsearch.db.engine import (
    Session,
    current_revision,
    database_url,
    head_revision,
    make_engine,
    open_db,
    schema_differences,
    session_scope,
    sessionmaker_for,
    upgrade_schema,
)
from hwsearch.db.models import (
    JOB_STATUSES,
    PROFILE_RUN_STATUSES,
    Base,
    Device,
    Job,
    KernelConfig,
    Measurement,
    Predictor,
    ProfileRun,
    Verification,
    utcnow,
)
from hwsearch.db.ops import get_or_create, insert_ignore

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
    "Session",
    "Verification",
    "current_revision",
    "database_url",
    "get_or_create",
    "head_revision",
    "insert_ignore",
    "make_engine",
    "open_db",
    "schema_differences",
    "session_scope",
    "sessionmaker_for",
    "upgrade_schema",
    "utcnow",
]
