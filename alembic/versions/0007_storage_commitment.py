"""sends: storage commitment (N-ACTION Transaction UID, when requested, when committed)

A send to a destination with `storage_commitment: true` waits in state `committing` after
its C-STORE until the peer's N-EVENT-REPORT names its SOP Instance UID under the
Transaction UID of the N-ACTION (`commit_uid`).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("commit_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("commit_requested_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_sends_commit_uid", ["commit_uid"])


def downgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.drop_index("ix_sends_commit_uid")
        batch.drop_column("committed_at")
        batch.drop_column("commit_requested_at")
        batch.drop_column("commit_uid")
