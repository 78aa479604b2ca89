"""An app that requires tokens, and a token for each role."""

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.auth import tokens
from dlm.config import Settings
from dlm.db.engine import transaction
from dlm.enums import Role


async def make_token(sessionmaker: async_sessionmaker[AsyncSession], name: str, role: Role, **options: object) -> str:
    async with transaction(sessionmaker, actor="test") as session:
        return await tokens.create_token(session, name=name, role=role, created_by="test", **options)  # type: ignore[arg-type]


@pytest.fixture
def closed_settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, auth="required")


@pytest.fixture
async def role_tokens(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[Role, str]:
    """A token per role, named after it."""
    return {role: await make_token(sessionmaker, f"{role.value}-user", role) for role in Role}


@pytest.fixture
async def closed(closed_settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(closed_settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def storage_root(tmp_path: Path, name: str = "store") -> Path:
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    return root
