"""Engines and sessions from a URL, and bringing the schema to the latest migration.

SQLite (the default, one machine) and PostgreSQL (several machines) are the two databases we
support; anything else is refused with a one-line error. ``open_db`` is what the rest of the
project calls: it connects, fails fast and clearly when the database does not answer, and runs
the migrations shipped in this package (safe when several processes do it at once).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import StaticPool

from hwsearch.errors import HwsearchError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
VERSION_TABLE = "hwsearch_alembic_version"  # Optuna owns `alembic_version` in the same database
ACCEPTED = "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5
# Any constant works; it only has to be the same in every process that migrates.
PG_MIGRATION_LOCK = 0x6877_7365_6172  # "hwsear"
_BEGIN_OPTION = "hwsearch_sqlite_begin"
PG_READ_ONLY = "-c default_transaction_read_only=on"  # every transaction of the session refuses writes

Session = sessionmaker(expire_on_commit=False)
"""Unbound session factory: ``Session(bind=engine)``; objects stay usable after commit."""


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def parse_url(url: str | URL) -> URL:
    """Parse and check a database URL; only SQLite and PostgreSQL are accepted."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a non-numeric port only fails when read
    except (ArgumentError, ValueError) as err:
        raise HwsearchError(f"malformed database URL {str(url)!r}; accepted: {ACCEPTED}") from err
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise HwsearchError(
            f"unsupported database {parsed.get_backend_name()!r} in {_shown(parsed)}; accepted: {ACCEPTED}"
        )
    return parsed


def database_url(url: str | URL | None = None) -> str:
    """The full URL other SQLAlchemy users (Optuna's RDB storage) should be given.

    Resolves the default, checks it, and pins PostgreSQL to psycopg2: SQLAlchemy 2.1 maps a bare
    ``postgresql://`` to psycopg 3, which is not installed.
    """
    if url is None:
        from hwsearch.config import default_db_url

        url = default_db_url()
    parsed = parse_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed.render_as_string(hide_password=False)


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url.query)


def _retry_locked(statement: Any, timeout_s: float = SQLITE_BUSY_TIMEOUT_S) -> None:
    """Run ``statement`` again while SQLite says "locked" without waiting, up to ``timeout_s``.

    Switching a fresh file to WAL (and opening one while another process builds its shared-memory
    index) can fail with SQLITE_BUSY at once: SQLite skips the busy handler there to avoid
    deadlock, so ``busy_timeout`` alone does not make concurrent first opens safe.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def sqlite_read_only(url: URL) -> URL:
    """The URL of an SQLite file opened read-only (SQLite's URI form): nothing an engine on it
    runs can change the file."""
    path = Path(url.database).expanduser()
    if not path.is_file():
        raise HwsearchError(f"no database file at {path}; accepted: {ACCEPTED} naming an existing database")
    return url.set(database=f"file:{path}", query={**url.query, "mode": "ro", "uri": "true"})


def _sqlite_engine(url: URL, read_only: bool = False, **kwargs: Any) -> Engine:
    if not _is_memory(url):
        path = Path(url.database).expanduser()
        if read_only:
            url = sqlite_read_only(url)
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise HwsearchError(
                    f"cannot create the folder {path.parent} for database {_shown(url)} "
                    f"({err.strerror or err}); accepted: {ACCEPTED}"
                ) from err
            url = url.set(database=str(path))
    connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    if _is_memory(url):
        kwargs.setdefault("poolclass", StaticPool)  # one shared in-memory database
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (so DDL and
        # SAVEPOINTs are transactional), then set the per-connection pragmas. busy_timeout
        # comes first so that switching a fresh file to WAL waits for other processes.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if not read_only:  # a reader takes the file as the writers left it
            _retry_locked(lambda: cur.execute("PRAGMA journal_mode = WAL"))
        cur.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL, much faster
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(_BEGIN_OPTION, "BEGIN"))

    return engine


def make_engine(url: str | URL | None = None, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url`` (default :func:`hwsearch.config.default_db_url`), tuned per dialect.

    SQLite: parent folder created, WAL, 30 s busy timeout, foreign keys on, usable from threads.
    PostgreSQL (psycopg2): short connect timeout and ``pool_pre_ping`` so a restarted server is
    noticed. ``read_only``: the database refuses every write from this engine (SQLite opens the
    file read-only, PostgreSQL makes each transaction read-only). Extra ``kwargs`` go to
    :func:`sqlalchemy.create_engine`.
    """
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, read_only, **kwargs)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
    connect_args.setdefault("application_name", "hwsearch")
    if read_only:
        connect_args["options"] = f"{connect_args.get('options', '')} {PG_READ_ONLY}".strip()
    kwargs.setdefault("pool_pre_ping", True)
    try:
        return create_engine(parsed, connect_args=connect_args, **kwargs)
    except (ImportError, NoSuchModuleError) as err:
        raise HwsearchError(
            f"database driver {parsed.drivername!r} is not installed ({err}); accepted: {ACCEPTED}"
        ) from err


def _reason(err: BaseException) -> str:
    """The useful part of a driver's connection error, on one line."""
    orig = getattr(err, "orig", None) or err
    message = str(orig).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    first = lines[0] if lines else type(orig).__name__
    first = first.split(" failed: ")[-1]
    first = re.sub(r"^(FATAL|ERROR):\s*", "", first)
    return first[:1].lower() + first[1:] if first else type(orig).__name__


def check_connection(engine: Engine, shown: str | None = None) -> None:
    """Connect once; a database that does not answer becomes a one-line HwsearchError.

    ``shown`` is the URL to name in the message (default: the engine's, password hidden).
    """
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except (DBAPIError, OSError) as err:
        where = shown or _shown(engine.url)
        raise HwsearchError(f"cannot reach database {where} ({_reason(err)}); accepted: {ACCEPTED}") from err


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration without an alembic.ini: migrations shipped in this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this version of hwsearch."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of the migrations shipped with this version of hwsearch."""
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


def check_revision(engine: Engine, shown: str, read_only: bool) -> None:
    """A database this hwsearch can use: none newer than its code, and (read-only) one at head.

    A newer database was migrated by a newer hwsearch; this code would misread it, and its
    migrations cannot go backwards, so it says so instead of failing inside Alembic.
    """
    from hwsearch import __version__

    current, head = current_revision(engine), head_revision()
    if current is not None and not known_revision(current):
        raise HwsearchError(
            f"database {shown} is at schema revision {current!r}, newer than this hwsearch {__version__} knows "
            f"(its newest is {head!r}); accepted: upgrade hwsearch here to the version that migrated it "
            "(pip install -U hwsearch), the same version on every machine that uses the database"
        )
    if not read_only or current == head:
        return
    if current is None:
        raise HwsearchError(f"database {shown} holds no hwsearch tables yet; accepted: a database hwsearch has written "
                            "(profile a device first: `hwsearch profile --local`)")
    raise HwsearchError(
        f"database {shown} is at schema revision {current!r}, older than this hwsearch's {head!r}, and a reader "
        "does not migrate it; accepted: migrate it once with any other command (e.g. `hwsearch devices --db URL`)"
    )


def schema_differences(engine: Engine) -> list[Any]:
    """What Alembic finds different between the database and the models (empty when in sync).

    Only our tables are compared: Optuna's tables share the database.
    """
    from alembic.autogenerate import compare_metadata

    from hwsearch.db.models import Base

    def ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        table = name if type_ == "table" else getattr(getattr(obj, "table", None), "name", None)
        return table is None or table in Base.metadata.tables

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"version_table": VERSION_TABLE, "compare_type": True, "include_object": ours},
        )
        return list(compare_metadata(ctx, Base.metadata))


def _upgrade_once(engine: Engine, revision: str) -> None:
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # Transaction-scoped lock: concurrent openers wait here, then find the schema at head.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            command.upgrade(alembic_config(conn), revision)
        return
    with engine.connect() as conn:
        # Foreign keys off while migrating: SQLite's batch migrations copy and drop tables, and a
        # DROP with foreign keys on would cascade-delete children. The pragma only works outside
        # a transaction (so it goes to the driver directly); keys are checked after.
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys = OFF")
        try:
            with conn.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"}).begin():
                command.upgrade(alembic_config(conn), revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise HwsearchError(f"migration to {revision} broke foreign keys: {broken[:3]}")
        finally:
            raw.execute("PRAGMA foreign_keys = ON")


def upgrade_schema(engine: Engine, revision: str = "head", retries: int = 5) -> None:
    """Bring the schema to ``revision``; safe when several processes do it at once.

    PostgreSQL serialises migrators with an advisory lock. SQLite serialises them with
    ``BEGIN IMMEDIATE`` and its busy timeout; a lock that still times out is retried.
    """
    for attempt in range(retries):
        try:
            _upgrade_once(engine, revision)
            return
        except OperationalError as err:
            if engine.dialect.name != "sqlite" or "locked" not in str(err) or attempt == retries - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def open_db(url: str | URL | None = None, upgrade: bool = True, read_only: bool = False, **kwargs: Any) -> Engine:
    """Connect to ``url`` (default: ``HWSEARCH_DB`` or the SQLite file in the data folder).

    Raises a one-line :class:`HwsearchError` within a few seconds when the URL is malformed, the
    database does not answer or was migrated by a newer hwsearch; with ``upgrade`` the schema is
    brought to head. ``read_only`` (the dashboard): nothing is written, nothing migrated, and
    the schema must already be at head.
    """
    engine = make_engine(url, read_only=read_only, **kwargs)
    shown = _shown(parse_url(url)) if url is not None else _shown(engine.url)
    check_connection(engine, shown=shown)
    try:
        check_revision(engine, shown, read_only)
    except DBAPIError as err:
        raise HwsearchError(f"cannot read database {shown} ({_reason(err)}); accepted: {ACCEPTED}") from err
    if upgrade and not read_only:
        try:
            upgrade_schema(engine)
        except HwsearchError:
            raise
        except DBAPIError as err:
            raise HwsearchError(
                f"cannot migrate database {_shown(engine.url)} to {head_revision()} ({_reason(err)})"
            ) from err
    return engine


def sessionmaker_for(engine: Engine) -> sessionmaker[OrmSession]:
    """A session factory bound to ``engine``."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine, immediate: bool = False) -> Iterator[OrmSession]:
    """A session that commits when the block ends and rolls back if it raises.

    ``immediate=True`` takes SQLite's write lock when the transaction begins (``BEGIN
    IMMEDIATE``): use it for blocks that read and then write while other processes write too,
    where SQLite would otherwise fail with "database is locked" instead of waiting. PostgreSQL
    ignores it.
    """
    bind = engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"}) if immediate else engine
    session = Session(bind=bind)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


__all__ = [
    "ACCEPTED",
    "VERSION_TABLE",
    "Session",
    "alembic_config",
    "check_connection",
    "current_revision",
    "database_url",
    "head_revision",
    "make_engine",
    "open_db",
    "parse_url",
    "session_scope",
    "schema_differences",
    "sessionmaker_for",
    "upgrade_schema",
]
