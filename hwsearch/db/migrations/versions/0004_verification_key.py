"""A unique key on verifications: one row per job, trial and device.

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-10

A resumed job verifies its front again; without a key, a trial verified by an earlier attempt was
stored twice. Duplicates already stored are dropped (the first row of each is kept) before the key
is added; the key replaces the (job, trial) index, whose queries it serves as well.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

KEY = ("job_id", "trial_number", "device_id")


def upgrade() -> None:
    op.execute(sa.text(
        "DELETE FROM verifications WHERE id NOT IN "
        f"(SELECT MIN(id) FROM verifications GROUP BY {', '.join(KEY)})"
    ))
    with op.batch_alter_table("verifications") as batch:
        batch.drop_index("ix_verifications_job_id_trial_number")
        batch.create_unique_constraint("uq_verifications_job_id_trial_number_device_id", list(KEY))


def downgrade() -> None:
    with op.batch_alter_table("verifications") as batch:
        batch.drop_constraint("uq_verifications_job_id_trial_number_device_id", type_="unique")
        batch.create_index("ix_verifications_job_id_trial_number", ["job_id", "trial_number"])
