"""findings: one generic table for every pipeline's findings; jobs run a rule's pipelines

The per-hip classifier rows of `inferences` move into `findings` (status assessed, their
class and probabilities kept); `jobs.pipelines` lists the pipelines one analysis job runs.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("laterality", sa.String(length=8), nullable=False),
        sa.Column("source_sop_uids", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("device_uid", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False, server_default="assessed"),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("predicted_class", sa.String(length=64), nullable=True),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_findings_study_uid"), ["study_uid"], unique=False)
        batch_op.create_index(batch_op.f("ix_findings_job_id"), ["job_id"], unique=False)
    op.execute(
        "INSERT INTO findings (job_id, study_uid, episode, pipeline, kind, laterality, "
        "source_sop_uids, model_name, model_version, status, predicted_class, probability, "
        "probabilities, measurements, regions, details, latency_ms, created_at) "
        "SELECT i.job_id, i.study_uid, COALESCE(j.episode, 1), i.pipeline, i.pipeline, "
        "i.laterality, i.source_sop_uids, i.model_name, i.model_version, 'assessed', "
        "i.predicted_class, i.probability, i.probabilities, '[]', '[]', '{}', i.latency_ms, "
        "i.created_at FROM inferences i LEFT JOIN jobs j ON j.id = i.job_id"
    )
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inferences_study_uid"))
    op.drop_table("inferences")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pipelines", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("pipelines")
    op.create_table(
        "inferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("pipeline", sa.String(length=64), nullable=False),
        sa.Column("laterality", sa.String(length=8), nullable=False),
        sa.Column("source_sop_uids", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("predicted_class", sa.String(length=64), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("inferences", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inferences_study_uid"), ["study_uid"], unique=False)
    op.execute(
        "INSERT INTO inferences (job_id, study_uid, pipeline, laterality, source_sop_uids, "
        "model_name, model_version, predicted_class, probability, probabilities, latency_ms, "
        "created_at) SELECT job_id, study_uid, pipeline, laterality, source_sop_uids, "
        "model_name, model_version, predicted_class, probability, probabilities, latency_ms, "
        "created_at FROM findings WHERE predicted_class IS NOT NULL AND probability IS NOT NULL"
    )
    with op.batch_alter_table("findings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_findings_job_id"))
        batch_op.drop_index(batch_op.f("ix_findings_study_uid"))
    op.drop_table("findings")
