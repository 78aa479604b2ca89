"""Every route declares the role it needs, and gets it: the matrix of roles × routes comes from the
OpenAPI document itself, so a new route without a declared permission fails here."""

from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import Role
from tests.auth.conftest import bearer
from tests.conftest import Registry, assert_error

PUBLIC_PREFIXES = ("/health/",)
DOCUMENTED_ERRORS = {"401", "403", "404", "409", "422", "503"}


async def _operations(client: AsyncTestClient) -> list[tuple[str, str, dict[str, Any]]]:
    document = (await client.get("/schema/openapi.json")).json()
    return [
        (method.upper(), path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


async def test_every_route_declares_its_role_in_the_openapi(closed: AsyncTestClient) -> None:
    operations = await _operations(closed)
    assert len(operations) > 40
    for method, path, operation in operations:
        if path.startswith(PUBLIC_PREFIXES):
            assert "x-dlm-role" not in operation and "security" not in operation, path
            continue
        assert operation.get("x-dlm-role") in set(Role), f"{method} {path} declares no permission"
        assert operation["security"] == [{"BearerToken": []}], path
        assert f"Requires role `{operation['x-dlm-role']}`" in operation["description"], path
        assert DOCUMENTED_ERRORS <= set(operation["responses"]), path


async def test_a_route_that_declares_nothing_is_refused_to_everyone(
    closed_settings: Settings, role_tokens: dict[Role, str]
) -> None:
    @get("/undeclared", operation_id="undeclared")
    async def undeclared() -> str:
        return "should never be seen"

    app: Litestar = create_app(closed_settings)
    app.register(undeclared)
    async with AsyncTestClient(app) as client:
        response = await client.get("/undeclared", headers=bearer(role_tokens[Role.ADMIN]))
    assert_error(response, 403, "Forbidden", "declares no permission")


@pytest.mark.parametrize("role", list(Role))
async def test_each_role_reaches_exactly_the_routes_at_or_below_it(
    closed: AsyncTestClient, role_tokens: dict[Role, str], role: Role
) -> None:
    for method, path, operation in await _operations(closed):
        if path.startswith(PUBLIC_PREFIXES):
            continue
        needed = Role(operation["x-dlm-role"])
        # No parameters: a route the role may call refuses the request for what is missing (4xx), not for who.
        response = await closed.request(method, path, headers=bearer(role_tokens[role]))
        if role.allows(needed):
            assert response.status_code not in (401, 403, 500), (role, method, path, response.text)
        else:
            assert_error(response, 403, "Forbidden", needed.value, f"{role.value}-user")


async def test_without_a_token_every_route_but_the_probes_is_401(closed: AsyncTestClient) -> None:
    for method, path, _ in await _operations(closed):
        response = await closed.request(method, path)
        if path.startswith(PUBLIC_PREFIXES):
            assert response.status_code != 401, path
            continue
        if method.upper() == "HEAD":  # no body to say why
            assert response.status_code == 401, path
        else:
            assert_error(response, 401, "Unauthorized", "bearer token")
        assert response.headers["www-authenticate"].startswith("Bearer"), path
    assert (await closed.get("/schema/openapi.json")).status_code == 200, "the API description is public"


@pytest.mark.parametrize(
    "header", ["Bearer dlm_not-a-real-token-at-all-xxxxxxxxxxxxxxxxxxxxxxx", "Basic YTpi", "Bearer", "dlm_x"]
)
async def test_a_bad_credential_is_401_even_for_reading(closed: AsyncTestClient, header: str) -> None:
    response = await closed.get("/request/query_data_item", headers={"Authorization": header})
    assert_error(response, 401, "Unauthorized")


async def _admin_registry(closed: AsyncTestClient, role_tokens: dict[Role, str], tmp_path: Path) -> Registry:
    closed.headers.update(bearer(role_tokens[Role.ADMIN]))
    registry = Registry(closed, tmp_path / "store")
    await registry.storage()
    return registry


async def test_the_caller_is_the_actor_the_owner_and_the_migrations_user(
    closed: AsyncTestClient, role_tokens: dict[Role, str], tmp_path: Path
) -> None:
    registry = await _admin_registry(closed, role_tokens, tmp_path)
    await registry.storage("archive", root=tmp_path / "archive", phase="SOLID")
    ingest, operator, reader = (bearer(role_tokens[role]) for role in (Role.INGEST, Role.OPERATOR, Role.READER))
    registry.payload("obs.dat")
    registered = await closed.post(
        "/ingest/register_data_item",
        params={"item_name": "obs", "uri": "obs.dat", "storage_name": "disk"},
        headers=ingest,
    )
    assert registered.status_code == 200, registered.text
    uid = registered.json()
    item = await registry.item(uid)
    assert item["item_owner"] == "token:ingest-user"
    registry.payload("theirs.dat")
    on_behalf = await closed.post(
        "/ingest/register_data_item",
        params={"item_name": "theirs", "uri": "theirs.dat", "storage_name": "disk", "item_owner": "alice"},
        headers=ingest,
    )
    owner = (await registry.item(on_behalf.json()))["item_owner"]
    assert owner == "oidc:alice", "an ingest service names the owner, a user of the identity provider"
    initialised = await closed.post("/ingest/init_data_item", params={"item_name": "later"}, headers=ingest)
    assert (await registry.item(initialised.json()))["item_owner"] == "token:ingest-user"

    history = (await closed.get("/request/query_item_history", params={"uid": uid}, headers=reader)).json()
    assert {event["actor"] for event in history} == {"token:ingest-user"}

    queued = await closed.post(
        "/migration/copy_data_item", params={"uid": uid, "destination_name": "archive"}, headers=operator
    )
    assert queued.status_code == 200, queued.text
    migration_id = queued.json()["migration_id"]
    [migration] = (await closed.get("/migration/get_migration", params={"migration_id": migration_id})).json()
    assert migration["user"] == "token:operator-user"
    assert (await closed.get("/migration/query_migrations", headers=reader)).json() == [], "not the reader's own"
    assert (
        await closed.get("/migration/get_migration", params={"migration_id": migration_id}, headers=reader)
    ).json() == []
    mine = (await closed.get("/migration/query_migrations", headers=operator)).json()
    assert [row["migration_id"] for row in mine] == [migration_id]


async def test_force_needs_an_admin_and_a_read_only_storage_keeps_its_payloads(
    closed: AsyncTestClient, role_tokens: dict[Role, str], tmp_path: Path, engine: AsyncEngine
) -> None:
    registry = await _admin_registry(closed, role_tokens, tmp_path)
    operator = bearer(role_tokens[Role.OPERATOR])
    uid = await registry.register("kept", target_phase="GAS")
    forced = await closed.post(
        "/storage/delete_data_item_payload", params={"uid": uid, "force": "true"}, headers=operator
    )
    assert_error(forced, 403, "Forbidden", "force=true", "admin")
    forced_move = await closed.post(
        "/migration/move_data_item", params={"uid": uid, "destination_name": "disk", "force": "true"}, headers=operator
    )
    assert_error(forced_move, 403, "Forbidden", "move_data_item with force=true", "admin")

    # A read-only storage: made so in the database (no route changes permissions yet).
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE storage SET storage_permissions = 'R' WHERE storage_name = 'disk'"))
    refused = await closed.post("/storage/delete_data_item_payload", params={"uid": uid}, headers=operator)
    assert_error(refused, 422, "UnmetPreconditionForOperation", "read-only", "admin")
    assert (registry.root / "kept").exists()
    assert (await registry.item(uid))["item_state"] == "READY"
    by_admin = await closed.post("/storage/delete_data_item_payload", params={"uid": uid, "force": "true"})
    assert by_admin.status_code == 200, by_admin.text
    assert not (registry.root / "kept").exists()
