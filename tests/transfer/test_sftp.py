"""The SFTP backend against OpenSSH's sshd on loopback: host keys, credentials, rclone's config fields,
and the refusals that must fail a copy at once."""

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dlm.enums import StorageInterface
from dlm.transfer.backends import make_backend
from dlm.transfer.base import PayloadExists, StorageRefused, StorageUnreachable
from dlm.transfer.obscured import NotObscured, obscure, reveal
from tests.conftest import SshServer, free_port


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def read_all(backend: Any, uri: str) -> bytes:
    return b"".join([chunk async for chunk in backend.read(uri)])


def sftp(server: SshServer, root: Path, **overrides: Any) -> Any:
    return make_backend(StorageInterface.POSIX, str(root), server.config(**overrides))


async def test_a_write_never_replaces_a_file_someone_else_put_there(ssh_server: SshServer, tmp_path: Path) -> None:
    (tmp_path / "theirs").write_bytes(b"not DLM's")
    async with sftp(ssh_server, tmp_path) as backend:
        with pytest.raises(PayloadExists):
            await backend.write("theirs", chunks_of(b"ours"))
    assert (tmp_path / "theirs").read_bytes() == b"not DLM's"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["theirs"]  # no partial left behind


async def test_permissions_travel_and_partials_are_invisible(ssh_server: SshServer, tmp_path: Path) -> None:
    async with sftp(ssh_server, tmp_path) as backend:
        await backend.write("a/f", chunks_of(b"data"), mode=0o100640)
        (tmp_path / "a" / ".g.dlm-partial").write_bytes(b"half")
        assert [(entry.path, entry.size) async for entry in backend.walk("a")] == [("f", 4)]
    assert (tmp_path / "a" / "f").stat().st_mode & 0o777 == 0o640


async def test_a_host_whose_key_is_not_known_is_refused(ssh_server: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(StorageRefused, match="host's key is not trusted"):
        async with sftp(ssh_server, tmp_path, known_hosts_file=str(empty)):
            pass


async def test_a_key_the_server_does_not_accept_is_refused(ssh_server: SshServer, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    with pytest.raises(StorageRefused, match="refused the config's credentials"):
        async with sftp(ssh_server, tmp_path, key_file=str(tmp_path / "other")):
            pass


async def test_no_server_listening_is_worth_retrying(ssh_server: SshServer, tmp_path: Path) -> None:
    with pytest.raises(StorageUnreachable) as raised:
        async with sftp(ssh_server, tmp_path, port=str(free_port())):
            pass
    assert raised.value.transient


async def test_writing_below_a_file_is_refused_for_good(ssh_server: SshServer, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    async with sftp(ssh_server, tmp_path) as backend:
        with pytest.raises(StorageRefused) as raised:
            await backend.write("file/below", chunks_of(b"y"))
    assert not raised.value.transient


async def test_inline_pem_and_obscured_passphrase_as_rclone_writes_them(ssh_server: SshServer, tmp_path: Path) -> None:
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret", "-f", str(key)], check=True)
    authorized = Path(ssh_server.key_file).parent / "authorized_keys"
    original = authorized.read_text()
    authorized.write_text(original + (tmp_path / "locked.pub").read_text())
    try:
        one_line_pem = key.read_text().strip().replace("\n", "\\n")
        async with sftp(
            ssh_server, tmp_path, key_file="", key_pem=one_line_pem, key_file_pass=obscure("s3cret")
        ) as backend:
            await backend.write("via-pem", chunks_of(b"ok"))
        async with sftp(ssh_server, tmp_path, key_file=str(key), key_file_pass=obscure("s3cret")) as backend:
            assert await read_all(backend, "via-pem") == b"ok"
    finally:
        authorized.write_text(original)


def test_obscured_values_are_rclones() -> None:
    assert reveal(obscure("pässword")) == "pässword"
    with pytest.raises(NotObscured):
        reveal("plain text!")
    rclone = subprocess.run(["which", "rclone"], capture_output=True, text=True).stdout.strip()
    if not rclone:
        pytest.skip("rclone is not installed (apt-get install rclone): cannot compare with `rclone obscure`")
    made_by_rclone = subprocess.run([rclone, "obscure", "pässword"], capture_output=True, text=True, check=True)
    assert reveal(made_by_rclone.stdout.strip()) == "pässword"
    revealed_by_rclone = subprocess.run([rclone, "reveal", "--", obscure("s3cret")], capture_output=True, text=True)
    assert revealed_by_rclone.stdout.strip() == "s3cret"


async def test_a_large_file_streams_both_ways(ssh_server: SshServer, tmp_path: Path) -> None:
    payload = os.urandom(20 * 1024 * 1024 + 5)
    async with sftp(ssh_server, tmp_path) as backend:
        mib = 1024 * 1024
        written = await backend.write("big", chunks_of(*[payload[i : i + mib] for i in range(0, len(payload), mib)]))
        assert written == len(payload)
        assert await read_all(backend, "big") == payload
