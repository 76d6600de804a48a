"""jobs: study episode, replay flag, one job per routed rule and pipeline

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa

from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("episode", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("replay", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_unique_constraint(
            "uq_jobs_route", ["study_uid", "episode", "rule", "pipeline"]
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_jobs_route", type_="unique")
        batch_op.drop_column("replay")
        batch_op.drop_column("episode")
