"""What DLM finds at registration: size, MIME type and modification time in columns, the SKA data
product plugin's description in extracted_metadata, failures recorded but never fatal, the choice of
plugins; and the caller's metadata comes back exactly as sent."""

import subprocess
import sys
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from dlm.app import create_app
from dlm.config import Settings
from dlm.enums import ItemType
from dlm.metadata import ERRORS_KEY, Payload, extract
from tests.conftest import Registry, free_port, make_settings

PRODUCT = """\
interface: http://schema.skao.int/ska-data-product-meta/0.1
execution_block: eb-m001-20191031-12345
context:
  observer: AIV_person_1
  intent: Experimental run
config:
  processing_block: pb-m001-20191031-12345
  processing_script: receive
date: 2026-11-24
files:
  - path: vis.ms
    status: done
"""


async def test_a_file_gets_its_facts_in_columns_and_its_data_product_description(registry: Registry) -> None:
    registry.payload("eb-1/vis.ms", b"v" * 100)
    registry.payload("eb-1/ska-data-product.yaml", PRODUCT.encode())
    sent = {"execution_block": "mine", "generic": {"anything": 1}}
    uid = await registry.register("vis", "eb-1/vis.ms", metadata=sent)
    item = await registry.item(uid)
    assert item["metadata"] == {**sent, "uid": uid, "item_name": "vis"}, "SKA's round trip: as sent"
    assert item["item_size"] == 100 and item["payload_modified"].endswith("+00:00")
    product = item["extracted_metadata"]["ska_data_product"]
    assert product["file"] == "eb-1/ska-data-product.yaml"
    assert product["execution_block"] == "eb-m001-20191031-12345"
    assert product["context"]["observer"] == "AIV_person_1" and product["date"] == "2026-11-24"
    assert ERRORS_KEY not in item["extracted_metadata"]


async def test_the_mime_type_comes_from_the_name(registry: Registry) -> None:
    text_uid = await registry.register("hello", "hello.txt")
    fits_uid = await registry.register("image", "image.fits")
    container_uid = await registry.register("dir", "dir", item_type="container", do_storage_access_check=False)
    assert (await registry.item(text_uid))["item_mime_type"] == "text/plain"
    assert (await registry.item(fits_uid))["item_mime_type"] == "image/fits"
    assert (await registry.item(container_uid))["item_mime_type"] == "inode/directory"


async def test_a_container_is_described_by_the_file_inside_it(registry: Registry) -> None:
    registry.payload("eb-2/data.h5", b"x")
    registry.payload("eb-2/ska-data-product.yaml", PRODUCT.encode())
    uid = await registry.register("eb-2", "eb-2", item_type="container")
    extracted = (await registry.item(uid))["extracted_metadata"]
    assert extracted["ska_data_product"]["config"]["processing_script"] == "receive"


async def test_a_broken_description_is_recorded_and_the_registration_stands(registry: Registry) -> None:
    registry.payload("eb-3/vis.ms", b"v")
    registry.payload("eb-3/ska-data-product.yaml", b"interface: [unclosed\n")
    uid = await registry.register("vis-3", "eb-3/vis.ms")
    item = await registry.item(uid)
    assert item["item_state"] == "READY"
    assert "ska_data_product" not in item["extracted_metadata"]
    assert "ska_data_product" in item["extracted_metadata"][ERRORS_KEY]
    assert ERRORS_KEY not in item["metadata"]


async def test_a_failing_plugin_is_recorded_by_name(tmp_path: Path) -> None:
    async def broken(payload: Payload, backend: object) -> dict:
        raise RuntimeError("boom")

    async def fine(payload: Payload, backend: object) -> dict:
        return {"seen": payload.uri}

    payload = Payload(item_name="x", uri="x", item_type=ItemType.FILE, storage_name="s", size=1, modified=None)
    found = await extract({"broken": broken, "fine": fine}, payload, backend=None)  # type: ignore[arg-type]
    assert found == {"fine": {"seen": "x"}, ERRORS_KEY: {"broken": "RuntimeError: boom"}}


@pytest.mark.parametrize(("choice", "expected"), [("none", None), ("ska_data_product", {"ska_data_product"})])
async def test_the_plugins_that_run_are_chosen_by_setting(
    database_url: str, tmp_path: Path, choice: str, expected: set[str] | None
) -> None:
    settings = make_settings(database_url, tmp_path, metadata_plugins=choice)
    async with AsyncTestClient(create_app(settings)) as client:
        registry = Registry(client, tmp_path / "store")
        await registry.storage()
        registry.payload("ska-data-product.yaml", PRODUCT.encode())
        uid = await registry.register("plain", "plain")
        extracted = (await registry.item(uid))["extracted_metadata"]
    assert (set(extracted) if extracted else None) == expected


def test_an_unknown_plugin_stops_dlm_at_startup_with_one_line(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no plugin named nosuch"):
        create_app(Settings(database_url=database_url, metadata_plugins="ska_data_product,nosuch"))
    result = subprocess.run(
        [sys.executable, "-m", "dlm", "serve"],
        env={
            "DLM_DATABASE_URL": database_url,
            "DLM_METADATA_PLUGINS": "nosuch",
            "DLM_PORT": str(free_port()),  # never 8000: the reader's own DLM may be serving there
            "DLM_DATA_DIR": str(tmp_path),  # never the reader's own
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("dlm: error: DLM_METADATA_PLUGINS: no plugin named")
