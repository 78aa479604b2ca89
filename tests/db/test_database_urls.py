"""DLM_DATABASE_URL as users copy it from their database provider: libpq's parameters work, and a
connection that cannot be made is one readable line."""

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dlm.app import create_app
from dlm.db.engine import create_engine, database_target
from tests.conftest import Registry, make_settings


def test_libpq_parameters_become_asyncpg_arguments() -> None:
    url, arguments = database_target(
        "postgres://dlm:pw@db.example.org:6432/dlm?sslmode=require&connect_timeout=7&application_name=dlm-api"
    )
    assert url == "postgresql+asyncpg://dlm:pw@db.example.org:6432/dlm"
    assert arguments == {"ssl": "require", "timeout": 7.0, "server_settings": {"application_name": "dlm-api"}}
    assert database_target("postgresql://h/db?target_session_attrs=read-write")[0].endswith(
        "target_session_attrs=read-write"
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sslmode=sometimes", "sslmode"),
        ("connect_timeout=soon", "connect_timeout"),
        ("keepalives=1", "keepalives"),
        ("sslmode=require&sslrootcert=/nonexistent/root.crt", "certificates"),
        ("sslmode=prefer&sslrootcert=/etc/ssl/certs/ca-certificates.crt", "require"),
    ],
)
def test_what_dlm_cannot_honour_is_said_not_ignored(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        database_target(f"postgresql://h/db?{query}")


def test_a_root_certificate_makes_a_verifying_context(tmp_path: Path) -> None:
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    if not Path(bundle).exists():
        pytest.skip("no CA bundle on this machine to stand in for a database provider's root certificate")
    _, arguments = database_target(f"postgresql://h/db?sslmode=verify-full&sslrootcert={bundle}")
    assert isinstance(arguments["ssl"], ssl.SSLContext) and arguments["ssl"].check_hostname
    _, arguments = database_target(f"postgresql://h/db?sslmode=verify-ca&sslrootcert={bundle}")
    assert arguments["ssl"].verify_mode is ssl.CERT_REQUIRED and not arguments["ssl"].check_hostname


async def test_a_real_connection_with_libpq_parameters(database_url: str) -> None:
    separator = "&" if "?" in database_url else "?"
    engine = create_engine(f"{database_url}{separator}sslmode=prefer&connect_timeout=5&application_name=dlm-test")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SHOW application_name")) == "dlm-test"
            assert await connection.scalar(text("SHOW timezone")) == "UTC"
    finally:
        await engine.dispose()


def test_a_refused_tls_connection_is_one_line(database_url: str, tmp_path: Path) -> None:
    if make_url(database_url).query.get("host"):
        pytest.skip("the embedded database listens on a Unix socket, where TLS does not apply")
    separator = "&" if "?" in database_url else "?"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(DLM_DATABASE_URL=f"{database_url}{separator}sslmode=require", DLM_DATA_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "dlm", "db", "current"], env=environment, capture_output=True, text=True, timeout=60
    )
    if result.returncode == 0:
        pytest.skip("this PostgreSQL speaks TLS, so sslmode=require connects")
    assert result.stderr.startswith("dlm: error:"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_several_hosts_as_libpq_writes_them() -> None:
    url, arguments = database_target(
        "postgresql://dlm:pw@db1.example.org:5432,db2.example.org:5433/dlm?target_session_attrs=read-write&sslmode=require"
    )
    parsed = make_url(url)
    assert parsed.query["host"] == ("db1.example.org:5432", "db2.example.org:5433")
    assert parsed.query["target_session_attrs"] == "read-write" and parsed.database == "dlm"
    assert (parsed.username, parsed.password, parsed.host) == ("dlm", "pw", None)
    assert arguments == {"ssl": "require"}
    assert make_url(database_target("postgresql://a,b/db")[0]).query["host"] == ("a", "b")


async def test_the_primary_is_found_among_several_hosts(database_url: str) -> None:
    # The first host answers nothing (a primary that went away); the second is the database, reached
    # as the test's URL reaches it: a TCP host, or a Unix socket's directory (the embedded PostgreSQL).
    real = make_url(database_url)
    reachable = f"{real.query.get('host') or real.host}:{real.port or 5432}"
    several = real.set(host=None, port=None, query={"host": ("127.0.0.1:1", reachable)})
    engine = create_engine(f"{several.render_as_string(hide_password=False)}&target_session_attrs=read-write")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT NOT pg_is_in_recovery()"))
    finally:
        await engine.dispose()


async def test_reads_go_to_the_read_url_and_writes_to_the_primary(database_url: str, tmp_path: Path) -> None:
    # A replica stands in as the same database under another application_name, so that
    # pg_stat_activity shows which connection served what.
    separator = "&" if "?" in database_url else "?"
    settings = make_settings(
        database_url, tmp_path, database_read_url=f"{database_url}{separator}application_name=dlm-read"
    )
    async with AsyncTestClient(create_app(settings)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        uid = await registry.register("obs", "obs")
        assert (await client.get("/request/query_data_item", params={"uid": uid})).json()[0]["uid"] == uid
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                names = set(
                    await connection.scalars(
                        text("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
                    )
                )
        finally:
            await engine.dispose()
        assert {"dlm-read", "dlm"} <= names
