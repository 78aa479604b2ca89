"""Streaming payload checksums. Every method is fed chunk by chunk, so a payload of any size is hashed
in bounded memory; digests are lower-case hex strings."""

import hashlib
import os
import zlib
from pathlib import Path
from typing import Protocol

import crc32c
import xxhash

from dlm.enums import ChecksumMethod

CHUNK_SIZE = 4 * 1024 * 1024


class Hasher(Protocol):
    def update(self, data: bytes) -> None: ...
    def hexdigest(self) -> str: ...


class _Crc32c:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        self._value = crc32c.crc32c(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


class _Adler32:
    def __init__(self) -> None:
        self._value = 1

    def update(self, data: bytes) -> None:
        self._value = zlib.adler32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hasher(method: ChecksumMethod) -> Hasher:
    match method:
        case ChecksumMethod.CRC32C:
            return _Crc32c()
        case ChecksumMethod.ADLER32:
            return _Adler32()
        case ChecksumMethod.MD5:
            return hashlib.md5(usedforsecurity=False)
        case ChecksumMethod.SHA256:
            return hashlib.sha256()
        case ChecksumMethod.XXH3:
            return xxhash.xxh3_64()
    raise ValueError(f"no checksum for method {method}")


def checksum_of(content: bytes | bytearray, method: ChecksumMethod) -> str:
    """Checksum of bytes in memory."""
    hasher = new_hasher(method)
    hasher.update(content)
    return hasher.hexdigest()


def descriptor_checksum(descriptor: int, method: ChecksumMethod) -> str:
    """Checksum of what an open file descriptor reads from where it is (blocking: call it from a thread)."""
    hasher = new_hasher(method)
    while chunk := os.read(descriptor, CHUNK_SIZE):
        hasher.update(chunk)
    return hasher.hexdigest()


def file_checksum(path: Path, method: ChecksumMethod) -> str:
    """Checksum of a local file (blocking: call it from a thread)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return descriptor_checksum(descriptor, method)
    finally:
        os.close(descriptor)


# CRC32C's polynomial, bit-reversed as the checksum is computed.
_CASTAGNOLI = 0x82F63B78


def crc32c_combine(first: int, second: int, second_length: int) -> int:
    """The CRC32C of two byte strings one after the other, from the CRC32C of each and the second's
    length (zlib's crc32_combine, over Castagnoli's polynomial): the checksum of an object S3 copied in
    parts, from the parts' checksums. Appending n zero bits to a CRC is a linear map over GF(2); the
    map for the second's length is built by squaring the one for a single bit."""
    if second_length <= 0:
        return first
    odd = [_CASTAGNOLI] + [1 << bit for bit in range(31)]  # one zero bit
    even = _gf2_square(odd)  # two
    odd = _gf2_square(even)  # four
    while True:
        even = _gf2_square(odd)  # the first pass: one zero byte, then twice as many each pass
        if second_length & 1:
            first = _gf2_times(even, first)
        second_length >>= 1
        if not second_length:
            break
        odd = _gf2_square(even)
        if second_length & 1:
            first = _gf2_times(odd, first)
        second_length >>= 1
        if not second_length:
            break
    return first ^ second


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, column) for column in matrix]
