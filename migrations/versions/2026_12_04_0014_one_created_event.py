"""one created event: a new replica's history starts with one event holding its initial values

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 14:00:00

A replica's creation was seven events (created, storage_id, uri, uid_phase, target_phase and both
expiries), the largest cost of a bulk registration (70,000 history rows for 10,000 items, and as many
for the copies the replication engine queues for them). It is now one: ``created``, its state in
``new_value`` as before, and the other initial values in the new ``detail`` column (a JSON object of
those that are set). The trace keeps every value; earlier history is left as it is (issue 25).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_EVENT = """
    CREATE OR REPLACE FUNCTION dlm_history_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO data_item_event (uid, oid, event, old_value, new_value, detail, actor)
        SELECT n.uid, n.oid, 'created', NULL, n.item_state::text,
               jsonb_strip_nulls(jsonb_build_object(
                   'storage_id', n.storage_id,
                   'uri', n.uri,
                   'uid_phase', n.uid_phase,
                   'target_phase', n.target_phase,
                   'uid_expiration', dlm_timestamp_text(n.uid_expiration),
                   'oid_expiration', dlm_timestamp_text(n.oid_expiration))),
               dlm_actor()
        FROM new_rows n
        ORDER BY n.uid;
        RETURN NULL;
    END
    $$
"""

SEVEN_EVENTS = """
    CREATE OR REPLACE FUNCTION dlm_history_on_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO data_item_event (uid, oid, event, old_value, new_value, actor)
        SELECT n.uid, n.oid, e.event, NULL, e.new_value, dlm_actor()
        FROM new_rows n
        CROSS JOIN LATERAL (VALUES
            (1, 'created', n.item_state::text),
            (2, 'storage_id', n.storage_id::text),
            (3, 'uri', n.uri),
            (4, 'uid_phase', n.uid_phase::text),
            (5, 'target_phase', n.target_phase::text),
            (6, 'uid_expiration', dlm_timestamp_text(n.uid_expiration)),
            (7, 'oid_expiration', dlm_timestamp_text(n.oid_expiration))
        ) AS e(position, event, new_value)
        WHERE e.new_value IS NOT NULL
        ORDER BY n.uid, e.position;
        RETURN NULL;
    END
    $$
"""


def upgrade() -> None:
    op.add_column("data_item_event", sa.Column("detail", JSONB(), nullable=True))
    op.execute(ONE_EVENT)


def downgrade() -> None:
    op.execute(SEVEN_EVENTS)
    op.drop_column("data_item_event", "detail")
