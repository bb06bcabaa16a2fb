"""Devices, kernel configurations, profile runs and measurements.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
    )
    op.create_table(
        "kernel_configs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_kernel_configs"),
        sa.UniqueConstraint("key", name="uq_kernel_configs_key"),
    )
    op.create_index("ix_kernel_configs_op", "kernel_configs", ["op"])
    op.create_table(
        "profile_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("budget", sa.String(32), nullable=False),
        sa.Column("requested", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("n_planned", sa.Integer(), nullable=False),
        sa.Column("n_done", sa.Integer(), nullable=False),
        sa.Column("n_skipped", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'done', 'failed', 'interrupted')", name="ck_profile_runs_status"
        ),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_profile_runs_device_id_devices", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_profile_runs"),
    )
    op.create_index("ix_profile_runs_device_id", "profile_runs", ["device_id"])
    op.create_index("ix_profile_runs_status", "profile_runs", ["status"])
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("kernel_id", sa.Integer(), nullable=False),
        sa.Column("implementation", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("native", sa.Boolean(), nullable=False),
        sa.Column("median_us", sa.Float(), nullable=False),
        sa.Column("p10_us", sa.Float(), nullable=False),
        sa.Column("p90_us", sa.Float(), nullable=False),
        sa.Column("mean_us", sa.Float(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("cov", sa.Float(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=True),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("profile_run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name="fk_measurements_device_id_devices", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["kernel_id"],
            ["kernel_configs.id"],
            name="fk_measurements_kernel_id_kernel_configs",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["profile_run_id"],
            ["profile_runs.id"],
            name="fk_measurements_profile_run_id_profile_runs",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_measurements"),
        sa.UniqueConstraint(
            "device_id",
            "kernel_id",
            "implementation",
            name="uq_measurements_device_id_kernel_id_implementation",
        ),
    )
    op.create_index("ix_measurements_kernel_id", "measurements", ["kernel_id"])
    op.create_index("ix_measurements_profile_run_id", "measurements", ["profile_run_id"])


def downgrade() -> None:
    op.drop_table("measurements")
    op.drop_table("profile_runs")
    op.drop_table("kernel_configs")
    op.drop_table("devices")
