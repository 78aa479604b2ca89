"""The generic extractor: size, modification time and MIME type (guessed from the name)."""

import datetime
import mimetypes
from typing import Any

from dlm.enums import ItemType
from dlm.metadata import Payload
from dlm.transfer.base import Backend


async def extract(payload: Payload, backend: Backend) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if payload.size is not None:
        found["size"] = payload.size
    if payload.modified is not None:
        found["modified"] = datetime.datetime.fromtimestamp(payload.modified, datetime.UTC).isoformat()
    if payload.item_type is ItemType.CONTAINER:
        found["mime_type"] = "inode/directory"
    else:
        mime_type, encoding = mimetypes.guess_type(payload.uri, strict=False)
        found["mime_type"] = mime_type or "application/octet-stream"
        if encoding:
            found["encoding"] = encoding
    return found
