"""Measurements in rounds (count, spread, unstable flag) and the machine's state per profile run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Rows measured before rounds existed keep rounds and spread NULL and unstable false: they stay
readable and usable, and `hwsearch bench repeat` can tell how well they hold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.add_column(sa.Column("rounds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("spread", sa.Float(), nullable=True))
        batch.add_column(sa.Column("unstable", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("profile_runs") as batch:
        batch.add_column(sa.Column("machine", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profile_runs") as batch:
        batch.drop_column("machine")
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("unstable")
        batch.drop_column("spread")
        batch.drop_column("rounds")
