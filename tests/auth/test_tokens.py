"""DLM's API tokens: shown once, stored as a hash, listed without secrets, revoked at once, and the first
admin token made from the command line with no server."""

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.auth import tokens
from dlm.config import Settings
from dlm.enums import Role
from dlm.serve import prepare
from tests.auth.conftest import bearer, make_token
from tests.conftest import assert_error


async def test_an_admin_makes_lists_and_revokes_tokens(
    closed: AsyncTestClient, role_tokens: dict[Role, str], engine: AsyncEngine
) -> None:
    admin = bearer(role_tokens[Role.ADMIN])
    created = await closed.post("/auth/create_token", params={"name": "pipe-7", "role": "ingest"}, headers=admin)
    assert created.status_code == 200, created.text
    secret = created.json()
    assert secret.startswith("dlm_") and len(secret) > 40
    async with engine.connect() as connection:
        stored = " ".join(str(row) for row in await connection.execute(text("SELECT * FROM api_token")))
    assert secret not in stored and secret[4:] not in stored, "only a hash is kept"

    me = await closed.get("/auth/whoami", headers=bearer(secret))
    assert me.json() == {"subject": "token:pipe-7", "role": "ingest", "via": "token", "expires": None, "groups": []}

    listed = (await closed.get("/auth/list_tokens", headers=admin)).json()
    pipe = next(row for row in listed if row["name"] == "pipe-7")
    assert set(pipe) == {"name", "role", "created", "created_by", "expires", "revoked", "revoked_by", "last_used"}
    assert (pipe["role"], pipe["created_by"]) == ("ingest", "token:admin-user")
    assert pipe["last_used"] is not None

    again = await closed.post("/auth/create_token", params={"name": "pipe-7", "role": "reader"}, headers=admin)
    assert_error(again, 422, "ValueAlreadyInDB", "pipe-7")
    revoked = await closed.post("/auth/revoke_token", params={"name": "pipe-7"}, headers=admin)
    assert revoked.json()["revoked_by"] == "token:admin-user"
    assert_error(await closed.get("/auth/whoami", headers=bearer(secret)), 401, "Unauthorized", "revoked")
    assert [row["name"] for row in (await closed.get("/auth/list_tokens", headers=admin)).json()].count("pipe-7") == 0
    every = (await closed.get("/auth/list_tokens", params={"include_revoked": "true"}, headers=admin)).json()
    assert [row["name"] for row in every].count("pipe-7") == 1, "the trace stays"
    renewed = await closed.post("/auth/create_token", params={"name": "pipe-7", "role": "reader"}, headers=admin)
    assert renewed.status_code == 200, "a revoked name may be given again"


async def test_bad_token_requests(closed: AsyncTestClient, role_tokens: dict[Role, str]) -> None:
    admin = bearer(role_tokens[Role.ADMIN])
    for params, field in (
        ({"name": "has space", "role": "reader"}, "name"),
        ({"name": "x", "role": "boss"}, "role"),
        ({"name": "x", "role": "reader", "expires": "2001-01-01"}, "expires"),
        ({"name": "x", "role": "reader", "expires": "soon"}, "expires"),
    ):
        response = await closed.post("/auth/create_token", params=params, headers=admin)
        assert_error(response, 422, "InvalidQueryParameters", field)
    assert_error(await closed.post("/auth/revoke_token", params={"name": "nobody"}, headers=admin), 404, "NotFound")


async def test_an_expired_token_is_refused(
    closed: AsyncTestClient, sessionmaker: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    secret = await make_token(sessionmaker, "short-lived", Role.READER, expires=soon)
    assert (await closed.get("/auth/whoami", headers=bearer(secret))).json()["expires"] is not None
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE api_token SET expires = now() - interval '1 second'"))
    closed.app.state.gate.forget_tokens()  # as if the cached verdict had run out
    assert_error(await closed.get("/auth/whoami", headers=bearer(secret)), 401, "Unauthorized", "expired")


def _dlm(*arguments: str, database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(DLM_DATABASE_URL=database_url, DLM_DATA_DIR=str(tmp_path / "data"))
    return subprocess.run(
        [sys.executable, "-m", "dlm", *arguments], env=environment, capture_output=True, text=True, timeout=60
    )


async def test_the_first_admin_token_comes_from_the_command_line_with_no_server(
    database_url: str, tmp_path: Path, settings: Settings
) -> None:
    created = _dlm("token", "create", "ops", "--role", "admin", database_url=database_url, tmp_path=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("dlm_") and "shown only now" in created.stderr

    listed = _dlm("token", "list", "--json", database_url=database_url, tmp_path=tmp_path)
    [row] = json.loads(listed.stdout)
    assert (row["name"], row["role"], row["created_by"].startswith("cli:")) == ("ops", "admin", True)

    async with AsyncTestClient(create_app(settings)) as client:  # DLM_AUTH=auto: a token exists, so it is closed
        assert_error(await client.get("/request/query_data_item"), 401, "Unauthorized")
        me = await client.get("/auth/whoami", headers=bearer(secret))
        assert me.json()["subject"] == "token:ops"

    duplicate = _dlm("token", "create", "ops", "--role", "reader", database_url=database_url, tmp_path=tmp_path)
    assert duplicate.returncode == 1 and duplicate.stderr.startswith("dlm: error:") and "ops" in duplicate.stderr
    assert len(duplicate.stderr.strip().splitlines()) == 1
    revoked = _dlm("token", "revoke", "ops", database_url=database_url, tmp_path=tmp_path)
    assert revoked.returncode == 0, revoked.stderr


async def test_open_until_a_token_exists_and_the_deployments_admin_token(
    settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        me = await client.get("/auth/whoami")
        assert me.json() == {"subject": "anonymous", "role": "admin", "via": "open", "expires": None, "groups": []}

    secret, renewed = (tokens.new_secret() for _ in range(2))
    deployed = msgspec.structs.replace(settings, admin_token=secret)
    prepared = await prepare(deployed)
    assert not prepared.open, "an admin token closes DLM"
    async with AsyncTestClient(create_app(deployed)) as client:
        assert_error(await client.get("/auth/whoami"), 401, "Unauthorized")
        assert (await client.get("/auth/whoami", headers=bearer(secret))).json()["subject"] == "token:admin"

    rotated = msgspec.structs.replace(settings, admin_token=renewed)
    await prepare(rotated)
    await prepare(rotated)  # a restart changes nothing
    async with AsyncTestClient(create_app(rotated)) as client:
        assert_error(await client.get("/auth/whoami", headers=bearer(secret)), 401, "Unauthorized")
        listed = (
            await client.get("/auth/list_tokens", params={"include_revoked": "true"}, headers=bearer(renewed))
        ).json()
    assert {row["name"] for row in listed} == {"admin"}
    assert sorted(row["revoked"] is None for row in listed) == [False, True], "the old one revoked, the new one live"

    # DLM_ADMIN_TOKEN taken out of the deployment: the token it gave goes with it.
    made_by_hand = await make_token(sessionmaker, "ops", Role.ADMIN)
    await prepare(settings)
    async with AsyncTestClient(create_app(settings)) as client:
        assert_error(await client.get("/auth/whoami", headers=bearer(renewed)), 401, "Unauthorized")
        assert (await client.get("/auth/whoami", headers=bearer(made_by_hand))).status_code == 200, "others stay"


def test_an_admin_token_must_look_like_one() -> None:
    from dlm.config import InvalidSettings

    placeholder = "dlm_replace-me-with-64-random-hex-characters-from-openssl-rand"  # deploy/kubernetes's
    for value in ("changeme", "dlm_short", placeholder, "dlm_" + "a" * 64):
        try:
            Settings.from_env({"DLM_ADMIN_TOKEN": value})
        except InvalidSettings as exc:
            assert "DLM_ADMIN_TOKEN" in str(exc)
        else:
            raise AssertionError(f"{value!r} accepted")


async def test_the_cli_speaks_to_a_closed_dlm_with_a_token(database_url: str, tmp_path: Path) -> None:
    from tests.conftest import Server

    admin = tokens.new_secret()
    server = await Server(database_url, tmp_path / "served", admin_token=admin).ready()
    try:

        def cli(*arguments: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
            environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
            environment.update(DLM_URL=server.base, **({"DLM_TOKEN": token} if token else {}))
            return subprocess.run(
                [sys.executable, "-m", "dlm", *arguments], env=environment, capture_output=True, text=True, timeout=60
            )

        refused = cli("whoami")
        assert refused.returncode == 1 and refused.stderr.strip() == (
            "dlm: error: Unauthorized: this DLM needs a bearer token: Authorization: Bearer <token>"
        )
        assert "admin" in cli("whoami", token=admin).stdout
        made = cli("token", "create", "scientist", "--role", "reader", "--url", server.base, "--json", token=admin)
        secret = json.loads(made.stdout)["token"]
        assert json.loads(cli("whoami", "--json", token=secret).stdout)["role"] == "reader"
        too_low = cli("storage", "add-location", "x", "--type", "local-dev", token=secret)
        assert too_low.returncode == 1 and "needs role admin" in too_low.stderr
        people = cli("token", "create", "person", "--role", "reader", "--url", server.base, token=admin)
        assert "shown only now" in people.stderr and "restart" not in people.stderr, "a closed DLM needs none"
        listed = json.loads(cli("token", "list", "--url", server.base, "--json", token=admin).stdout)
        assert {row["name"] for row in listed} == {"admin", "scientist", "person"}
        assert cli("token", "revoke", "scientist", "--url", server.base, token=admin).returncode == 0
        assert cli("whoami", token=secret).returncode == 1
    finally:
        server.stop()


async def test_processes_starting_together_with_one_admin_token_both_start(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    """Two replicas of a deployment start at once with the same DLM_ADMIN_TOKEN: the second waits for
    the first's transaction and finds the token made, instead of failing on it (seen in CI)."""
    import asyncio

    from dlm.db.engine import transaction

    secret = "dlm_" + os.urandom(32).hex()

    async def start() -> bool:
        async with transaction(sessionmaker, actor="startup") as session:
            changed = await tokens.ensure_token(
                session, name="admin", role=Role.ADMIN, secret=secret, created_by="DLM_ADMIN_TOKEN"
            )
            await asyncio.sleep(0.3)  # the rest of a start-up's transaction
            return changed

    assert sorted(await asyncio.gather(start(), start())) == [False, True]
    async with sessionmaker() as session:
        live = await session.scalar(text("SELECT count(*) FROM api_token WHERE name = 'admin' AND revoked IS NULL"))
    assert live == 1
