"""Lifecycle engines are driven by the tests, pass by pass, with time passed in: no loops in the app,
but its migration workers run, so that queued copies happen."""

from pathlib import Path

import pytest

from dlm.config import Settings
from tests.conftest import make_settings


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, migration_poll_seconds=0.1)
