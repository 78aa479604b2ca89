"""Even open, DLM refuses what a web page could make a browser send it (a foreign Origin, a rebound
Host), and it refuses to be open anywhere but on loopback."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from tests.conftest import Server, assert_error, free_port


@pytest.fixture
async def open_client(settings: Settings, tmp_path: Path) -> AsyncTestClient:
    # The defaults: allowed hosts are the bind address and localhost.
    defaults = msgspec.structs.replace(settings, allowed_hosts=None)
    async with AsyncTestClient(create_app(defaults), base_url="http://127.0.0.1:8000") as client:
        yield client


LOCATION = {"location_name": "site", "location_type": "local-dev"}


async def test_a_foreign_origin_cannot_change_anything(open_client: AsyncTestClient) -> None:
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        response = await open_client.post(
            "/storage/init_location",
            params=LOCATION,
            headers={"Origin": origin, "content-type": "text/plain"},
        )
        assert_error(response, 403, "Forbidden", "Origin")
    assert (await open_client.get("/storage/query_location")).json() == [], "nothing was created"
    same = await open_client.post(
        "/storage/init_location", params=LOCATION, headers={"Origin": "http://127.0.0.1:8000"}
    )
    assert same.status_code == 200, same.text
    script = await open_client.post("/storage/init_location", params={**LOCATION, "location_name": "b"})
    assert script.status_code == 200, "no Origin: not a browser"
    reading = await open_client.get("/storage/query_location", headers={"Origin": "http://evil.example"})
    assert reading.status_code == 200, "reading is harmless: no CORS header lets the page see it"
    assert "access-control-allow-origin" not in reading.headers


async def test_skas_clients_without_a_token_send_bearer_none(open_client: AsyncTestClient, settings: Settings) -> None:
    """SKA-DLM's clients send ``Bearer None`` when no token is configured: open, that is no token; any
    other credential DLM cannot verify is still refused, and closed, ``None`` is no token either."""
    for header in ("Bearer None", "Bearer null"):
        response = await open_client.get("/request/query_data_item", headers={"Authorization": header})
        assert response.status_code == 200, (header, response.text)
    wrong = await open_client.get("/request/query_data_item", headers={"Authorization": "Bearer dlm_" + "0" * 64})
    assert_error(wrong, 401, "Unauthorized")
    closed = msgspec.structs.replace(settings, auth="required")
    async with AsyncTestClient(create_app(closed)) as client:
        refused = await client.get("/request/query_data_item", headers={"Authorization": "Bearer None"})
        assert_error(refused, 401, "Unauthorized", "needs a bearer token")


async def test_an_unknown_host_is_refused_but_probes_answer(open_client: AsyncTestClient) -> None:
    rebound = await open_client.get("/request/query_data_item", headers={"Host": "attacker.example:8000"})
    assert_error(rebound, 403, "Forbidden", "attacker.example", "DLM_ALLOWED_HOSTS")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        response = await open_client.get("/request/query_data_item", headers={"Host": host})
        assert response.status_code == 200, (host, response.text)
    probe = await open_client.get("/health/live", headers={"Host": "10.1.2.3:8000"})
    assert probe.status_code == 200, "orchestrators probe by IP"


async def test_allowed_hosts_take_names_suffixes_and_any(settings: Settings) -> None:
    configured = msgspec.structs.replace(settings, allowed_hosts="dlm.example.org,.svc.cluster.local")
    async with AsyncTestClient(create_app(configured), base_url="http://dlm.example.org") as client:
        assert (await client.get("/request/query_data_item")).status_code == 200
        inside = await client.get("/request/query_data_item", headers={"Host": "dlm.ska.svc.cluster.local"})
        assert inside.status_code == 200
        assert (await client.get("/request/query_data_item", headers={"Host": "localhost"})).status_code == 403
    anything = msgspec.structs.replace(settings, allowed_hosts="*")
    async with AsyncTestClient(create_app(anything), base_url="http://whatever.example") as client:
        assert (await client.get("/request/query_data_item")).status_code == 200


def _serve(database_url: str, tmp_path: Path, *arguments: str, **variables: str) -> subprocess.Popen[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(
        DLM_DATABASE_URL=database_url,
        DLM_DATA_DIR=str(tmp_path / "data"),
        DLM_PORT=str(free_port()),
        DLM_MIGRATION_WORKERS="0",
        **variables,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "dlm", "serve", *arguments],
        env=environment,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def test_open_on_a_public_address_is_refused_in_one_line(database_url: str, tmp_path: Path) -> None:
    process = _serve(database_url, tmp_path, "--host", "0.0.0.0")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    [line] = stderr.strip().splitlines()[-1:]
    assert line.startswith("dlm: error: refusing to serve on 0.0.0.0 with no authentication")
    assert "Traceback" not in stderr and "--insecure-no-auth" in line


async def test_insecure_no_auth_serves_open_on_purpose_and_loopback_warns(database_url: str, tmp_path: Path) -> None:
    server = Server(database_url, tmp_path / "loopback")
    try:
        await server.ready()
        assert "dlm: warning: no authentication" in server.log.read_text()
        async with httpx.AsyncClient(base_url=server.base) as client:
            assert (await client.get("/auth/whoami")).json()["via"] == "open"
    finally:
        server.stop()
    process = _serve(database_url, tmp_path, "--host", "0.0.0.0", "--insecure-no-auth")
    try:
        line = process.stderr.readline() if process.stderr else ""
        while line and "serving on" not in line:
            line = process.stderr.readline() if process.stderr else ""
        assert "DLM serving on http://0.0.0.0:" in line
    finally:
        process.terminate()
        process.wait(timeout=30)
