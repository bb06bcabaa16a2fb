"""Shared pytest fixtures.

Databases: ``db_url`` runs a test once on a fresh SQLite file and once on a fresh PostgreSQL
database (``sqlite_url`` / ``pg_url`` for one of them). The PostgreSQL server is the one named
by ``HWSEARCH_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, as in
``.ci/run``); each test gets its own ``hwsearch_t_<random>`` database, dropped afterwards, and
the PostgreSQL cases are skipped with the reason when no server answers.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_TEST_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


# --- databases ------------------------------------------------------------------------------


def _pg_admin_url() -> str:
    return os.environ.get("HWSEARCH_TEST_PG_URL") or DEFAULT_TEST_PG_URL


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a PostgreSQL server that answers (skips the test otherwise)."""
    import psycopg2
    from sqlalchemy import make_url

    url = _pg_admin_url()
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        pytest.skip(f"no PostgreSQL server answers at {shown} (HWSEARCH_TEST_PG_URL): {reason}")
    return url


def _admin_exec(admin_url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_url, connect_timeout=5)
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database for this test only; dropped afterwards."""
    from sqlalchemy import make_url

    name = f"hwsearch_t_{uuid.uuid4().hex[:12]}"
    _admin_exec(pg_server, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE closes connections a test's engine may still hold in its pool.
        _admin_exec(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite file in the test's temporary folder (a subfolder that does not exist
    yet, so engines must create it)."""
    return f"sqlite:///{tmp_path / 'db' / 'hwsearch.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per supported database."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
