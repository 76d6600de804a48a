"""lifecycle: instance purpose, shadow findings, model registry, data sets, report labels,
monitoring

`instances.purpose` keeps data-set retrievals and received reports out of routing;
`findings.mode` and `findings.model_id` record shadow findings and the registered model of
each inference; `model_versions` and `model_stage_events` are the model registry with its
history; `dataset_items` makes `dataset pull` resumable; `report_labels` holds per-hip
labels from final reports (never their text); `monitor_checks` the weekly agreement and
drift figures with their alerts.

Revision ID: 0006
Revises: 0004
"""

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purpose", sa.String(length=16), nullable=False,
                                      server_default="clinical"))
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode", sa.String(length=8), nullable=False,
                                      server_default="active"))
        batch_op.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("device_uid", sa.String(length=64), nullable=False),
        sa.Column("card", sa.JSON(), nullable=False),
        sa.Column("baseline", sa.JSON(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stage_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_model_versions"),
    )
    op.create_index("ix_model_versions_name", "model_versions", ["name"])
    op.create_table(
        "model_stage_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("from_stage", sa.String(length=16), nullable=False),
        sa.Column("to_stage", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_stage_events_model_id", "model_stage_events", ["model_id"])
    op.create_index("ix_model_stage_events_name", "model_stage_events", ["name"])
    op.create_table(
        "dataset_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset", sa.String(length=128), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset", "study_uid", "series_uid", name="uq_dataset_items"),
    )
    op.create_index("ix_dataset_items_dataset", "dataset_items", ["dataset"])
    op.create_table(
        "report_labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("source_ref", sa.String(length=64), nullable=False),
        sa.Column("report_sha256", sa.String(length=64), nullable=False),
        sa.Column("language", sa.String(length=8), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("laterality", sa.String(length=1), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("extracted_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid", "source_ref", "kind", "laterality",
                            name="uq_report_labels"),
    )
    op.create_index("ix_report_labels_study_uid", "report_labels", ["study_uid"])
    op.create_table(
        "monitor_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("week", sa.String(length=8), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("alert", sa.Boolean(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pipeline", "mode", "model_version", "week", "metric",
                            name="uq_monitor_checks"),
    )
    op.create_index("ix_monitor_checks_pipeline", "monitor_checks", ["pipeline"])


def downgrade() -> None:
    op.drop_index("ix_monitor_checks_pipeline", table_name="monitor_checks")
    op.drop_table("monitor_checks")
    op.drop_index("ix_report_labels_study_uid", table_name="report_labels")
    op.drop_table("report_labels")
    op.drop_index("ix_dataset_items_dataset", table_name="dataset_items")
    op.drop_table("dataset_items")
    op.drop_index("ix_model_stage_events_name", table_name="model_stage_events")
    op.drop_index("ix_model_stage_events_model_id", table_name="model_stage_events")
    op.drop_table("model_stage_events")
    op.drop_index("ix_model_versions_name", table_name="model_versions")
    op.drop_table("model_versions")
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_column("model_id")
        batch_op.drop_column("mode")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("purpose")
