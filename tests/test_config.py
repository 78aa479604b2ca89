from pathlib import Path

import pytest

from dlm.config import InvalidSettings, Settings


def test_defaults_need_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.embedded and settings.port == 8000 and settings.host == "127.0.0.1"
    assert settings.pgdata_dir == Path(settings.data_dir) / "pgdata"


def test_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "dlm.toml"
    config.write_text('port = 9001\nlog_level = "DEBUG"\ndata_dir = "/srv/dlm"\n')
    settings = Settings.from_env(
        {"DLM_CONFIG": str(config), "DLM_PORT": "9002", "DLM_DATABASE_URL": "postgresql://x@y/z"}, host="0.0.0.0"
    )
    assert (settings.port, settings.log_level, settings.data_dir, settings.host) == (
        9002,
        "DEBUG",
        "/srv/dlm",
        "0.0.0.0",
    )
    assert not settings.embedded


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DLM_PORT": "http"}, "DLM_PORT"),
        ({"DLM_PORT": "0"}, "DLM_PORT"),
        ({"DLM_DB_POOL_SIZE": "-3"}, "DLM_DB_POOL_SIZE"),
        ({"DLM_CONFIG": "/nonexistent/dlm.toml"}, "DLM_CONFIG"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        Settings.from_env(environ)


def test_unknown_keys_in_the_config_file_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "dlm.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(InvalidSettings, match="prot"):
        Settings.from_env({"DLM_CONFIG": str(config)})


def test_skas_variable_names_are_read_when_dlms_are_not_set() -> None:
    ska = {
        "LOCATION_CONFIG": "/etc/location-config.json",
        "STORAGE_CONFIG": "/etc/storage-config.json",
        "SSH_PUBLIC_KEY_PATH": "/dlm/.ssh/id_rsa.pub",
    }
    settings = Settings.from_env(ska)
    assert (settings.location_config, settings.storage_config, settings.ssh_public_key_file) == (
        "/etc/location-config.json",
        "/etc/storage-config.json",
        "/dlm/.ssh/id_rsa.pub",
    )
    assert Settings.from_env({**ska, "DLM_STORAGE_CONFIG": "/etc/dlm.toml"}).storage_config == "/etc/dlm.toml"


def test_skas_database_variables_name_dlms_database_with_their_driver_suffix() -> None:
    url = "postgresql+asyncpg://ska_dlm_admin:password@dlm_db:5432/ska_dlm"
    for name in ("DATABASE_URL", "DLM_MIGRATION_DATABASE_URL", "DLM_OUTBOX_DATABASE_URL"):
        settings = Settings.from_env({name: url})
        assert settings.database_url == url and not settings.embedded, name
    assert Settings.from_env({"DATABASE_URL": url, "DLM_DATABASE_URL": "postgresql://x@y/z"}).database_url == (
        "postgresql://x@y/z"
    )
    with pytest.raises(InvalidSettings, match="DATABASE_URL, DLM_MIGRATION_DATABASE_URL differ.*DLM_DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": url, "DLM_MIGRATION_DATABASE_URL": "postgresql://other@host/db"})
