"""api tokens: DLM's own bearer tokens for pipelines and services, stored as hashes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = postgresql.ENUM("reader", "ingest", "operator", "admin", name="role_type", create_type=False)


def upgrade() -> None:
    ROLE.create(op.get_bind(), checkfirst=False)
    op.create_table(
        "api_token",
        sa.Column("token_id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("role", ROLE, nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(), nullable=True),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_api_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_token_token_hash")),
    )
    op.create_index(
        "uq_api_token_name_live", "api_token", ["name"], unique=True, postgresql_where=sa.text("revoked IS NULL")
    )


def downgrade() -> None:
    op.drop_index("uq_api_token_name_live", table_name="api_token", postgresql_where=sa.text("revoked IS NULL"))
    op.drop_table("api_token")
    ROLE.drop(op.get_bind(), checkfirst=False)
