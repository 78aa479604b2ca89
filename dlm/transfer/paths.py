"""Payload URIs are paths below a storage's root; none may ever point outside it.

A URI is stored in its canonical form (``canonical_uri``): ``./obs//x/`` is stored as ``obs/x``, the
path every backend reads and writes for it, so that two spellings can never pass for two payloads.
``obs/x`` and ``/obs/x`` name the same payload too (SKA-DLM writes the second, and keeps it): the
leading "/" is kept as given, and ``payload_key`` (what the unique index compares) drops it.
"""

import os
import re
import stat
import unicodedata
from pathlib import Path, PurePosixPath

from dlm.errors import InvalidQueryParameters

# Longest URI and path component DLM accepts, in UTF-8 bytes: S3 keys stop at 1024, file names at 255.
MAX_URI_BYTES = 1024
MAX_NAME_BYTES = 255


def check_relative_uri(uri: str, field: str = "uri") -> PurePosixPath:
    """The path of ``uri`` below the storage root. A leading "/" means "from the storage root", as
    SKA-DLM joins root and uri. Rejects URIs that are empty, name the storage root itself, contain '..'
    or NUL, or are too long for a storage: they could escape the root, or take all of it."""
    if not uri or not uri.strip():
        raise InvalidQueryParameters(f"{field}: must not be empty")
    if "\x00" in uri:
        raise InvalidQueryParameters(f"{field}: must not contain NUL characters")
    if uri.startswith("\\"):
        raise InvalidQueryParameters(f"{field}: {uri!r} must be a path below the storage root")
    path = PurePosixPath(uri.lstrip("/"))
    if ".." in path.parts:
        raise InvalidQueryParameters(f"{field}: {uri!r} must not contain '..'")
    if not path.parts:
        raise InvalidQueryParameters(f"{field}: {uri!r} names the storage root itself, not a payload in it")
    if len(uri.encode()) > MAX_URI_BYTES:
        raise InvalidQueryParameters(f"{field}: longer than {MAX_URI_BYTES} bytes")
    if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
        raise InvalidQueryParameters(f"{field}: a path component is longer than {MAX_NAME_BYTES} bytes")
    return path


# Characters no item name may hold: C0/C1 controls (a CR or LF splits HTTP headers and log lines) and
# the Unicode line and paragraph separators.
_NOT_IN_NAMES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_item_name(name: str, field: str = "item_name") -> str:
    """An item name DLM accepts: it becomes a file name in deliveries, a tar member and a download's
    file name, so it may not climb out of a directory ('..' between slashes) nor hold control characters,
    and it is in Unicode NFC (so that one name is one string; DLM refuses other forms rather than change
    a name behind its owner's back). A leading "/" is fine (SKA-DLM's tests name items so)."""
    if not name:
        raise InvalidQueryParameters(f"{field}: must not be empty")
    if (bad := _NOT_IN_NAMES.search(name)) is not None:
        raise InvalidQueryParameters(f"{field}: must not contain control characters ({bad.group()!r})")
    if ".." in name.split("/"):
        raise InvalidQueryParameters(f"{field}: {name!r} must not contain a '..' path segment")
    if len(name.encode()) > MAX_URI_BYTES:
        raise InvalidQueryParameters(f"{field}: longer than {MAX_URI_BYTES} bytes")
    if not unicodedata.is_normalized("NFC", name):
        raise InvalidQueryParameters(
            f"{field}: {name!r} is not in Unicode NFC; send {unicodedata.normalize('NFC', name)!r}"
        )
    return name


def relative_name(name: str) -> str:
    """``name`` (an item name, a member's path) as a relative path that stays below wherever it is
    written or extracted: no leading "/", and no empty, "." or ".." components (names registered before
    DLM refused '..' lose them here)."""
    return "/".join(part for part in name.split("/") if part not in ("", ".", "..")) or "payload"


# A uri that is canonical already: components that are neither empty, "." nor "..", no NUL, no leading
# backslash, at most one leading "/", none trailing. Most are; they skip the parse (a fifth of a bulk
# registration's own time went to parsing 10,000 of them).
_CANONICAL = re.compile(r"/?(?![\\\s])(?:(?!\.\.?(?:/|$))[^/\x00]+)(?:/(?!\.\.?(?:/|$))[^/\x00]+)*")


def canonical_uri(uri: str, field: str = "uri") -> str:
    """``uri`` as DLM stores it: checked (``check_relative_uri``), without "." or empty components or a
    trailing "/", keeping a leading "/" if it has one."""
    if len(uri) <= MAX_NAME_BYTES // 4 and _CANONICAL.fullmatch(uri) and uri.strip():
        return uri  # no component (nor the whole) can be too long: 4 bytes a character at most
    return ("/" if uri.startswith("/") else "") + check_relative_uri(uri, field).as_posix()


def payload_key(uri: str) -> str:
    """What identifies a payload on its storage, however the uri was written: the database's unique
    index on ``ltrim(uri, '/')`` compares this, the canonical form without its leading "/"."""
    return PurePosixPath(uri.lstrip("/")).as_posix()


def check_deletable_uri(uri: str | None, field: str) -> None:
    """A stored uri about to be deleted: never the storage root, whatever an older DLM let in."""
    if uri is not None:
        check_relative_uri(uri, field)


def resolve_inside(root: Path, uri: str, field: str = "uri", *, real_root: Path | None = None) -> Path:
    """The local path of ``uri`` under ``root``, following symlinks, refusing anything that lands outside.
    ``real_root`` is ``root`` already resolved, to spare resolving it for each of many URIs."""
    return Resolver(real_root or root.resolve())(uri, field)


class Resolver:
    """``resolve_inside`` for many URIs under one root, resolving each directory they are in once: a
    batch of a container's files shares a few directories, and resolving costs an lstat per component."""

    def __init__(self, real_root: Path) -> None:
        self.real_root = real_root
        self._directories: dict[tuple[str, ...], Path] = {}

    def __call__(self, uri: str, field: str = "uri") -> Path:
        directory, name = self.place(uri, field)
        target = self._resolve(directory, (name,), uri, field)
        if target != directory / name:  # the name is a link: where it leads must be inside too
            self._check_inside(target, uri, field)
        return target

    def place(self, uri: str, field: str = "uri") -> tuple[Path, str]:
        """The resolved directory ``uri`` is in (inside the root) and its last component, unresolved:
        enough for a caller that creates the file there, or opens it without following a link."""
        parts = check_relative_uri(uri, field).parts
        directory = self._directories.get(parts[:-1])
        if directory is None:
            directory = self._resolve(self.real_root, parts[:-1], uri, field)
            if directory != self.real_root:
                self._check_inside(directory, uri, field)
            self._directories[parts[:-1]] = directory
        return directory, parts[-1]

    def _resolve(self, below: Path, parts: tuple[str, ...], uri: str, field: str) -> Path:
        try:
            return _resolve_below(below, parts)
        except (RuntimeError, OSError):  # a symlink loop
            raise InvalidQueryParameters(f"{field}: {uri!r} cannot be resolved (symlink loop)") from None

    def _check_inside(self, target: Path, uri: str, field: str) -> None:
        if self.real_root not in target.parents:
            # Outside, or the root itself through a symlink: deleting that would empty the whole storage.
            where = "to the storage root itself" if target == self.real_root else "outside the storage root"
            raise InvalidQueryParameters(f"{field}: {uri!r} resolves {where}")


def _resolve_below(real_root: Path, parts: tuple[str, ...]) -> Path:
    """``(real_root / parts).resolve()``, without re-examining the root's own components: one lstat per
    component below it, and a full resolution only where a component is a symlink."""
    current = real_root
    for index, part in enumerate(parts):
        candidate = current / part
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return candidate.joinpath(*parts[index + 1 :])  # nothing further can be a link
        current = candidate.resolve() if is_link else candidate
    return current
