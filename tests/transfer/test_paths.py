"""Names as DLM reads them: the shortcuts for many names (a URI already canonical, a name's suffixes)
give what the full parse gives."""

from pathlib import PurePosixPath

import pytest

from dlm.errors import InvalidQueryParameters
from dlm.ingest.service import _last_two_suffixes
from dlm.transfer.paths import canonical_uri, check_relative_uri

URIS = [
    "a", "/a", "a/b", "a//b", "./a", "a/./b", "a/..", "../a", "a/", "/", "//a", "\\a", "/\\a", " a", "a b",
    "   ", "", "a\x00", ".a", "..a", "a..", "a/.b/c", "a/../b", ".", "..", "a/.", "/./a", "x" * 70, "é" * 63,
    "é" * 64, "a\nb", "\ta", "obs-000001.dat", "dir/sub/file.ms", "/abs/x", "a/b/", "a/\\b", "x" * 256,
    "/".join(["d"] * 600),
]  # fmt: skip


def checked(uri: str) -> str:
    """The canonical form the long way: every component parsed and checked."""
    return ("/" if uri.startswith("/") else "") + check_relative_uri(uri).as_posix()


@pytest.mark.parametrize("uri", URIS)
def test_a_canonical_uri_is_what_the_full_check_makes_of_it(uri: str) -> None:
    try:
        expected = checked(uri)
    except InvalidQueryParameters as exc:
        with pytest.raises(InvalidQueryParameters) as raised:
            canonical_uri(uri)
        assert raised.value.message == exc.message
    else:
        assert canonical_uri(uri) == expected


@pytest.mark.parametrize(
    "uri", ["a", "a.b", "a.tar.gz", "x/y.z.tar.gz", ".hidden", ".hidden.txt", "a.", "a..b", "dir/", "d.d/f", "/a/b.ms",
            "a/b.c/", "...", "x.tar.gz."],
)  # fmt: skip
def test_a_names_suffixes_are_pathlibs(uri: str) -> None:
    assert _last_two_suffixes(uri) == "".join(PurePosixPath(uri).suffixes[-2:])
