"""Lifecycle engines are driven by the tests, pass by pass, with time passed in: no loops in the app,
but its migration workers run, so that queued copies happen."""

from pathlib import Path

import pytest

from dlm.config import Settings
from tests.conftest import QUIET_ENGINES


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url, data_dir=str(tmp_path / "data"), migration_poll_seconds=0.1, **QUIET_ENGINES
    )
