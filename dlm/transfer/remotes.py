"""How DLM reaches a remote storage: the parts of an rclone remote's config it uses, for S3 and SFTP.

Apart from the backends so that knowing where a storage is (``backends.place_of``) does not load the
libraries that reach it: a DLM with no S3 or SFTP storage never imports aioboto3 or asyncssh.
"""

from typing import Any

import msgspec

from dlm.transfer.base import from_rclone
from dlm.transfer.obscured import reveal

# Each copy to S3 holds one part, so a part's size is a copy's memory: 8 MiB keeps it small, within
# S3's limits up to 80 GB (larger payloads get larger parts, a ten-thousandth of their size).
DEFAULT_PART_SIZE = 8 * 1024 * 1024
CONNECT_SECONDS = 15


class S3Settings(msgspec.Struct, kw_only=True, frozen=True):
    """The parts of an rclone ``s3`` remote that DLM uses."""

    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    # True: take credentials from the environment / instance profile, as rclone does.
    env_auth: bool = False
    force_path_style: bool = True
    part_size: int = DEFAULT_PART_SIZE
    # Parts of one large upload sent at once (rclone's --s3-upload-concurrency, same default): memory
    # holds this many parts plus the one being filled.
    upload_concurrency: int = 4

    @classmethod
    def from_rclone(cls, config: dict[str, Any]) -> "S3Settings":
        return from_rclone(cls, config)


def split_root(root_directory: str) -> tuple[str, str]:
    """``bucket/prefix`` (optionally with a leading ``/`` or ``s3://``) → (bucket, 'prefix/' or '')."""
    root = root_directory.removeprefix("s3://").strip("/")
    bucket, _, prefix = root.partition("/")
    return bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else ""


class SftpSettings(msgspec.Struct, kw_only=True, frozen=True):
    """The parts of an rclone ``sftp`` remote that DLM uses."""

    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    # A private key inline, as rclone takes it: one line, its line ends written as "\n".
    key_pem: str | None = None
    # Obscured (`rclone obscure`), as rclone stores them.
    key_file_pass: str | None = None
    # Named ``pass`` in rclone's config.
    password: str | None = msgspec.field(default=None, name="pass")
    known_hosts_file: str | None = None
    key_use_agent: bool = False

    @classmethod
    def from_rclone(cls, config: dict[str, Any]) -> "SftpSettings":
        return from_rclone(cls, config)

    @property
    def endpoint(self) -> str:
        """Where the bytes are: two storages overlap only on the same host, port and account."""
        return f"sftp://{self.user or ''}@{self.host.lower()}:{self.port}"

    def connect_options(self) -> dict[str, Any]:
        import asyncssh  # here, not at the top: a DLM with no SFTP storage never loads it (~20 MiB)

        options: dict[str, Any] = {
            "port": self.port,
            # The DLM host's ~/.ssh/config is not consulted: a storage reaches what its config says.
            "config": None,
            "connect_timeout": CONNECT_SECONDS,
            "known_hosts": self.known_hosts_file if self.known_hosts_file else (),
        }
        if self.user:
            options["username"] = self.user
        passphrase = reveal(self.key_file_pass) if self.key_file_pass else None
        if self.key_pem:
            pem = self.key_pem.replace("\\n", "\n")
            options["client_keys"] = [asyncssh.import_private_key(pem, passphrase)]
        elif self.key_file:
            options["client_keys"] = [self.key_file]
            options["passphrase"] = passphrase
        if self.password:
            options["password"] = reveal(self.password)
        if not self.key_use_agent:
            options["agent_path"] = None
        return options
