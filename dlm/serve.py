"""What `dlm serve` does before it serves: start the embedded database if no other is configured,
bring its schema up to date and seed a usable default storage, or check an external database's schema;
then create the locations and storages listed in DLM_LOCATION_CONFIG / DLM_STORAGE_CONFIG, keep
DLM_ADMIN_TOKEN as the admin token, and decide whether callers need a token."""

import logging
import os

import msgspec
from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dlm.auth.startup import decide_open, is_loopback, retire_admin_token, seed_admin_token
from dlm.config import SECRET_KEY_FILE, Settings
from dlm.db import schema
from dlm.db.embedded import EmbeddedPostgres
from dlm.db.engine import create_engine, create_sessionmaker, transaction
from dlm.db.models import Location, Storage, StorageConfig
from dlm.enums import LocationType, Phase, StorageInterface, StorageType
from dlm.errors import DLMError
from dlm.sites.service import find_site
from dlm.storage import seed
from dlm.storage.configs import Keyring, is_sealed
from dlm.storage.confinement import Confinement
from dlm.storage.context import session_info
from dlm.storage.service import init_location, init_storage, reseal_configs

log = logging.getLogger("dlm.serve")

DEFAULT_LOCATION = "local"
DEFAULT_STORAGE = "local"
ACTOR = "dlm serve"


class Refused(Exception):
    """`dlm serve` will not start as configured; the message says why and what to do."""


class Prepared(msgspec.Struct, frozen=True):
    settings: Settings
    embedded: EmbeddedPostgres | None
    # Whether callers without a token act as the anonymous admin.
    open: bool


async def prepare(settings: Settings) -> Prepared:
    """Settings with a reachable, up-to-date, seeded database, and the embedded server if one was started."""
    embedded = None
    settings = with_secret_key(settings)
    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.pgdata_dir)
        settings = msgspec.structs.replace(settings, database_url=embedded.database_url)
    try:
        assert settings.database_url is not None
        if embedded is not None:
            await schema.upgrade(settings.database_url, ska_schema=settings.ska_schema)
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            if embedded is None:
                await schema.check_schema(engine)
            sessionmaker = create_sessionmaker(engine, info=session_info(settings))
            async with transaction(sessionmaker, actor=ACTOR) as session:
                await check_secret_key(session, settings)
                if embedded is not None:
                    await seed_default_storage(session, settings)
                await seed_listed_storages(session, settings)
                if settings.worker_location and settings.migration_workers:
                    await find_site(session, settings.worker_location)  # a name that is no location stops here
                if await seed_admin_token(session, settings):
                    log.info("DLM_ADMIN_TOKEN is the admin token")
                elif settings.admin_token is None and await retire_admin_token(session):
                    log.warning("DLM_ADMIN_TOKEN is no longer set: the admin token it gave was revoked")
                if await reseal_configs(session, plain_only=True):
                    log.info("storage configs kept in plain text are now sealed with DLM_SECRET_KEY")
            is_open = await decide_open(settings, sessionmaker)
        finally:
            await engine.dispose()
        if is_open and settings.auth != "none" and not is_loopback(settings.host):
            raise Refused(
                f"refusing to serve on {settings.host} with no authentication: anyone reaching it would act as "
                "admin. Create a token (`dlm token create NAME --role admin`), configure an identity provider "
                "(DLM_AUTH_JWKS_URL), or pass --insecure-no-auth (DLM_AUTH=none) if you mean it"
            )
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    return Prepared(settings, embedded, is_open)


def with_secret_key(settings: Settings) -> Settings:
    """``settings`` with a key to seal storage secrets: DLM_SECRET_KEY, else the key file in the data
    directory, made (0600) on the first start that needs one. Said in one line: it must be backed up
    with the database, and given to every other DLM process of the deployment."""
    if settings.secret_key:
        return settings
    path = settings.secret_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another DLM on this data directory made it a moment ago
        return msgspec.structs.replace(settings, secret_key=path.read_text().strip())
    key = Fernet.generate_key().decode()
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    log.warning(
        "DLM_SECRET_KEY is not set: storage secrets are sealed with a new key kept in %s; back it up with the "
        "database (docs/operations.md#backup-and-restore) and give it to every DLM process as DLM_SECRET_KEY",
        path,
    )
    return msgspec.structs.replace(settings, secret_key=key)


async def check_secret_key(session: AsyncSession, settings: Settings) -> None:
    """Refuse to start with keys that cannot open the configs the database holds (a second DLM that made
    a key of its own, say): it could reach none of its storages."""
    ring = Keyring.from_text(settings.secret_key)
    for stored in await session.scalars(
        select(StorageConfig.config).order_by(StorageConfig.config_id.desc()).limit(50)
    ):
        if is_sealed(stored):
            try:
                ring.open(stored)
            except DLMError:
                raise Refused(
                    "the database's storage configs are sealed with a key this DLM does not have: set DLM_SECRET_KEY "
                    f"to the deployment's key (the first DLM keeps the one it made in {SECRET_KEY_FILE} in its data "
                    "directory)"
                ) from None
            return


async def seed_default_storage(session: AsyncSession, settings: Settings) -> None:
    """A location and a POSIX storage under the data directory, created once."""
    root = settings.default_storage_dir
    root.mkdir(parents=True, exist_ok=True)
    if await session.scalar(select(Location.location_id).where(Location.location_name == DEFAULT_LOCATION)) is None:
        await init_location(session, location_name=DEFAULT_LOCATION, location_type=LocationType.LOCAL_DEV)
    if await session.scalar(select(Storage.storage_id).where(Storage.storage_name == DEFAULT_STORAGE)) is None:
        await init_storage(
            session,
            confinement=Confinement.from_settings(settings),
            storage_name=DEFAULT_STORAGE,
            storage_type=StorageType.FILESYSTEM,
            storage_interface=StorageInterface.POSIX,
            root_directory=str(root),
            location_name=DEFAULT_LOCATION,
            storage_phase=Phase.GAS,
            storage_config={"type": "local"},
            check=False,
        )


async def seed_listed_storages(session: AsyncSession, settings: Settings) -> None:
    if not (settings.location_config or settings.storage_config):
        return
    for change in await seed.seed(
        session,
        location_file=settings.location_config,
        storage_file=settings.storage_config,
        confinement=seed.storage_confinement(settings),
    ):
        log.info("%s", change)
