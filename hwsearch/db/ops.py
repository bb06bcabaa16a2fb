"""Generic writes the profilers need: insert-or-skip in bulk, and get-or-create.

Both lean on the tables' unique constraints rather than on "select, then insert", so two
processes writing the same rows at once cannot store anything twice or fail on each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

from hwsearch.errors import HwsearchError

ModelT = TypeVar("ModelT", bound=DeclarativeBase)


def _insert(session: Session, model: type[DeclarativeBase]) -> Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    raise HwsearchError(f"unsupported database {dialect!r}; accepted: sqlite, postgresql")


def insert_ignore(session: Session, model: type[DeclarativeBase], rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``rows`` into ``model``'s table, skipping any that break a unique constraint.

    Returns how many rows were really inserted (``INSERT ... ON CONFLICT DO NOTHING ...
    RETURNING``, counted from what the database returns, so it is exact on both dialects).
    Column defaults declared on the model apply to keys a row leaves out.
    """
    if not rows:
        return 0
    columns = set(model.__table__.columns.keys())  # type: ignore[attr-defined]
    pk = model.__table__.primary_key.columns  # type: ignore[attr-defined]
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        extra = set(row) - columns
        if extra:
            raise HwsearchError(
                f"unknown column(s) {', '.join(sorted(extra))} for {model.__tablename__}; "  # type: ignore[attr-defined]
                f"accepted: {', '.join(sorted(columns))}"
            )
        groups.setdefault(tuple(sorted(row)), []).append(row)
    inserted = 0
    stmt = _insert(session, model).returning(*pk)
    for group in groups.values():
        # executemany with RETURNING: SQLAlchemy batches this into multi-row INSERTs.
        inserted += len(session.execute(stmt, [dict(r) for r in group]).all())
    return inserted


def get_or_create(
    session: Session,
    model: type[ModelT],
    unique: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> tuple[ModelT, bool]:
    """The row of ``model`` matching ``unique``, inserted (with ``defaults``) if missing.

    ``unique`` must name columns covered by a unique constraint. Returns ``(row, created)``.
    Safe under concurrency: the insert is skipped on conflict, then the row is selected, so a
    racing process's row is found instead of raising an integrity error.
    """
    if not unique:
        raise HwsearchError("get_or_create needs at least one unique column; accepted: a non-empty dict")
    created = insert_ignore(session, model, [{**(defaults or {}), **unique}]) == 1
    clauses: Iterable[Any] = (getattr(model, k) == v for k, v in unique.items())
    row = session.execute(select(model).where(*clauses)).scalar_one()
    return row, created


__all__ = ["get_or_create", "insert_ignore"]
