"""Payload URIs are paths relative to a storage's root; none may ever point outside it."""

from pathlib import Path, PurePosixPath

from dlm.errors import InvalidQueryParameters


def check_relative_uri(uri: str, field: str = "uri") -> PurePosixPath:
    """Reject URIs that are empty, absolute, contain '..' or NUL: they could escape the storage root."""
    if not uri or not uri.strip():
        raise InvalidQueryParameters(f"{field}: must not be empty")
    if "\x00" in uri:
        raise InvalidQueryParameters(f"{field}: must not contain NUL characters")
    path = PurePosixPath(uri)
    if path.is_absolute() or uri.startswith("\\"):
        raise InvalidQueryParameters(f"{field}: {uri!r} must be relative to the storage root, not absolute")
    if ".." in path.parts:
        raise InvalidQueryParameters(f"{field}: {uri!r} must not contain '..'")
    return path


def resolve_inside(root: Path, uri: str, field: str = "uri") -> Path:
    """The local path of ``uri`` under ``root``, following symlinks, refusing anything that lands outside."""
    relative = check_relative_uri(uri, field)
    real_root = root.resolve()
    try:
        target = (real_root / relative).resolve()
    except (RuntimeError, OSError):  # a symlink loop
        raise InvalidQueryParameters(f"{field}: {uri!r} cannot be resolved (symlink loop)") from None
    if target != real_root and real_root not in target.parents:
        raise InvalidQueryParameters(f"{field}: {uri!r} resolves outside the storage root")
    return target
