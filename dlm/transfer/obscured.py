"""rclone's obscured form of passwords (``rclone obscure``), as its config files store them.

Obscuring is not encryption: the key is public, in rclone's source. It only keeps a password from
being read over a shoulder. DLM reveals these where a connection needs the password, and protects the
config itself by sealing it (DLM_SECRET_KEY) and redacting it.
"""

import base64
import binascii
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# rclone's fixed AES-256 key for obscured values (fs/config/obscure).
_KEY = bytes.fromhex("9c935b48730a554d6bfd7c63c886a92bd390198eb8128afbf4de162b8b95f638")
_IV_BYTES = 16


class NotObscured(ValueError):
    """The value is not in rclone's obscured form."""


def _crypt(data: bytes, iv: bytes) -> bytes:
    # CTR mode: encrypting and decrypting are the same operation.
    transform = Cipher(algorithms.AES(_KEY), modes.CTR(iv)).encryptor()
    return transform.update(data) + transform.finalize()


def obscure(plain: str) -> str:
    iv = os.urandom(_IV_BYTES)
    return base64.urlsafe_b64encode(iv + _crypt(plain.encode(), iv)).decode().rstrip("=")


def reveal(obscured: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(obscured + "=" * (-len(obscured) % 4))
    except (binascii.Error, ValueError):
        raise NotObscured("not base64") from None
    if len(raw) < _IV_BYTES:
        raise NotObscured("too short")
    try:
        return _crypt(raw[_IV_BYTES:], raw[:_IV_BYTES]).decode()
    except UnicodeDecodeError:
        raise NotObscured("does not reveal to text") from None
