"""Metadata extractors: plugins that describe a payload when it is registered.

A plugin is a coroutine function ``extract(payload: Payload, backend: Backend) -> dict | None``
published under the entry-point group ``dlm.metadata``; what it returns is stored in the item's
``extracted_metadata`` under the plugin's name (the caller's ``metadata`` is left as sent). A plugin
that fails never fails the registration: its error is recorded under
``extracted_metadata["dlm_extract_errors"][name]`` and logged. Size, MIME type and modification time
are columns (``item_size``, ``item_mime_type``, ``payload_modified``), not a plugin's. ``DLM_METADATA_PLUGINS`` chooses
which plugins run (default: all installed).

    [project.entry-points."dlm.metadata"]
    my_format = "my_package.dlm_plugin:extract"
"""

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any

import msgspec

from dlm.enums import ItemType
from dlm.transfer.base import Backend

log = logging.getLogger("dlm.metadata")

GROUP = "dlm.metadata"
ERRORS_KEY = "dlm_extract_errors"


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """What a plugin is told about the payload being registered."""

    item_name: str
    uri: str
    item_type: ItemType
    storage_name: str
    size: int | None
    modified: float | None


Extractor = Callable[[Payload, Backend], Awaitable[dict[str, Any] | None]]


def load_extractors(names: list[str] | None = None) -> dict[str, Extractor]:
    """The installed plugins by name (only those in ``names`` when given; an unknown name is an error)."""
    found = {entry.name: entry for entry in entry_points(group=GROUP)}
    if names is not None:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise ValueError(
                f"DLM_METADATA_PLUGINS: no plugin named {', '.join(unknown)} (installed: {', '.join(sorted(found))})"
            )
        found = {name: found[name] for name in names}
    return {name: entry.load() for name, entry in found.items()}


async def extract(extractors: dict[str, Extractor], payload: Payload, backend: Backend) -> dict[str, Any]:
    """Run every plugin on the payload: ``{plugin name: what it found}``, failures under ERRORS_KEY."""
    found: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name, extractor in extractors.items():
        try:
            result = await extractor(payload, backend)
        except Exception as exc:  # a plugin's bug or a bad sidecar file must not stop a registration
            log.warning("metadata plugin %s failed on %s: %s", name, payload.uri, exc)
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        if result:
            found[name] = result
    if failures:
        found[ERRORS_KEY] = failures
    return found
