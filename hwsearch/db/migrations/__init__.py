"""Alembic migrations for the hwsearch schema (run through :func:`hwsearch.db.engine.upgrade`)."""
