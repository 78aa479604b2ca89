"""item permissions: canonical payload uris, qualified owners, and owner, group and acl changes traced

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 10:00:00

- URIs: DLM stores a payload's uri in its canonical form (dlm.transfer.paths.canonical_uri), so that
  "./x", "x/" and "a//x" can no longer pass for payloads other than "x" (issue 24: an alias let one
  caller read, then delete, another's bytes). Live uris written otherwise are rewritten to it; where
  two live replicas turn out to hold the same payload, the upgrade stops and names them, as revision
  0005 does: mark one of each DELETED (its payload stays) and upgrade again.
- Owners: a subject says where it comes from, "token:<name>" (a DLM API token) or "oidc:<subject>"
  (an identity provider). Owners, acl readers and the users of copies and deliveries that name a token
  become "token:<name>"; other names (SKA-DLM's owners are identity provider user names) become
  "oidc:<name>"; SKA-DLM's default owner "SKA" and "anonymous" stay themselves.
- History: a change of item_owner, item_group or acl is an event of the item's history, with its actor.
"""

from collections.abc import Sequence
from pathlib import PurePosixPath

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Live uris with a "." or empty component, or a trailing "/": not canonical.
NOT_CANONICAL = r"""
    SELECT d.uid, d.storage_id, d.uri, d.item_name, s.storage_name
    FROM data_item AS d LEFT JOIN storage AS s ON s.storage_id = d.storage_id
    WHERE d.item_state <> 'DELETED' AND d.uri ~ '(^|/)\.(/|$)|.//|./$'
"""

NOT_SUBJECTS = "('SKA', 'anonymous')"
USER = '"user"'  # the column of migration and delivery, a reserved word


def _qualify(column: str) -> str:
    """SQL for ``column`` as a qualified subject."""
    return f"""CASE
        WHEN {column} IN {NOT_SUBJECTS} OR {column} LIKE 'token:%' OR {column} LIKE 'oidc:%' THEN {column}
        WHEN {column} IN (SELECT name FROM api_token) THEN 'token:' || {column}
        ELSE 'oidc:' || {column} END"""


def _needs_qualifying(column: str) -> str:
    return f"{column} NOT IN {NOT_SUBJECTS} AND {column} NOT LIKE 'token:%' AND {column} NOT LIKE 'oidc:%'"


QUALIFY_ACL_READERS = f"""
    UPDATE data_item SET acl = jsonb_set(acl, '{{read}}', (
        SELECT coalesce(jsonb_agg(to_jsonb(CASE WHEN r = '*' OR r LIKE 'group:%' THEN r ELSE {_qualify("r")} END)
                                  ORDER BY position), '[]'::jsonb)
        FROM jsonb_array_elements_text(acl -> 'read') WITH ORDINALITY AS e(r, position)))
    WHERE jsonb_typeof(acl -> 'read') = 'array'
      AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(acl -> 'read') AS e(r)
                  WHERE r <> '*' AND r NOT LIKE 'group:%' AND {_needs_qualifying("r")})
"""

HISTORY_ON_UPDATE = """
    CREATE OR REPLACE FUNCTION dlm_history_on_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO data_item_event (uid, oid, event, old_value, new_value, actor)
        SELECT n.uid, n.oid, e.event, e.old_value, e.new_value, dlm_actor()
        FROM new_rows n
        JOIN old_rows o ON o.uid = n.uid
        CROSS JOIN LATERAL (VALUES
            (1, 'item_state', o.item_state::text, n.item_state::text),
            (2, 'storage_id', o.storage_id::text, n.storage_id::text),
            (3, 'uri', o.uri, n.uri),
            (4, 'item_name', o.item_name, n.item_name),
            (5, 'uid_phase', o.uid_phase::text, n.uid_phase::text),
            (6, 'oid_phase', o.oid_phase::text, n.oid_phase::text),
            (7, 'target_phase', o.target_phase::text, n.target_phase::text),
            (8, 'uid_expiration', dlm_timestamp_text(o.uid_expiration), dlm_timestamp_text(n.uid_expiration)),
            (9, 'oid_expiration', dlm_timestamp_text(o.oid_expiration), dlm_timestamp_text(n.oid_expiration))%s
        ) AS e(position, event, old_value, new_value)
        WHERE e.old_value IS DISTINCT FROM e.new_value
        ORDER BY n.uid, e.position;
        RETURN NULL;
    END
    $$
"""
OWNERSHIP_EVENTS = """,
            (10, 'item_owner', o.item_owner, n.item_owner),
            (11, 'item_group', o.item_group, n.item_group),
            (12, 'acl', o.acl::text, n.acl::text)"""


def _canonical(uri: str) -> str:
    # dlm.transfer.paths.canonical_uri as of this revision (revisions do not import DLM's code).
    return ("/" if uri.startswith("/") else "") + PurePosixPath(uri.lstrip("/")).as_posix()


def _canonicalise_uris(connection: sa.Connection) -> None:
    rows = connection.execute(sa.text(NOT_CANONICAL)).all()
    aliases = []
    for row in rows:
        canonical = _canonical(row.uri)
        holder = connection.execute(
            sa.text(
                "SELECT item_name, uid, uri FROM data_item WHERE storage_id = :storage AND item_state <> 'DELETED' "
                "AND ltrim(uri, '/') = :key AND uid <> :uid LIMIT 1"
            ),
            {"storage": row.storage_id, "key": canonical.lstrip("/"), "uid": row.uid},
        ).first()
        if holder is not None:
            aliases.append(
                f"storage {row.storage_name!r}: {row.item_name!r} (uid {row.uid}, uri {row.uri!r}) is an alias of "
                f"{holder.item_name!r} (uid {holder.uid}, uri {holder.uri!r})"
            )
        else:
            connection.execute(
                sa.text("UPDATE data_item SET uri = :uri WHERE uid = :uid"), {"uri": canonical, "uid": row.uid}
            )
    if aliases:
        raise ValueError(
            f"revision 0012: {len(aliases)} live replicas name another's payload under another spelling: "
            f"{'; '.join(aliases[:20])}. Each alias reads and deletes the other item's bytes. Mark the alias "
            "DELETED (UPDATE data_item SET item_state = 'DELETED' WHERE uid = '...'; the payload stays) and "
            "run the upgrade again"
        )


def upgrade() -> None:
    connection = op.get_bind()
    _canonicalise_uris(connection)
    # Before the trigger learns about owners: rewriting them is not anybody's change of owner.
    op.execute(f"UPDATE data_item SET item_owner = {_qualify('item_owner')} WHERE {_needs_qualifying('item_owner')}")
    op.execute(QUALIFY_ACL_READERS)
    for table in ("migration", "delivery"):
        op.execute(f"UPDATE {table} SET {USER} = {_qualify(USER)} WHERE {_needs_qualifying(USER)}")
    op.execute(HISTORY_ON_UPDATE % OWNERSHIP_EVENTS)


def downgrade() -> None:
    op.execute(HISTORY_ON_UPDATE % "")
    unqualified = "regexp_replace({0}, '^(token|oidc):', '')"
    op.execute(
        f"UPDATE data_item SET item_owner = {unqualified.format('item_owner')} WHERE item_owner ~ '^(token|oidc):'"
    )
    op.execute(
        "UPDATE data_item SET acl = jsonb_set(acl, '{read}', (SELECT coalesce(jsonb_agg(to_jsonb("
        f"{unqualified.format('r')}) ORDER BY position), '[]'::jsonb) FROM jsonb_array_elements_text(acl -> 'read') "
        "WITH ORDINALITY AS e(r, position))) WHERE jsonb_typeof(acl -> 'read') = 'array'"
    )
    for table in ("migration", "delivery"):
        op.execute(f"UPDATE {table} SET {USER} = {unqualified.format(USER)} WHERE {USER} ~ '^(token|oidc):'")
