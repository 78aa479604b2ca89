"""DLM serves SKA-DLM's REST contract: every path, method and parameter (name and place) its generated
clients use, as recorded in tests/contract/*.json (copied from SKA-DLM's OpenAPI documents)."""

import json
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

CONTRACT = Path(__file__).parent / "contract"
MANAGERS = ("ingest", "migration", "request", "storage")


def _operations(document: dict) -> dict[tuple[str, str], set[tuple[str, str]]]:
    return {
        (path, method): {(parameter["name"], parameter["in"]) for parameter in operation.get("parameters", [])}
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def _expected() -> list[tuple[str, str, set[tuple[str, str]], bool]]:
    cases = []
    for name in MANAGERS:
        document = json.loads((CONTRACT / f"{name}.json").read_text())
        for (path, method), parameters in _operations(document).items():
            has_body = "requestBody" in document["paths"][path][method]
            cases.append((path, method, parameters, has_body))
    return cases


@pytest.fixture
async def served(client: AsyncTestClient) -> dict:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.mark.parametrize(("path", "method", "parameters", "has_body"), _expected())
async def test_ska_dlm_operation_is_served_unchanged(
    served: dict, path: str, method: str, parameters: set[tuple[str, str]], has_body: bool
) -> None:
    assert path in served["paths"], path
    assert method in served["paths"][path], (path, method)
    operation = served["paths"][path][method]
    ours = {(parameter["name"], parameter["in"]) for parameter in operation.get("parameters", [])}
    assert parameters <= ours, f"missing {parameters - ours}"
    assert ("requestBody" in operation) == has_body
    assert operation.get("operationId") and operation.get("summary") and operation.get("tags")


async def test_schema_has_a_browsable_ui(client: AsyncTestClient) -> None:
    for path in ("/schema", "/schema/swagger"):
        response = await client.get(path)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]


async def test_dlm_additions_are_documented(served: dict) -> None:
    for path in (
        "/ingest/register_data_items",
        "/request/query_item_history",
        "/storage/storage_usage",
        "/storage/delete_data_item_payload",
        "/migration/cancel_migration",
        "/migration/retry_migration",
        "/health/live",
        "/health/ready",
    ):
        assert path in served["paths"], path


async def test_exactly_skas_operations_are_marked_as_skas(client: AsyncTestClient) -> None:
    # What marks a route as SKA-DLM's (permission(..., ska=True)) decides how it treats parameters it
    # does not take; it must be the contract's routes and no others.
    marked = {
        (route.path, method.lower())
        for route in client.app.routes
        for handler in getattr(route, "route_handlers", [])
        if handler.opt.get("ska")
        for method in handler.http_methods
    }
    assert marked == {(path, method) for path, method, _, _ in _expected()}
