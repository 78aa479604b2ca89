import msgspec
import pytest

from dlm.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No copy worker in the app: the tests claim as workers at chosen locations would."""
    return msgspec.structs.replace(settings, migration_workers=0)
