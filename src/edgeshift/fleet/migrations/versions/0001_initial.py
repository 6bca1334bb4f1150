"""The fleet store's first schema: operators, enrolment tokens, devices, groups, nonces,
desired and reported state, telemetry, artifacts, rollouts and their waves.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifacts",
        sa.Column("artifact_id", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("info", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("artifact_id", name=op.f("pk_artifacts")),
    )
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("labels", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("group_name", sa.String(length=63), nullable=True),
        sa.Column("hardware", sa.String(length=128), nullable=False),
        sa.Column("enrolled_at", sa.Double(), nullable=False),
        sa.Column("last_seen", sa.Double(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_devices")),
    )
    op.create_table(
        "enrolment_tokens",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("group_name", sa.String(length=63), nullable=True),
        sa.Column("labels", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("used_at", sa.Double(), nullable=True),
        sa.Column("used_by", sa.String(length=63), nullable=True),
        sa.PrimaryKeyConstraint("token_sha256", name=op.f("pk_enrolment_tokens")),
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("selector", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_groups")),
    )
    op.create_table(
        "operators",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_operators")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_operators_token_sha256")),
    )
    op.create_table(
        "rollouts",
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("info", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("rollout_id", name=op.f("pk_rollouts")),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"], unique=False)

    op.create_table(
        "desired",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("artifact", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("rollout_id", sa.String(length=63), nullable=True),
        sa.Column("shadow_s", sa.Double(), nullable=False),
        sa.Column("shadow_min_requests", sa.Integer(), nullable=False),
        sa.Column("trial_s", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_desired_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_desired")),
    )
    op.create_table(
        "desired_previous",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        sa.Column("artifact", sa.JSON(none_as_null=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_desired_previous_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "rollout_id", name=op.f("pk_desired_previous")),
    )
    op.create_table(
        "nonces",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_nonces_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", "nonce", name=op.f("pk_nonces")),
    )
    op.create_index("ix_nonces_at", "nonces", ["at"], unique=False)

    op.create_table(
        "report_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_report_history_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_report_history")),
    )
    op.create_index(
        "ix_report_history_device_id_id", "report_history", ["device_id", "id"], unique=False
    )

    op.create_table(
        "reports",
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_reports_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_reports")),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(length=63), nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_rollout_devices_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollouts.rollout_id"],
            name=op.f("fk_rollout_devices_rollout_id_rollouts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id", name=op.f("pk_rollout_devices")),
    )
    op.create_table(
        "telemetry",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=63), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("record", sa.JSON(none_as_null=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.device_id"],
            name=op.f("fk_telemetry_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry")),
    )
    op.create_index("ix_telemetry_device_id_id", "telemetry", ["device_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_telemetry_device_id_id", table_name="telemetry")

    op.drop_table("telemetry")
    op.drop_table("rollout_devices")
    op.drop_table("reports")
    op.drop_index("ix_report_history_device_id_id", table_name="report_history")

    op.drop_table("report_history")
    op.drop_index("ix_nonces_at", table_name="nonces")

    op.drop_table("nonces")
    op.drop_table("desired_previous")
    op.drop_table("desired")
    op.drop_index("ix_rollouts_state", table_name="rollouts")

    op.drop_table("rollouts")
    op.drop_table("operators")
    op.drop_table("groups")
    op.drop_table("enrolment_tokens")
    op.drop_table("devices")
    op.drop_table("artifacts")
