"""The vocabulary of DLM: states, phases and kinds, defined once for the database, the API and the CLI."""

import enum


class ItemState(enum.StrEnum):
    INITIALISED = "INITIALISED"
    READY = "READY"
    CORRUPTED = "CORRUPTED"
    EXPIRED = "EXPIRED"
    # Its payload is being deleted: recorded before the payload goes, so that a crash between the two
    # leaves a row that says so (the next expiry pass finishes it), never a READY row with no bytes.
    DELETING = "DELETING"
    DELETED = "DELETED"


# Which state may follow which. Setting the current state again is always accepted (idempotent).
# EXPIRED -> READY lets an operator rescue an item by extending its expiry; CORRUPTED -> READY is a repair.
STATE_TRANSITIONS: dict[ItemState, frozenset[ItemState]] = {
    ItemState.INITIALISED: frozenset({ItemState.READY, ItemState.CORRUPTED, ItemState.DELETED}),
    ItemState.READY: frozenset({ItemState.EXPIRED, ItemState.CORRUPTED, ItemState.DELETED}),
    ItemState.EXPIRED: frozenset({ItemState.READY, ItemState.DELETED}),
    ItemState.CORRUPTED: frozenset({ItemState.READY, ItemState.DELETED}),
    # DLM's own step between a live state and DELETED: nobody sets it, and it only goes on to DELETED.
    ItemState.DELETING: frozenset({ItemState.DELETED}),
    ItemState.DELETED: frozenset(),
}


class Phase(enum.StrEnum):
    """Persistence level. Weights give the combined phase of an item's replicas (SPEC §1)."""

    PLASMA = "PLASMA"
    GAS = "GAS"
    LIQUID = "LIQUID"
    SOLID = "SOLID"

    @property
    def weight(self) -> int:
        return _PHASE_WEIGHTS[self]


_PHASE_WEIGHTS = {Phase.PLASMA: 0, Phase.GAS: 1, Phase.LIQUID: 2, Phase.SOLID: 4}


def combined_phase(replica_phases: list[Phase]) -> Phase:
    """The phase an item reaches with READY replicas of these phases: weights summed, 3 counts as LIQUID,
    capped at SOLID. An item must have at least one replica to have a phase at all."""
    if not replica_phases:
        raise ValueError("an item with no READY replica has no phase")
    return phase_of_total(sum(phase.weight for phase in replica_phases))


def phase_of_total(total: int) -> Phase:
    """The combined phase of READY replicas whose weights add up to ``total`` (0: none, PLASMA)."""
    total = min(total, Phase.SOLID.weight)
    if total == 3:
        total = Phase.LIQUID.weight
    return next(phase for phase, weight in _PHASE_WEIGHTS.items() if weight == total)


class ItemType(enum.StrEnum):
    UNKNOWN = "unknown"
    FILE = "file"
    CONTAINER = "container"


class ChecksumMethod(enum.StrEnum):
    NONE = "none"
    CRC32C = "crc32c"
    ADLER32 = "adler32"
    MD5 = "md5"
    SHA256 = "sha256"
    XXH3 = "xxh3"


class StorageType(enum.StrEnum):
    FILESYSTEM = "filesystem"
    OBJECTSTORE = "objectstore"
    TAPE = "tape"


class StorageInterface(enum.StrEnum):
    POSIX = "posix"
    S3 = "s3"
    SFTP = "sftp"
    HTTPS = "https"


class LocationType(enum.StrEnum):
    LOCAL_DEV = "local-dev"
    LOW_INTEGRATION = "low-integration"
    MID_INTEGRATION = "mid-integration"
    LOW_OPERATIONS = "low-operations"
    MID_OPERATIONS = "mid-operations"


class LocationCountry(enum.StrEnum):
    AU = "AU"
    ZA = "ZA"
    UK = "UK"


class ConfigType(enum.StrEnum):
    RCLONE = "rclone"
    SSH = "ssh"
    AWS = "aws"
    GCS = "gcs"


class MigrationStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class Role(enum.StrEnum):
    """What a caller may do; each role may do everything the ones before it may (SPEC: security)."""

    READER = "reader"
    INGEST = "ingest"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: "Role") -> bool:
        return self.rank >= needed.rank
