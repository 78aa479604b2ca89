"""extracted metadata in columns of their own: the caller's metadata round-trips as sent

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 06:00:00

DLM's metadata plugins used to write into the caller's ``metadata`` (``generic``, ``ska_data_product``,
``dlm_extract_errors``), so SKA's clients did not get back the metadata they registered. What the
plugins find now goes to ``extracted_metadata``; the payload's modification time, which the generic
plugin recorded, to ``payload_modified`` (size and MIME type were columns already). Existing rows are
moved over; a ``generic`` key is taken as DLM's only where it looks like DLM's (it has ``mime_type``).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MOVE = """
UPDATE data_item SET
    extracted_metadata = nullif(jsonb_strip_nulls(jsonb_build_object(
        'ska_data_product', metadata -> 'ska_data_product',
        'dlm_extract_errors', metadata -> 'dlm_extract_errors')), '{}'::jsonb),
    payload_modified = CASE WHEN metadata -> 'generic' ? 'mime_type'
                            THEN (metadata -> 'generic' ->> 'modified')::timestamptz END,
    metadata = metadata - 'ska_data_product' - 'dlm_extract_errors'
               - CASE WHEN metadata -> 'generic' ? 'mime_type' THEN 'generic' ELSE '' END
WHERE metadata ?| ARRAY['generic', 'ska_data_product', 'dlm_extract_errors']
"""

BACK = """
UPDATE data_item SET metadata = coalesce(metadata, '{}'::jsonb) || extracted_metadata
WHERE extracted_metadata IS NOT NULL
"""


def upgrade() -> None:
    op.add_column("data_item", sa.Column("extracted_metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column("data_item", sa.Column("payload_modified", sa.DateTime(timezone=True), nullable=True))
    op.execute(MOVE)


def downgrade() -> None:
    op.execute(BACK)
    op.drop_column("data_item", "payload_modified")
    op.drop_column("data_item", "extracted_metadata")
