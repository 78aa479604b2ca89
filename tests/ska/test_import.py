"""`dlm db import-ska` against a database laid out as SKA-DLM's (its schema `dlm`, written here from the
facts of its published DDL): everything that fits comes over with its ids, what does not is reported,
and a second run imports nothing twice."""

import datetime
import json
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from tests.conftest import scratch_database

SKA_SCHEMA = """
CREATE SCHEMA dlm;
SET search_path TO dlm;
CREATE TYPE location_type AS ENUM ('local-dev', 'low-integration', 'mid-integration', 'low-operations', 'mid-operations');
CREATE TYPE location_country AS ENUM ('AU', 'ZA', 'UK');
CREATE TYPE config_type AS ENUM ('rclone', 'ssh', 'aws', 'gcs');
CREATE TYPE storage_type AS ENUM ('filesystem', 'objectstore', 'tape');
CREATE TYPE storage_interface AS ENUM ('posix', 's3', 'sftp', 'https');
CREATE TYPE phase_type AS ENUM ('GAS', 'LIQUID', 'SOLID', 'PLASMA');
CREATE TYPE item_state AS ENUM ('INITIALISED', 'READY', 'CORRUPTED', 'EXPIRED', 'DELETED');
CREATE TYPE checksum_method AS ENUM ('none', 'adler32', 'blake2b', 'crc32', 'crc32c', 'md5', 'sha1', 'sha256', 'xxh3');
CREATE TYPE mime_type AS ENUM ('application/octet-stream', 'application/json', 'application/fits', 'text/plain');
CREATE TABLE location_facility (id text PRIMARY KEY);
CREATE TABLE location (
    location_id uuid DEFAULT gen_random_uuid() PRIMARY KEY, location_name varchar NOT NULL UNIQUE,
    location_type location_type NOT NULL, location_country location_country, location_city varchar,
    location_facility text REFERENCES location_facility(id), location_check_url varchar,
    location_last_check timestamp, location_date timestamp DEFAULT now());
CREATE TABLE storage (
    storage_id uuid DEFAULT gen_random_uuid() PRIMARY KEY, location_id uuid NOT NULL REFERENCES location(location_id),
    storage_name varchar NOT NULL UNIQUE, root_directory varchar, storage_type storage_type NOT NULL,
    storage_interface storage_interface NOT NULL, storage_phase phase_type DEFAULT 'GAS',
    storage_capacity bigint DEFAULT -1, storage_use_pct numeric(3,1) DEFAULT 0.0, storage_permissions varchar DEFAULT 'RW',
    storage_checked boolean DEFAULT false, storage_check_url varchar, storage_last_checked timestamp,
    storage_num_objects bigint DEFAULT 0, storage_available boolean DEFAULT true, storage_retired boolean DEFAULT false,
    storage_retire_date timestamp, storage_date timestamp DEFAULT now());
CREATE TABLE storage_config (
    config_id uuid DEFAULT gen_random_uuid() PRIMARY KEY, storage_id uuid NOT NULL REFERENCES storage(storage_id),
    config_type config_type DEFAULT 'rclone', config json NOT NULL, config_date timestamp DEFAULT now());
CREATE TABLE data_item (
    uid uuid DEFAULT gen_random_uuid() PRIMARY KEY, oid uuid, item_version integer DEFAULT 1, item_name varchar,
    item_tags json, storage_id uuid REFERENCES storage(storage_id), uri varchar DEFAULT 'inline://item_value',
    item_value text DEFAULT '', item_type varchar DEFAULT 'file', item_format varchar DEFAULT 'unknown',
    item_encoding varchar DEFAULT 'unknown', item_mime_type mime_type DEFAULT 'application/octet-stream',
    item_level smallint DEFAULT -1, uid_phase phase_type DEFAULT 'GAS', oid_phase phase_type DEFAULT 'GAS',
    item_state item_state DEFAULT 'INITIALISED', target_phase phase_type DEFAULT 'SOLID',
    uid_creation timestamp DEFAULT now(), oid_creation timestamp,
    uid_expiration timestamp DEFAULT now() + time '24:00', oid_expiration timestamp DEFAULT '2099-12-31 23:59:59',
    uid_deletion timestamp, oid_deletion timestamp, expired boolean DEFAULT false, deleted boolean DEFAULT false,
    last_access timestamp, item_checksum varchar, checksum_method checksum_method DEFAULT 'none', last_check timestamp,
    item_owner varchar DEFAULT 'SKA', item_group varchar DEFAULT 'SKA', acl json, activate_method varchar,
    item_size integer, decompressed_size integer, compression_method varchar, parents uuid, children uuid,
    metadata jsonb);
CREATE TABLE phase_change (
    phase_change_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, oid uuid NOT NULL,
    requested_phase phase_type DEFAULT 'GAS', request_creation timestamp DEFAULT now());
CREATE TABLE migration (
    migration_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id bigint NOT NULL, oid uuid NOT NULL,
    url varchar NOT NULL, source_storage_id uuid NOT NULL REFERENCES storage(storage_id),
    destination_storage_id uuid NOT NULL REFERENCES storage(storage_id), "user" varchar DEFAULT 'SKA',
    "group" varchar DEFAULT 'SKA', job_status jsonb, job_stats jsonb, complete boolean DEFAULT false,
    "date" timestamp DEFAULT now(), completion_date timestamp, command varchar);
CREATE TABLE outbox (
    outbox_id uuid DEFAULT gen_random_uuid() PRIMARY KEY, event_type varchar NOT NULL, payload jsonb NOT NULL,
    destination varchar, routing_key varchar, status varchar NOT NULL DEFAULT 'PENDING', attempts integer DEFAULT 0,
    created_at timestamp DEFAULT now(), last_attempt timestamp, sent_at timestamp);
"""

SITE, ARCHIVE_SITE = uuid.uuid4(), uuid.uuid4()
LOCAL, ARCHIVE, TAKEN = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
VIS, VIS_COPY, BOX, MEMBER, DRAFT, TWIN, ODD = (uuid.uuid4() for _ in range(7))


async def fill(source: asyncpg.Connection, data: Path) -> None:
    """An SKA-DLM deployment's state: its chart's two storages, a file copied to the archive, a
    directory product, a draft, and what DLM cannot take as it is."""
    await source.execute("INSERT INTO dlm.location_facility VALUES ('local'), ('Pawsey Centre')")
    await source.executemany(
        "INSERT INTO dlm.location (location_id, location_name, location_type, location_country, location_city,"
        " location_facility) VALUES ($1, $2, $3, 'AU', 'Perth', $4)",
        [(SITE, "local", "local-dev", "local"), (ARCHIVE_SITE, "pawsey", "low-operations", "Pawsey Centre")],
    )
    await source.executemany(
        "INSERT INTO dlm.storage (storage_id, location_id, storage_name, root_directory, storage_type,"
        " storage_interface, storage_phase) VALUES ($1, $2, $3, $4, 'filesystem', 'posix', $5)",
        [
            (LOCAL, SITE, "local", "/", "GAS"),
            (ARCHIVE, ARCHIVE_SITE, "dlm-archive", "/", "SOLID"),
            (TAKEN, SITE, "disk", "/elsewhere", "GAS"),
        ],
    )
    await source.executemany(
        "INSERT INTO dlm.storage_config (storage_id, config) VALUES ($1, $2)",
        [
            (LOCAL, json.dumps({"name": "local", "type": "alias", "parameters": {"remote": str(data)}})),
            (
                ARCHIVE,
                json.dumps(
                    {
                        "name": "dlm-archive",
                        "type": "sftp",
                        "parameters": {
                            "host": "ska-dlm-archive",
                            "port": 22,
                            "user": "root",
                            "key_file": "/root/.ssh/id_rsa",
                        },
                    }
                ),
            ),
        ],
    )
    items = [
        # uid, oid, name, storage, uri, type, state, uid_phase, version, size, checksum method, parents
        (VIS, VIS, "eb-1/vis.dat", LOCAL, "/eb-1/vis.dat", "file", "READY", "GAS", 2, 12, "crc32c", None),
        (VIS_COPY, VIS, "eb-1/vis.dat", ARCHIVE, "/eb-1/vis.dat", "file", "READY", "SOLID", 2, 12, "crc32c", None),
        (BOX, BOX, "eb-1/box", LOCAL, "/eb-1/box", "container", "READY", "GAS", 1, None, "none", None),
        (MEMBER, MEMBER, "eb-1/box/a", LOCAL, "/eb-1/box/a", "file", "READY", "GAS", 1, 1, "none", BOX),
        (DRAFT, DRAFT, "draft", None, "inline://item_value", "file", "INITIALISED", "GAS", 1, None, "none", None),
        # The same payload as VIS under another name: SKA-DLM allowed it, DLM does not.
        (TWIN, TWIN, "twin", LOCAL, "eb-1/vis.dat", "file", "READY", "GAS", 1, 12, "none", None),
        (ODD, ODD, "odd", LOCAL, "/odd", "measurementset", "EXPIRED", "GAS", 1, 5, "sha1", None),
    ]
    await source.executemany(
        "INSERT INTO dlm.data_item (uid, oid, item_name, storage_id, uri, item_type, item_state, uid_phase,"
        " item_version, item_size, checksum_method, item_checksum, parents, metadata, uid_expiration)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'abc123', $12, $13, '2030-01-01 00:00:00')",
        [(*row, json.dumps({"execution_block": "eb-1", "uid": str(row[0])})) for row in items],
    )
    # The twin came after: the payload stays the original's.
    await source.execute(
        "UPDATE dlm.data_item SET uid_creation = uid_creation + interval '1 hour' WHERE uid = $1", TWIN
    )
    # SKA-DLM's owners are its identity provider's user names.
    await source.execute("UPDATE dlm.data_item SET item_owner = 'alice' WHERE uid = $1", VIS)
    # SKA-DLM's copies are numbered as SKA-DLM numbered them, not from 1.
    await source.execute("ALTER TABLE dlm.migration ALTER COLUMN migration_id RESTART WITH 101")
    await source.executemany(
        "INSERT INTO dlm.migration (job_id, oid, url, source_storage_id, destination_storage_id, job_status,"
        " job_stats, complete, completion_date) VALUES ($1, $2, 'http://rclone:5572', $3, $4, $5, $6, $7, $8)",
        [
            (
                11,
                VIS,
                LOCAL,
                ARCHIVE,
                json.dumps({"finished": True, "success": True, "error": ""}),
                json.dumps({"bytes": 12}),
                True,
                datetime.datetime(2026, 1, 1),
            ),
            (
                12,
                BOX,
                LOCAL,
                ARCHIVE,
                json.dumps({"finished": False, "success": False, "error": ""}),
                None,
                False,
                None,
            ),
        ],
    )
    await source.execute("INSERT INTO dlm.phase_change (oid, requested_phase) VALUES ($1, 'SOLID')", BOX)
    await source.execute("INSERT INTO dlm.outbox (event_type, payload) VALUES ('dlm.migration.update', '{}')")


def import_ska(settings: Settings, source_url: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dlm", "db", "import-ska", "--source", source_url, *options],
        env={
            "DLM_DATABASE_URL": settings.database_url or "",
            "DLM_DATA_DIR": settings.data_dir,
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_an_ska_dlm_database_imports_once_keeping_ids_and_reporting_the_rest(
    postgres_url: str, settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "data"  # inside the test's storage roots
    data.mkdir()
    async with scratch_database(postgres_url, "ska") as source_url:
        source = await asyncpg.connect(source_url)
        try:
            await source.execute(SKA_SCHEMA)
            await fill(source, data)
        finally:
            await source.close()
        async with AsyncTestClient(create_app(settings)) as client:
            # DLM already has a storage named "disk", elsewhere: SKA-DLM's must not merge into it.
            await client.post(
                "/storage/init_location", params={"location_name": "dlm-site", "location_type": "local-dev"}
            )
            (tmp_path / "disk").mkdir()
            await client.post(
                "/storage/init_storage",
                params={
                    "storage_name": "disk",
                    "storage_type": "filesystem",
                    "storage_interface": "posix",
                    "root_directory": str(tmp_path / "disk"),
                    "location_name": "dlm-site",
                },
            )
            first = import_ska(settings, source_url)
            assert first.returncode == 0, first.stderr
            report = first.stdout
            assert "location: 2 imported" in report and "storage: 2 imported" in report, report
            assert "storage_config: 2 imported" in report and "data_item: 6 imported" in report, report
            assert "migration: 2 imported" in report, report
            assert f"name or payload is already another live replica's on its storage: {TWIN}" in report, report
            assert "item_type DLM does not know: imported as unknown" in report, report
            assert "kept in metadata.ska_checksum" in report and "phase-change request" in report, report

            items = {
                row["uid"]: row
                for row in (await client.get("/request/query_data_item", params={"item_name": "eb-1/vis.dat"})).json()
            }
            assert set(items) == {str(VIS), str(VIS_COPY)}
            vis = items[str(VIS)]
            assert (vis["oid"], vis["item_version"], vis["item_state"], vis["uri"]) == (
                str(VIS),
                2,
                "READY",
                "/eb-1/vis.dat",
            )
            assert vis["metadata"] == {"execution_block": "eb-1", "uid": str(VIS)}
            assert vis["item_owner"] == "oidc:alice"
            assert vis["uid_expiration"].startswith("2030-01-01T00:00:00")
            [member] = (await client.get("/request/query_data_item", params={"uid": str(MEMBER)})).json()
            assert member["parents"] == str(BOX)
            [odd] = (await client.get("/request/query_data_item", params={"uid": str(ODD)})).json()
            assert (odd["item_type"], odd["item_state"], odd["metadata"]["ska_checksum"]) == (
                "unknown",
                "EXPIRED",
                {"method": "sha1", "value": "abc123"},
            )

            migrations = (await client.get("/migration/query_migrations")).json()
            by_job = {row["job_id"]: row for row in migrations}
            assert (by_job[11]["status"], by_job[11]["complete"], by_job[11]["destination_uid"]) == (
                "SUCCEEDED",
                True,
                str(VIS_COPY),
            )
            assert by_job[12]["status"] == "FAILED" and "retry" in by_job[12]["last_error"]
            assert (by_job[11]["migration_id"], by_job[12]["migration_id"]) == (101, 102), "SKA-DLM's ids kept"
            assert by_job[11]["job_status"] == {"finished": True, "success": True, "error": ""}, "an object"
            assert by_job[12]["job_status"]["finished"] is True
            queued = await client.post(
                "/migration/copy_data_item",
                params={"uid": str(VIS), "destination_name": "disk", "path": "later.dat"},
            )
            assert queued.status_code == 200, queued.text
            assert queued.json()["migration_id"] > 102, "DLM's own copies are numbered after SKA-DLM's"
            [archive] = (await client.get("/storage/get_storage_config", params={"storage_name": "dlm-archive"})).json()
            assert archive["type"] == "sftp" and archive["parameters"]["host"] == "ska-dlm-archive"

            # The registered file is where SKA-DLM's alias says: DLM can read it.
            (data / "eb-1").mkdir()
            (data / "eb-1" / "new.dat").write_bytes(b"new")
            registered = await client.post(
                "/ingest/register_data_item",
                params={"item_name": "eb-1/new.dat", "uri": "/eb-1/new.dat", "storage_name": "local"},
            )
            assert registered.status_code == 200, registered.text

            second = import_ska(settings, source_url)
            assert second.returncode == 0, second.stderr
            assert "data_item: 0 imported, 6 already in DLM" in second.stdout, second.stdout
            assert "migration: 0 imported, 2 already in DLM" in second.stdout, second.stdout


async def test_a_source_that_is_not_ska_dlm_is_refused_in_one_line(postgres_url: str, settings: Settings) -> None:
    async with scratch_database(postgres_url, "empty") as source_url:
        result = import_ska(settings, source_url)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("dlm: error:") and "no SKA-DLM tables in schema 'dlm'" in line


async def test_a_second_import_brings_over_what_changed_in_ska_dlm_and_reports_what_changed_on_both_sides(
    postgres_url: str, settings: Settings, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    async with scratch_database(postgres_url, "ska") as source_url:
        source = await asyncpg.connect(source_url)
        try:
            await source.execute(SKA_SCHEMA)
            await fill(source, data)
            first = import_ska(settings, source_url)
            assert first.returncode == 0, first.stderr
            # After the rehearsal, SKA-DLM keeps working: tags on one item, on another too...
            await source.execute('UPDATE dlm.data_item SET item_tags = \'{"quality": "good"}\' WHERE uid = $1', VIS)
            await source.execute('UPDATE dlm.data_item SET item_tags = \'{"from": "ska"}\' WHERE uid = $1', MEMBER)
            async with AsyncTestClient(create_app(settings)) as client:
                # ...which DLM's users changed meanwhile as well.
                [member] = (await client.get("/request/query_data_item", params={"uid": str(MEMBER)})).json()
                tagged = await client.patch(
                    "/request/update_item_tags", params={"oid": member["oid"]}, json={"from": "dlm"}
                )
                assert tagged.status_code == 200, tagged.text

                rehearsal = import_ska(settings, source_url, "--dry-run")
                assert rehearsal.returncode == 0, rehearsal.stderr
                assert f"data_item: 1 would be updated from SKA-DLM (changed there since the last import): {VIS}" in (
                    rehearsal.stdout
                ), rehearsal.stdout
                assert "dry run: nothing was written" in rehearsal.stdout
                [vis] = (await client.get("/request/query_data_item", params={"uid": str(VIS)})).json()
                assert vis["item_tags"] is None, "a dry run writes nothing"

                cut_over = import_ska(settings, source_url)
                assert cut_over.returncode == 0, cut_over.stderr
                assert f"data_item: 1 updated from SKA-DLM (changed there since the last import): {VIS}" in (
                    cut_over.stdout
                ), cut_over.stdout
                assert f"1 × changed in SKA-DLM and in DLM since the last import: left as DLM has it: {MEMBER}" in (
                    cut_over.stdout
                ), cut_over.stdout
                [vis] = (await client.get("/request/query_data_item", params={"uid": str(VIS)})).json()
                assert vis["item_tags"] == {"quality": "good"}
                [member] = (await client.get("/request/query_data_item", params={"uid": str(MEMBER)})).json()
                assert member["item_tags"] == {"from": "dlm"}

                again = import_ska(settings, source_url)
                assert "updated from SKA-DLM" not in again.stdout, "nothing changed since"
        finally:
            await source.close()
