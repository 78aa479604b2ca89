"""SKA-DLM's own integration tests (ska-data-lifecycle's tests/integration/test_ska_data_lifecycle.py),
run unchanged against a live `dlm serve`: SKA's storages as its compose file configures them ("local",
POSIX; "dlm-archive", SFTP to a real sshd), only the environment adapted (tests/ska/harness). With SKA's
compatibility setting every test that does not skip itself passes; with DLM's defaults the ones that
expect SKA's unconditional deletion fail, as docs/ska-dlm-migration.md says."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import Server, SshServer, _asyncpg_dsn, dlm_environment
from tests.ska.test_ska_schema import PLACES

SKA_TESTS = Path("ska-data-lifecycle/tests/integration")
# Its service tests and its CLI's; not test_dlm_db_models.py, which tests SKA's SQLAlchemy classes on
# SKA's own DDL (docs/ska-dlm-migration.md says how far they go on DLM's).
SKA_TEST_FILES = ("test_ska_data_lifecycle.py", "test_cli.py")
HARNESS = Path(__file__).parent / "harness"
# What SKA's tests import beyond what DLM's test environment has (SKA's library needs them to load).
SKA_LIBRARY_NEEDS = ("fastapi", "typer", "python-benedict", "inflect", "overrides", "docstring-parser")
# The tests that need SKA's deletion (DLM_SKA_DELETION=unconditional): by default DLM keeps an item's
# last copy, and keeps a failed copy's replica row, DELETED, in its history (docs/ska-dlm-migration.md).
NEED_SKA_DELETION = {"test_delete_item_payload", "test_expired_by_storage_daemon", "test_copy_failed"}


def _ska_sources() -> Path:
    for place in PLACES:
        if (place / SKA_TESTS / "test_ska_data_lifecycle.py").is_file():
            return place / "ska-data-lifecycle"
    pytest.skip(f"SKA-DLM's sources ({SKA_TESTS}) are not on this machine: set DLM_SKA_REFERENCE to run its tests")


@pytest.fixture(scope="session")
def ska_library_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SKA's test dependencies, installed once per run beside (not into) DLM's environment."""
    target = tmp_path_factory.mktemp("ska-library")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target),
         *SKA_LIBRARY_NEEDS],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if installed.returncode != 0:
        pytest.skip(f"could not install SKA's test dependencies {SKA_LIBRARY_NEEDS}: {installed.stderr[-500:]}")
    return str(target)


def _storage_config(volume: Path, archive: Path, ssh: SshServer) -> list[dict[str, object]]:
    """SKA's tests/storage-config.json with its two file systems mounted here: "local" (rclone's own
    disk) below ``volume``, the archive host's (reached over SFTP) below ``archive``."""
    return [
        {"name": "local", "location": "local", "storage_type": "filesystem", "interface": "posix",
         "storage_phase": "SOLID", "root_directory": str(volume),
         "config": {"name": "local", "type": "alias", "parameters": {"remote": "/"}}},
        {"name": "dlm-archive", "location": "local", "storage_type": "filesystem", "interface": "posix",
         "storage_phase": "SOLID", "root_directory": str(archive),
         "config": {"name": "dlm-archive", "type": "sftp", "parameters": ssh.config()}},
    ]  # fmt: skip


def _run_ska_tests(database_url: str, tmp_path: Path, ssh: SshServer, library: str, **settings: str) -> dict[str, str]:
    """Start DLM as SKA's compose file would, run SKA's tests against it; each test's outcome."""
    sources = _ska_sources()
    volume, archive = tmp_path / "volume", tmp_path / "archive"
    (volume / "dlm").mkdir(parents=True)
    archive.mkdir()
    # SKA's compose file mounts one volume at /dlm on both hosts.
    (archive / "dlm").symlink_to(volume / "dlm")
    # SKA's test_copy_failed copies to /root on the archive host, which its SFTP user may not write:
    # here a file stands where that directory would be (the tests may run as root).
    (archive / "root").write_text("not a directory\n")
    (tmp_path / "storage-config.json").write_text(json.dumps(_storage_config(volume, archive, ssh)))
    (tmp_path / "location-config.json").write_text(
        json.dumps([{"name": "local", "type": "local-dev", "country": "AU", "city": "Perth", "facility": "local"}])
    )
    settings = {"storage_roots": f"{volume},{archive}", **settings}
    server = Server(
        database_url,
        tmp_path / "dlm",
        environ={
            "STORAGE_CONFIG": str(tmp_path / "storage-config.json"),
            "LOCATION_CONFIG": str(tmp_path / "location-config.json"),
        },
        **settings,
    )
    try:
        asyncio.run(server.ready())
        home = tmp_path / "home"
        home.mkdir()
        environment = {
            **{key: value for key, value in os.environ.items() if not key.startswith(("DLM_", "PYTEST_"))},
            "HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(HARNESS), library, str(sources / "src"), str(sources)]),
            "DLM_HARNESS_URL": server.base,
            # The storage daemon's pass runs as a DLM worker beside the server, configured as it is.
            "DLM_HARNESS_WORKER_ENVIRONMENT": json.dumps(dlm_environment(database_url, tmp_path / "dlm", **settings)),
            "DLM_HARNESS_ASYNCPG": json.dumps(_asyncpg_dsn(database_url)),
            "DLM_HARNESS_VOLUME": str(volume),
        }
        report = subprocess.run(
            [sys.executable, "-m", "pytest", "--noconftest", "-p", "dlm_ska_harness", "-p", "no:cacheprovider", "-p", "no:asyncio",
             "-c", os.devnull, "--rootdir", str(sources), "-q", "-n0", f"--junitxml={tmp_path / 'ska.xml'}",
             *(str(sources.parent / SKA_TESTS / name) for name in SKA_TEST_FILES)],
            cwd=sources, env=environment, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    finally:
        server.stop()
    print(report.stdout[-20000:], report.stderr[-5000:])  # SKA's own report, shown when a test here fails
    assert (tmp_path / "ska.xml").is_file(), "SKA's tests did not run"
    return {
        case.get("name", ""): next((child.tag for child in case if child.tag in OUTCOMES), "passed")
        for case in ElementTree.parse(tmp_path / "ska.xml").iter("testcase")
    }


OUTCOMES = ("failure", "error", "skipped")


async def test_skas_integration_tests_pass_with_skas_deletion(
    database_url: str, tmp_path: Path, ssh_server: SshServer, ska_library_path: str
) -> None:
    outcomes = await asyncio.to_thread(
        _run_ska_tests, database_url, tmp_path, ssh_server, ska_library_path, ska_deletion="unconditional"
    )
    ran = {name: outcome for name, outcome in outcomes.items() if outcome != "skipped"}
    assert len(ran) >= 14, outcomes
    assert {name for name, outcome in ran.items() if outcome != "passed"} == set(), outcomes


async def test_skas_integration_tests_with_dlms_defaults(
    database_url: str, tmp_path: Path, ssh_server: SshServer, ska_library_path: str
) -> None:
    outcomes = await asyncio.to_thread(_run_ska_tests, database_url, tmp_path, ssh_server, ska_library_path)
    failed = {name for name, outcome in outcomes.items() if outcome in ("failure", "error")}
    assert failed == NEED_SKA_DELETION, outcomes
