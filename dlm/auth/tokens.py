"""DLM API tokens: bearer secrets for pipelines and services that need no identity provider.

A secret is ``dlm_`` and 43 URL-safe characters (256 random bits), shown once when created; the
database keeps its SHA-256 only, so a stolen database yields no usable token.
"""

import datetime
import hashlib
import secrets
from typing import Any

from sqlalchemy import Row, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.principal import TOKEN_SUBJECT, Principal
from dlm.db.models import ApiToken
from dlm.enums import Role
from dlm.errors import InvalidQueryParameters, NotFound, ValueAlreadyInDB

PREFIX = "dlm_"
ADMIN_TOKEN_NAME = "admin"
_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@:")
TOKENS = ApiToken.__table__
# What listing a token shows: never its hash.
LISTED = (
    TOKENS.c.name,
    TOKENS.c.role,
    TOKENS.c.created,
    TOKENS.c.created_by,
    TOKENS.c.expires,
    TOKENS.c.revoked,
    TOKENS.c.revoked_by,
    TOKENS.c.last_used,
)


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(credential: str) -> bool:
    return credential.startswith(PREFIX)


def check_name(name: str) -> str:
    if not name or len(name) > 100 or not set(name) <= _NAME_CHARACTERS:
        raise InvalidQueryParameters(
            "name: 1 to 100 letters, digits or - _ . @ : (it is the subject the token's holder acts as)"
        )
    return name


async def create_token(
    session: AsyncSession,
    *,
    name: str,
    role: Role,
    created_by: str,
    expires: datetime.datetime | None = None,
    secret: str | None = None,
) -> str:
    """Create a token and return its secret (the only time it is seen)."""
    check_name(name)
    if expires is not None and expires <= datetime.datetime.now(datetime.UTC):
        raise InvalidQueryParameters("expires: must be in the future")
    secret = secret or new_secret()
    exists = await session.scalar(select(TOKENS.c.token_id).where(TOKENS.c.name == name, TOKENS.c.revoked.is_(None)))
    if exists is not None:
        raise ValueAlreadyInDB(f"name: a token named {name!r} exists already; revoke it first")
    await session.execute(
        insert(TOKENS).values(
            name=name, role=role, token_hash=token_hash(secret), created_by=created_by, expires=expires
        )
    )
    return secret


# The advisory lock under which a named token is made to match a deployment's secret.
ENSURE_TOKEN_LOCK = 0x544F4B4E  # "TOKN"


async def ensure_token(session: AsyncSession, *, name: str, role: Role, secret: str, created_by: str) -> bool:
    """Make ``secret`` the live token named ``name`` (a deployment's admin token from its secret store);
    a different live token of that name is revoked. Returns whether anything changed. DLM processes
    starting together with one DLM_ADMIN_TOKEN take turns (a lock held to the end of the transaction):
    the second finds the token the first made."""
    await session.execute(select(func.pg_advisory_xact_lock(ENSURE_TOKEN_LOCK, func.hashtext(name))))
    digest = token_hash(secret)
    current = (
        await session.execute(
            select(TOKENS.c.token_hash, TOKENS.c.role).where(TOKENS.c.name == name, TOKENS.c.revoked.is_(None))
        )
    ).first()
    if current is not None and current.token_hash == digest and current.role is role:
        return False
    if current is not None:
        await revoke_token(session, name=name, revoked_by=created_by)
    await create_token(session, name=name, role=role, created_by=created_by, secret=secret)
    return True


async def list_tokens(session: AsyncSession, *, include_revoked: bool = False) -> list[Row[Any]]:
    query = select(*LISTED).order_by(TOKENS.c.name, TOKENS.c.created)
    if not include_revoked:
        query = query.where(TOKENS.c.revoked.is_(None))
    return list((await session.execute(query)).all())


async def revoke_token(session: AsyncSession, *, name: str, revoked_by: str) -> Row[Any]:
    """Revoke the live token named ``name``; its row stays, as the trace."""
    row = (
        await session.execute(
            update(TOKENS)
            .where(TOKENS.c.name == name, TOKENS.c.revoked.is_(None))
            .values(revoked=func.now(), revoked_by=revoked_by)
            .returning(*LISTED)
        )
    ).first()
    if row is None:
        raise NotFound(f"name: no live token named {name!r}")
    return row


async def authenticate_token(session: AsyncSession, secret: str) -> Principal | None:
    """The principal a secret stands for, recording its use; None for an unknown, revoked or expired one."""
    row = (
        await session.execute(
            update(TOKENS)
            .where(
                TOKENS.c.token_hash == token_hash(secret),
                TOKENS.c.revoked.is_(None),
                (TOKENS.c.expires.is_(None)) | (TOKENS.c.expires > func.now()),
            )
            .values(last_used=func.now())
            .returning(TOKENS.c.name, TOKENS.c.role, TOKENS.c.expires)
        )
    ).first()
    if row is None:
        return None
    return Principal(subject=f"{TOKEN_SUBJECT}{row.name}", role=row.role, via="token", expires=row.expires)


async def any_live_token(session: AsyncSession) -> bool:
    found = await session.scalar(
        select(TOKENS.c.token_id)
        .where(TOKENS.c.revoked.is_(None), (TOKENS.c.expires.is_(None)) | (TOKENS.c.expires > func.now()))
        .limit(1)
    )
    return found is not None
