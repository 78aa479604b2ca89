"""What every database session of a DLM process carries: the keys that open storage configs, the
sinks its events are written for, where storages may be, and where caller-named endpoints may be."""

from typing import Any

from dlm.config import Settings, comma_list
from dlm.storage.configs import Keyring
from dlm.storage.seed import storage_confinement
from dlm.transfer.outbound import OutboundPolicy


def session_info(settings: Settings) -> dict[str, Any]:
    return {
        "keyring": Keyring.from_text(settings.secret_key),
        "event_sinks": ",".join(settings.event_sinks),
        "confinement": storage_confinement(settings),
        "outbound": OutboundPolicy(comma_list(settings.outbound_allow)),
        # SKA-DLM's deletion rule: an item's last replicas go when asked or expired (DLM_SKA_DELETION).
        "unconditional_deletion": settings.ska_deletion == "unconditional",
        # Where each local storage's root resolved when this process last checked it for overlap.
        "opened_roots": {},
    }
