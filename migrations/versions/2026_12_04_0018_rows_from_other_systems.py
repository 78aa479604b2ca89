"""rows from other systems: a replica another system inserts follows DLM's rules for phases

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 22:00:00

SKA's ODA trigger inserts ``dlm.data_item (item_name, item_type, uri, uid_phase, oid_phase)`` with
SOLID phases and no storage, through the view DLM keeps in schema ``dlm`` (dlm.db.ska_views). A row
written outside DLM (no DLM actor on the transaction) gets its storage's phase as uid_phase (GAS
without a storage, as DLM's own INITIALISED items) and, as a new item, the phase of that replica if it
is READY: the phases DLM would have given it. DLM's own inserts are unchanged (issue 26).
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Added at the start of revision 0001's dlm_resolve_oid().
FROM_ELSEWHERE = """
        IF coalesce(current_setting('dlm.actor', true), '') = '' THEN
            NEW.uid_phase := coalesce((SELECT storage_phase FROM storage WHERE storage_id = NEW.storage_id), 'GAS');
            IF NEW.oid IS NULL THEN
                NEW.oid_phase := CASE WHEN NEW.item_state = 'READY' THEN NEW.uid_phase ELSE 'GAS' END;
            END IF;
        END IF;"""


def _initial_resolve_oid() -> str:
    """Revision 0001's function, as that revision wrote it, made replaceable."""
    path = Path(__file__).with_name("2026_11_24_0001_initial_schema.py")
    spec = importlib.util.spec_from_file_location("revision_0001", path)
    assert spec is not None and spec.loader is not None
    initial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(initial)
    [original] = [statement for statement in initial.TRIGGERS if "CREATE FUNCTION dlm_resolve_oid()" in statement]
    return original.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    original = _initial_resolve_oid()
    assert original.count("    BEGIN") == 1
    op.execute(original.replace("    BEGIN", "    BEGIN" + FROM_ELSEWHERE, 1))


def downgrade() -> None:
    op.execute(_initial_resolve_oid())
