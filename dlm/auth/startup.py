"""What a starting DLM decides about its callers: open (loopback only) or closed, and the deployment's
admin token."""

import ipaddress

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.auth import tokens
from dlm.config import Settings
from dlm.enums import Role

ADMIN_TOKEN_ACTOR = "DLM_ADMIN_TOKEN"


async def decide_open(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    """Whether callers without a token act as the anonymous admin (``DLM_AUTH``)."""
    if settings.auth == "none":
        return True
    if settings.auth == "required" or settings.auth_configured:
        return False
    async with sessionmaker() as session:
        return not await tokens.any_live_token(session)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def retire_admin_token(session: AsyncSession) -> bool:
    """Revoke the admin token DLM_ADMIN_TOKEN gave, now that the variable is gone; whether there was one.
    (An `admin` token made with `dlm token create` is left alone.)"""
    live = await session.scalar(
        select(tokens.TOKENS.c.token_id).where(
            tokens.TOKENS.c.name == tokens.ADMIN_TOKEN_NAME,
            tokens.TOKENS.c.revoked.is_(None),
            tokens.TOKENS.c.created_by == ADMIN_TOKEN_ACTOR,
        )
    )
    if live is None:
        return False
    await tokens.revoke_token(session, name=tokens.ADMIN_TOKEN_NAME, revoked_by=ADMIN_TOKEN_ACTOR)
    return True


async def seed_admin_token(session: AsyncSession, settings: Settings) -> bool:
    """Keep ``DLM_ADMIN_TOKEN`` as the live `admin` token; returns whether it changed."""
    if settings.admin_token is None:
        return False
    return await tokens.ensure_token(
        session,
        name=tokens.ADMIN_TOKEN_NAME,
        role=Role.ADMIN,
        secret=settings.admin_token,
        created_by=ADMIN_TOKEN_ACTOR,
    )
