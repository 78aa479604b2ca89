"""What `dlm serve` does before it serves: start the embedded database if no other is configured,
bring its schema up to date and seed a usable default storage, or check an external database's schema;
then create the locations and storages listed in DLM_LOCATION_CONFIG / DLM_STORAGE_CONFIG."""

import logging

import msgspec
from sqlalchemy import select

from dlm.config import Settings
from dlm.db import schema
from dlm.db.embedded import EmbeddedPostgres
from dlm.db.engine import create_engine, create_sessionmaker, transaction
from dlm.db.models import Location, Storage
from dlm.enums import LocationType, Phase, StorageInterface, StorageType
from dlm.storage import seed
from dlm.storage.service import init_location, init_storage

log = logging.getLogger("dlm.serve")

DEFAULT_LOCATION = "local"
DEFAULT_STORAGE = "local"


async def prepare(settings: Settings) -> tuple[Settings, EmbeddedPostgres | None]:
    """Settings with a reachable, up-to-date database, and the embedded server if one was started."""
    if settings.database_url is not None:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            await schema.check_schema(engine)
        finally:
            await engine.dispose()
        await seed_listed_storages(settings)
        return settings, None
    embedded = EmbeddedPostgres(settings.pgdata_dir)
    try:
        settings = msgspec.structs.replace(settings, database_url=embedded.database_url)
        await schema.upgrade(settings.database_url)
        await seed_default_storage(settings)
        await seed_listed_storages(settings)
    except BaseException:
        embedded.stop()
        raise
    return settings, embedded


async def seed_default_storage(settings: Settings) -> None:
    """A location and a POSIX storage under the data directory, created once."""
    assert settings.database_url is not None
    root = settings.default_storage_dir
    root.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with transaction(create_sessionmaker(engine), actor="dlm serve") as session:
            if (
                await session.scalar(select(Location.location_id).where(Location.location_name == DEFAULT_LOCATION))
                is None
            ):
                await init_location(session, location_name=DEFAULT_LOCATION, location_type=LocationType.LOCAL_DEV)
            if await session.scalar(select(Storage.storage_id).where(Storage.storage_name == DEFAULT_STORAGE)) is None:
                await init_storage(
                    session,
                    storage_name=DEFAULT_STORAGE,
                    storage_type=StorageType.FILESYSTEM,
                    storage_interface=StorageInterface.POSIX,
                    root_directory=str(root),
                    location_name=DEFAULT_LOCATION,
                    storage_phase=Phase.GAS,
                    storage_config={"type": "local"},
                )
    finally:
        await engine.dispose()


async def seed_listed_storages(settings: Settings) -> None:
    if not (settings.location_config or settings.storage_config):
        return
    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with transaction(create_sessionmaker(engine), actor="dlm serve") as session:
            for change in await seed.seed(
                session, location_file=settings.location_config, storage_file=settings.storage_config
            ):
                log.info("%s", change)
    finally:
        await engine.dispose()
