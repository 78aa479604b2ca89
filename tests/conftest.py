"""Test fixtures: a real PostgreSQL (DLM_TEST_DATABASE_URL, else testcontainers, else embedded), a fresh
database per test cloned from a template built by `alembic upgrade head`, and a DLM app client."""

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from dlm.app import create_app
from dlm.config import Settings
from dlm.db import schema
from dlm.db.engine import create_engine, create_sessionmaker


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@pytest.fixture(scope="session", autouse=True)
def _no_home_of_the_readers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A `dlm` started by a test without DLM_DATA_DIR would use the reader's own data directory (and
    leave a database or a key there): every process of the run gets a data home of its own."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if previous is None:
        del os.environ["XDG_DATA_HOME"]
    else:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server we may create databases on, as an admin URL."""
    if url := os.environ.get("DLM_TEST_DATABASE_URL"):
        yield url
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
    else:
        from dlm.db.embedded import EmbeddedPostgres

        with tempfile.TemporaryDirectory(prefix="dlm-test-pg-") as directory:
            os.chmod(directory, 0o755)
            server = EmbeddedPostgres(Path(directory) / "pgdata")
            try:
                yield server.database_url
            finally:
                server.stop()


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    return {
        "user": parsed.username,
        "password": parsed.password,
        "host": parsed.query.get("host") or parsed.host,
        "port": parsed.port,
        "database": parsed.database,
    }


@contextlib.asynccontextmanager
async def admin_connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**_asyncpg_dsn(url))
    try:
        yield connection
    finally:
        await connection.close()


def owner_prefix(postgres_url: str) -> str:
    return (make_url(postgres_url).database or "dlm")[:24]


@contextlib.asynccontextmanager
async def scratch_database(postgres_url: str, prefix: str, *, template: str | None = None) -> AsyncIterator[str]:
    """A database of our own (a copy of ``template``, or empty) for as long as the block runs. Its name
    starts with the database name of ``postgres_url`` (DLM_TEST_DATABASE_URL's), so that the suite can
    share a server with others and a DBA can tell (and drop) what it left behind."""
    name = f"{owner_prefix(postgres_url)}_{prefix}_{uuid.uuid4().hex[:12]}"
    clone = f' TEMPLATE "{template}"' if template else ""
    async with admin_connection(postgres_url) as connection:
        await connection.execute(f'CREATE DATABASE "{name}"{clone}')
    try:
        yield _with_database(postgres_url, name)
    finally:
        async with admin_connection(postgres_url) as connection:
            await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def template_database(postgres_url: str) -> AsyncIterator[str]:
    """A database migrated with `alembic upgrade head`; each test gets a copy of it."""
    async with scratch_database(postgres_url, f"dlm_template_{os.getpid()}") as url:
        await schema.upgrade(url)
        yield make_url(url).database


@pytest.fixture
async def database_url(postgres_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh database of our own, at the head revision."""
    async with scratch_database(postgres_url, "dlm_test", template=template_database) as url:
        yield url


@pytest.fixture
async def empty_database_url(postgres_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    async with scratch_database(postgres_url, "dlm_empty") as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return create_sessionmaker(engine)


# The lifecycle engines act on their own schedule; tests that are not about them must not meet them.
QUIET_ENGINES = {
    "expiry_interval_seconds": 0,
    "replication_interval_seconds": 0,
    "audit_interval_seconds": 0,
    "capacity_interval_seconds": 0,
}


TEST_HOSTS = "testserver.local,localhost,127.0.0.1"


def make_settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for an app under test: storages anywhere under the test's own directory, the host
    name Litestar's test client uses, the engines quiet."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": str(tmp_path / "data"),
        "storage_roots": str(tmp_path),
        "allowed_hosts": TEST_HOSTS,
        **QUIET_ENGINES,
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


class Registry:
    """Helpers that set up locations, storages and payloads through the public API."""

    def __init__(self, client: AsyncTestClient, root: Path) -> None:
        self.client = client
        self.root = root

    async def location(self, name: str = "site") -> str:
        response = await self.client.post(
            "/storage/init_location", params={"location_name": name, "location_type": "local-dev"}
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def _ensure_location(self, name: str) -> None:
        existing = await self.client.get("/storage/query_location", params={"location_name": name})
        if not existing.json():
            await self.location(name)

    async def storage(
        self,
        name: str = "disk",
        *,
        phase: str = "GAS",
        root: Path | None = None,
        location: str = "site",
        config: dict[str, Any] | None = None,
        **params: Any,
    ) -> str:
        """A POSIX storage; with an sftp ``config``, one on another host (the SSH server's)."""
        root = root or self.root
        root.mkdir(parents=True, exist_ok=True)
        await self._ensure_location(location)
        response = await self.client.post(
            "/storage/init_storage",
            params={
                "storage_name": name,
                "storage_type": "filesystem",
                "storage_interface": "posix",
                "root_directory": str(root),
                "location_name": location,
                "storage_phase": phase,
                **params,
            },
            json=config,
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def s3_storage(
        self, name: str, bucket: str, config: dict[str, Any], *, phase: str = "SOLID", check: bool = True
    ) -> str:
        await self._ensure_location("site")
        response = await self.client.post(
            "/storage/init_storage",
            params={
                "storage_name": name,
                "storage_type": "objectstore",
                "storage_interface": "s3",
                "root_directory": bucket,
                "location_name": "site",
                "storage_phase": phase,
                **({} if check else {"check": "false"}),
            },
            json=config,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def payload(self, uri: str, content: bytes = b"payload\n", root: Path | None = None) -> Path:
        path = (root or self.root) / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    async def register(
        self,
        name: str,
        uri: str | None = None,
        *,
        storage: str = "disk",
        metadata: dict[str, Any] | None = None,
        **params: Any,
    ) -> str:
        uri = uri or name
        if not (self.root / uri).exists() and params.get("do_storage_access_check", True):
            self.payload(uri)
        response = await self.client.post(
            "/ingest/register_data_item",
            params={"item_name": name, "uri": uri, "storage_name": storage, **params},
            json=metadata,
        )
        assert response.status_code == 200, response.text
        return response.json()

    async def replica(self, of_uid: str, storage: str, root: Path, uri: str, content: bytes = b"payload\n") -> str:
        """A further READY replica of ``of_uid``'s item on ``storage``, made the classic way
        (init_data_item with the oid, set_uri, set_state READY)."""
        oid = (await self.item(of_uid))["oid"]
        uid = (await self.client.post("/ingest/init_data_item", json={"oid": oid})).json()
        self.payload(uri, content, root=root)
        found = await self.client.get("/storage/query_storage", params={"storage_name": storage})
        storage_id = found.json()[0]["storage_id"]
        response = await self.client.patch(
            "/request/set_uri", params={"uid": uid, "uri": uri, "storage_id": storage_id}
        )
        assert response.status_code == 200, response.text
        response = await self.client.patch("/request/set_state", params={"uid": uid, "state": "READY"})
        assert response.status_code == 200, response.text
        return uid

    async def item(self, uid: str) -> dict[str, Any]:
        response = await self.client.get("/request/query_data_item", params={"uid": uid})
        assert response.status_code == 200, response.text
        [row] = response.json()
        return row


@pytest.fixture
async def registry(client: AsyncTestClient, storage_root: Path) -> Registry:
    registry = Registry(client, storage_root)
    await registry.storage()
    return registry


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on loopback: moto's server, in its own process (in-thread it is far slower)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


S3_CREDENTIALS = {"access_key_id": "dlm-test", "secret_access_key": "dlm-test-secret", "region": "us-east-1"}


@pytest.fixture
def s3_config(s3_endpoint: str) -> dict[str, Any]:
    """An rclone-style config for the test endpoint."""
    return {"type": "s3", "provider": "Other", "endpoint": s3_endpoint, **S3_CREDENTIALS}


@pytest.fixture
async def s3_bucket(s3_config: dict[str, Any]) -> str:
    """A fresh, empty bucket for this test."""
    return await new_bucket(s3_config)


async def new_bucket(s3_config: dict[str, Any], name: str = "") -> str:
    import aioboto3

    name = name or f"dlm-{uuid.uuid4().hex[:16]}"
    async with aioboto3.Session().client(
        "s3",
        endpoint_url=s3_config["endpoint"],
        aws_access_key_id=s3_config["access_key_id"],
        aws_secret_access_key=s3_config["secret_access_key"],
        region_name="us-east-1",
    ) as s3:
        await s3.create_bucket(Bucket=name)
    return name


def dlm_environment(database_url: str, data_dir: Path, **settings: Any) -> dict[str, str]:
    """The environment of a `dlm` process under test: this one's, without its DLM_* variables, plus the
    test database, the engines quiet, storages anywhere in the test's own directory (as make_settings
    allows), and ``settings`` as DLM_* variables."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DLM_")}
    environment.update(
        DLM_DATABASE_URL=database_url,
        DLM_DATA_DIR=str(data_dir),
        DLM_MIGRATION_POLL_SECONDS="0.2",
        DLM_STORAGE_ROOTS=str(data_dir.parent),
        **{f"DLM_{key.upper()}": str(value) for key, value in QUIET_ENGINES.items()},
    )
    environment.update({f"DLM_{key.upper()}": str(value) for key, value in settings.items()})
    return environment


class Server:
    """A `dlm serve` process against a test database; ``settings`` become DLM_* variables, ``environ``
    is added as it is (SKA's variable names, HOME)."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        *,
        environ: dict[str, str] | None = None,
        arguments: tuple[str, ...] = (),
        cwd: Path | None = None,
        **settings: Any,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        environment = dlm_environment(database_url, data_dir, port=self.port, **settings)
        environment.update(environ or {})
        self.log = data_dir / f"serve-{self.port}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dlm", "serve", *arguments], env=environment, stderr=log, cwd=cwd
            )

    async def ready(self) -> "Server":
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=self.base) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    if (await client.get("/health/ready", timeout=2)).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        self.kill()
        raise AssertionError(f"dlm serve did not become ready: {self.log.read_text()}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def assert_error(response: Any, status: int, name: str, *fragments: str) -> None:
    """The response is DLM's JSON error with this status and name, mentioning each fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"exec", "message"}, body
    assert body["exec"] == name, body
    for fragment in fragments:
        assert fragment in body["message"], body


async def in_two_processes(database_url: str, run_once: Any) -> list[Any]:
    """Run ``run_once(sessionmaker)`` twice at once, each with its own engine, as two DLM processes would."""
    engines = [create_engine(database_url, pool_size=2) for _ in range(2)]
    try:
        return await asyncio.gather(*(run_once(create_sessionmaker(engine)) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()


async def gather(*coroutines: Any) -> list[Any]:
    return await asyncio.gather(*coroutines)


class SshServer(msgspec.Struct, frozen=True):
    """OpenSSH's sshd on loopback, and what a client needs to reach it as ``user``."""

    host: str
    port: int
    user: str
    key_file: str
    known_hosts_file: str
    public_key: str

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An rclone ``sftp`` remote for this server."""
        return {
            "type": "sftp",
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts_file": self.known_hosts_file,
            **overrides,
        }


def _sshd_binary() -> str | None:
    found = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    return found


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real SSH server (the distribution's OpenSSH sshd) on a loopback port, accepting one key for
    the user running the tests. `.ci/run` installs it; without it the SFTP tests skip, saying why."""
    sshd = _sshd_binary()
    if sshd is None:
        pytest.skip("SFTP tests need OpenSSH's sshd (apt-get install openssh-server); it is not installed")
    directory = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "client_key")], check=True)
    (directory / "authorized_keys").write_text((directory / "client_key.pub").read_text())
    port = free_port()
    user = pwd.getpwuid(os.getuid()).pw_name
    (directory / "sshd_config").write_text(
        textwrap.dedent(f"""\
            ListenAddress 127.0.0.1:{port}
            HostKey {directory}/host_key
            PidFile {directory}/sshd.pid
            AuthorizedKeysFile {directory}/authorized_keys
            AllowUsers {user}
            PermitRootLogin prohibit-password
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            UsePAM no
            StrictModes no
            Subsystem sftp internal-sftp
            LogLevel ERROR
            MaxSessions 100
            MaxStartups 100
            """)
    )
    host_public = (directory / "host_key.pub").read_text().split()
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    if os.getuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(directory / "sshd_config")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
            if probe.recv(4).startswith(b"SSH-"):
                break
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"sshd did not start: {server.stderr.read().decode() if server.stderr else ''}")
        time.sleep(0.1)
    try:
        yield SshServer(
            host="127.0.0.1",
            port=port,
            user=user,
            key_file=str(directory / "client_key"),
            known_hosts_file=str(directory / "known_hosts"),
            public_key=(directory / "client_key.pub").read_text().strip(),
        )
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real RabbitMQ: DLM_TEST_AMQP_URL, else the one on 127.0.0.1:5672, else one the distribution's
    rabbitmq-server starts here. Without any, the AMQP tests skip, saying why."""
    url = os.environ.get("DLM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    if _amqp_answers(url):
        yield url
        return
    server_binary = shutil.which("rabbitmq-server") or "/usr/sbin/rabbitmq-server"
    if not os.path.exists(server_binary):
        pytest.skip(
            "RabbitMQ tests need a broker (apt-get install rabbitmq-server); none answers and none is installed"
        )
    directory = tmp_path_factory.mktemp("rabbitmq")
    port = free_port()
    environment = {
        **os.environ,
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_NODENAME": f"dlm-test-{port}@localhost",
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
    }
    (directory / "enabled_plugins").write_text("[].\n")
    broker = subprocess.Popen([server_binary], env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while not _amqp_answers(url):
        if broker.poll() is not None or time.monotonic() > deadline:
            broker.kill()
            pytest.skip(f"rabbitmq-server did not start (logs in {directory / 'log'})")
        time.sleep(0.5)
    try:
        yield url
    finally:
        broker.terminate()
        broker.wait(timeout=30)


def _amqp_answers(url: str) -> bool:
    async def connect() -> bool:
        import aio_pika

        try:
            connection = await aio_pika.connect(url, timeout=3)
        except Exception:
            return False
        await connection.close()
        return True

    return asyncio.run(connect())
