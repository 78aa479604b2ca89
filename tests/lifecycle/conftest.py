"""Lifecycle engines are driven by the tests, pass by pass, with time passed in: no loops in the app."""

from pathlib import Path

import pytest

from dlm.config import Settings


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=str(tmp_path / "data"), expiry_interval_seconds=0)
