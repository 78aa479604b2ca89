"""The client's result structs are written out field by field (the client must not import the server's
models); they must still match the server's columns, one for one."""

import msgspec
import pytest

from dlm import client
from dlm.db import models

TABLES = [
    (client.Item, models.DataItem.__table__, set()),
    (client.Storage, models.Storage.__table__, set()),
    (client.Location, models.Location.__table__, set()),
    (client.Migration, models.Migration.__table__, set()),
    (client.Event, models.DataItemEvent.__table__, set()),
    (client.StorageEvent, models.StorageEvent.__table__, {"storage_name"}),
]


@pytest.mark.parametrize(("struct", "table", "joined"), TABLES, ids=lambda value: getattr(value, "__name__", ""))
def test_a_result_struct_has_exactly_its_tables_columns(struct: type, table: object, joined: set[str]) -> None:
    fields = {field.name for field in msgspec.structs.fields(struct)}
    assert fields == {column.name for column in table.columns} | joined  # type: ignore[attr-defined]


def test_a_replica_is_an_item_and_its_storage() -> None:
    fields = {field.name for field in msgspec.structs.fields(client.Replica)}
    columns = {column.name for column in models.DataItem.__table__.columns}
    columns |= {column.name for column in models.Storage.__table__.columns}
    assert fields == columns
