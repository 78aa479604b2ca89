"""The SKA data product extractor: the ``ska-data-product.yaml`` that describes a data product.

The file sits inside a container payload, or next to a file payload (in the same directory). Its
content is stored as it is (it is the product's own metadata: execution block, pipeline, config,
files); DLM does not interpret it.
"""

import json
import posixpath
import weakref
from typing import Any

import yaml

from dlm.enums import ItemType
from dlm.metadata import Payload
from dlm.transfer.base import Backend

FILE_NAME = "ska-data-product.yaml"
# A metadata file is small; a bigger one is not what this plugin is for.
MAX_BYTES = 1024 * 1024


# Files of one directory share its metadata file: read it once per registration call (per backend).
_read: "weakref.WeakKeyDictionary[Any, dict[str, dict[str, Any] | None]]" = weakref.WeakKeyDictionary()


async def extract(payload: Payload, backend: Backend) -> dict[str, Any] | None:
    if payload.item_type is ItemType.CONTAINER:
        sidecar = f"{payload.uri}/{FILE_NAME}"
    else:
        directory = posixpath.dirname(payload.uri)
        sidecar = f"{directory}/{FILE_NAME}" if directory else FILE_NAME
    if sidecar == payload.uri:
        return None
    seen = _read.setdefault(backend, {})
    if sidecar not in seen:
        seen[sidecar] = await _read_sidecar(backend, sidecar)
    return seen[sidecar]


async def _read_sidecar(backend: Backend, sidecar: str) -> dict[str, Any] | None:
    info = await backend.stat(sidecar)
    if info is None or info.is_container:
        return None
    if info.size is not None and info.size > MAX_BYTES:
        raise ValueError(f"{sidecar} is {info.size} bytes, more than a metadata file should be ({MAX_BYTES})")
    content = b"".join([chunk async for chunk in backend.read(sidecar)])
    document = yaml.safe_load(content)
    if not isinstance(document, dict):
        raise ValueError(f"{sidecar} is not a YAML mapping")
    # YAML has dates and other types JSON lacks: store them as their text.
    return {"file": sidecar, **json.loads(json.dumps(document, default=str))}
