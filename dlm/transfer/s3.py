"""Payloads in an S3 object store (AWS, MinIO, Ceph RGW, moto...), reached with aioboto3.

The storage's ``root_directory`` is ``bucket`` or ``bucket/prefix``; a payload's URI is a key under
it, and a container is every object under ``uri/``. Connection settings come from the storage's
config in rclone's remote format (``endpoint``, ``access_key_id``, ``secret_access_key``, ``region``,
``env_auth``), so existing rclone remotes carry over.
"""

import asyncio
import base64
import contextlib
import math
import os
import re
import socket
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import aioboto3
import aiohttp
import aiohttp.abc
import botocore.exceptions
from aiobotocore.config import AioConfig

from dlm.checksum import checksum_of, crc32c_combine, new_hasher
from dlm.enums import ChecksumMethod
from dlm.transfer.base import (
    CHUNK_SIZE,
    Entry,
    PayloadExists,
    PayloadInfo,
    PayloadMissing,
    SmallFile,
    StorageRefused,
    StorageUnreachable,
    TransferError,
    translated,
)
from dlm.transfer.batches import OneAtATime, side_by_side, write_all_or_none
from dlm.transfer.outbound import OutboundPolicy
from dlm.transfer.paths import check_relative_uri
from dlm.transfer.remotes import S3Settings, split_root
from dlm.transfer.window import Window

# S3 refuses parts under 5 MiB (except the last) and uploads of more than 10,000 parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
_MISSING = {"404", "NoSuchKey", "NotFound"}
# A conditional write (If-None-Match: *) found an object at the key: someone else's, never replaced.
_TAKEN = {"412", "PreconditionFailed", "ConditionalRequestConflict"}
_LIBRARY_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, aiohttp.ClientError, OSError)
_TRANSIENT = {"500", "502", "503", "504", "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
# What an S3 error code looks like ("AccessDenied", "403"): anything else is not quoted back.
_S3_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")
# A batch lists the directory it goes to unless that holds this many objects per file of the batch.
_LISTING_PER_FILE = 10
# What a store that copies no object itself (or computes no checksum of one) answers a copy request.
_NO_SERVER_COPY = {"NotImplemented", "XNotImplemented", "501", "InvalidArgument", "InvalidRequest"}
# The checksums S3 computes of an object it copies (CopyObject's ChecksumAlgorithm), by DLM's methods.
_SERVER_CHECKSUMS = {ChecksumMethod.CRC32C: "CRC32C", ChecksumMethod.SHA256: "SHA256"}
# The most CopyObject copies in one request; beyond it, parts of at least COPY_PART_SIZE (UploadPartCopy
# takes up to 5 GiB a part: fewer, larger requests, none of whose bytes pass through DLM).
MAX_COPY_OBJECT = 5 * 1024**3
COPY_PART_SIZE = 1024**3


class CheckedResolver(aiohttp.abc.AbstractResolver):
    """Hands the connector only the addresses an ``OutboundPolicy`` permits: the client of an endpoint a
    caller named connects where the check looked (dlm.transfer.outbound)."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[Any]:
        addresses = await self.policy.resolve(host, port)
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        return None


class S3Backend(OneAtATime):
    def __init__(self, root_directory: str, settings: S3Settings, *, outbound: OutboundPolicy | None = None) -> None:
        self.bucket, self.prefix = split_root(root_directory)
        self.settings = settings
        # For an endpoint a caller named (not an admin's storage): where it may connect.
        self.outbound = outbound
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        # URIs whose last write S3 confirmed by its ETag (see stored_as_sent).
        self._confirmed: set[str] = set()

    async def __aenter__(self) -> "S3Backend":
        settings = self.settings
        session = aioboto3.Session()
        credentials: dict[str, Any] = {}
        if not settings.env_auth:
            credentials = {
                "aws_access_key_id": settings.access_key_id,
                "aws_secret_access_key": settings.secret_access_key,
                "aws_session_token": settings.session_token,
            }
        config = AioConfig(
            s3={"addressing_style": "path" if settings.force_path_style else "auto"},
            # Only checksums S3 itself requires: MinIO and Ceph releases differ in which others they accept.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            # Room for the files of a container copied side by side (copy.FILES_AT_ONCE) and a spare.
            max_pool_connections=16,
            connector_args={"resolver": CheckedResolver(self.outbound)} if self.outbound else None,
        )
        self._client = await self._stack.enter_async_context(
            session.client(
                "s3",
                endpoint_url=settings.endpoint,
                region_name=settings.region or "us-east-1",
                config=config,
                **credentials,
            )
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def key(self, uri: str) -> str:
        return f"{self.prefix}{check_relative_uri(uri).as_posix()}"

    def _error(self, exc: Exception, uri: str) -> TransferError:
        where = f"s3://{self.bucket}/{self.key(uri) if uri else self.prefix}"
        if isinstance(exc, botocore.exceptions.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                return PayloadMissing(f"no payload at {uri!r}")
            if code in _TAKEN:
                return PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")
            if code in _TRANSIENT:
                return StorageUnreachable(f"{where}: {code}")
            if self.outbound is not None and not _S3_CODE.fullmatch(code):
                return StorageRefused(f"{where}: refused (not an answer S3 gives)")
            return StorageRefused(f"{where}: {code or exc}")
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StorageRefused(f"{where}: no credentials in the storage config")
        if self.outbound is not None:
            # A caller named this endpoint: say that it failed, never what answered there.
            return StorageUnreachable(f"{where}: unreachable ({type(exc).__name__})")
        return StorageUnreachable(f"{where}: {exc}")

    def _translated(self, uri: str) -> Any:
        return translated(_LIBRARY_ERRORS, self._error, uri)

    async def check(self) -> None:
        """Raise the TransferError that says why the bucket cannot be used (missing, refused, unreachable)."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StorageRefused(f"bucket {self.bucket!r} does not exist (DLM does not create buckets)") from None
            raise self._error(exc, "") from None
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError) as exc:
            raise self._error(exc, "") from None

    async def stat(self, uri: str) -> PayloadInfo | None:
        key = self.key(uri)
        with self._translated(uri):
            try:
                head = await self._client.head_object(Bucket=self.bucket, Key=key)
                if "ContentLength" not in head or "LastModified" not in head:
                    # Not what S3 answers: said as the store's fault, never a server error of DLM's.
                    raise StorageRefused(f"s3://{self.bucket}/{key}: the store's answer gives no size or date")
                return PayloadInfo(
                    size=head["ContentLength"], is_container=False, modified=head["LastModified"].timestamp()
                )
            except botocore.exceptions.ClientError as exc:
                if self._error(exc, uri).__class__ is not PayloadMissing:
                    raise
            listed = await self._client.list_objects_v2(Bucket=self.bucket, Prefix=f"{key}/", MaxKeys=1)
        if listed.get("KeyCount", 0):
            return PayloadInfo(size=None, is_container=True)
        return None

    async def stat_many(self, uris: list[str]) -> list[PayloadInfo | None]:
        """What is at many keys, found as ``write_small`` finds it: by listing the directory they share
        (a request per thousand keys) rather than a HEAD each; where that directory holds much more than
        them, by HEADs, several at once."""
        if len(uris) < 2:
            return [await self.stat(uri) for uri in uris]
        keys = [self.key(uri) for uri in uris]
        directory = os.path.commonprefix(keys).rpartition("/")[0]
        files: dict[str, Any] = {}
        containers: set[str] = set()
        wanted = set(keys)
        with self._translated(uris[0]):
            listed = 0
            async for entry in self._list(f"{directory}/" if directory else ""):
                listed += 1
                if listed > _LISTING_PER_FILE * len(keys):
                    return await side_by_side(self.stat, uris)
                key = entry["Key"]
                if key in wanted:
                    files[key] = entry
                for parent in _parents(key, directory):
                    if parent in wanted:
                        containers.add(parent)
        found: list[PayloadInfo | None] = []
        for key in keys:
            if key in files:
                entry = files[key]
                found.append(PayloadInfo(entry["Size"], False, modified=entry["LastModified"].timestamp()))
            else:
                found.append(PayloadInfo(size=None, is_container=True) if key in containers else None)
        return found

    async def read(
        self, uri: str, chunk_size: int = CHUNK_SIZE, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if length == 0:
            return
        ranged = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            ranged = {"Range": f"bytes={offset}-{end}"}
        with self._translated(uri):
            response = await self._client.get_object(Bucket=self.bucket, Key=self.key(uri), **ranged)
            body = response["Body"]
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            finally:
                body.close()

    def part_size(self, size_hint: int | None) -> int:
        if size_hint is None:
            # Unknown size: parts big enough for ~5 TiB, S3's own object limit.
            return max(self.settings.part_size, 512 * 1024 * 1024)
        return max(self.settings.part_size, MIN_PART_SIZE, math.ceil(size_hint / MAX_PARTS))

    async def write(
        self, uri: str, chunks: AsyncIterable[bytes], *, size_hint: int | None = None, mode: int | None = None
    ) -> int:
        """One PUT for a payload that fits in a part, otherwise a multipart upload holding one part in
        memory at a time. Nothing is visible at the key until the upload completes; any failure aborts it.
        Never over an existing object: looked for first (so no upload is wasted), then written
        conditionally (If-None-Match: *, honoured by AWS, MinIO and recent Ceph), so a racing writer
        loses with PayloadExists instead of replacing what is there."""
        key = self.key(uri)
        with self._translated(uri):
            try:
                await self._client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as exc:
                if not isinstance(self._error(exc, uri), PayloadMissing):
                    raise
            else:
                raise PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")
        part_size = self.part_size(size_hint)
        # The part being filled: handed over as it is once full (no slice, no bytes() copy of a part on
        # the event loop), then a new one is started. Full parts go up several at a time, as many as
        # fill the link (measured: dlm.transfer.window), at most upload_concurrency (each held until S3
        # has it): the copy holds at most that many parts plus the one filling.
        buffer = bytearray()
        written = 0
        upload_id: str | None = None
        sent: dict[int, tuple[str, bytes]] = {}  # part number: its ETag and MD5 (the multipart ETag's)
        window = Window(self.settings.upload_concurrency)
        sending: set[asyncio.Task[None]] = set()
        numbered = 0

        async def send(number: int, body: bytearray) -> None:
            moved = 0
            try:
                sent[number] = await self._upload_part(key, upload_id, number, body)  # type: ignore[arg-type]
                moved = len(body)
            finally:
                window.release(moved)

        async def start(body: bytearray) -> None:
            nonlocal numbered
            await window.acquire()
            for task in [task for task in sending if task.done()]:
                sending.discard(task)
                task.result()  # a part that failed stops the upload now, not at its end
            numbered += 1
            sending.add(asyncio.ensure_future(send(numbered, body)))

        self._confirmed.discard(uri)
        with self._translated(uri):
            if size_hint is None or size_hint >= part_size:
                # A payload that fits in one part never starts a multipart upload, so has none to clear.
                await self._abort_stale_uploads(key)
            try:
                async for chunk in chunks:
                    written += len(chunk)
                    rest = memoryview(chunk)
                    while len(buffer) + len(rest) >= part_size:
                        room = part_size - len(buffer)
                        buffer += rest[:room]
                        rest = rest[room:]
                        if upload_id is None:
                            created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
                            upload_id = created["UploadId"]
                        await start(buffer)
                        buffer = bytearray()
                    buffer += rest
                if upload_id is None:
                    response = await self._client.put_object(Bucket=self.bucket, Key=key, Body=buffer, IfNoneMatch="*")
                    self._note_etag(uri, response, await asyncio.to_thread(checksum_of, buffer, ChecksumMethod.MD5))
                    return written
                if buffer:
                    await start(buffer)
                await asyncio.gather(*sending)
                parts = [{"ETag": sent[number][0], "PartNumber": number} for number in sorted(sent)]
                response = await self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, IfNoneMatch="*"
                )
                # A multipart ETag is the MD5 of the parts' MD5s, then "-" and how many parts.
                whole = checksum_of(b"".join(sent[number][1] for number in sorted(sent)), ChecksumMethod.MD5)
                self._note_etag(uri, response, f"{whole}-{len(parts)}")
            except BaseException:
                for task in sending:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*sending, return_exceptions=True)
                if upload_id is not None:
                    with contextlib.suppress(Exception):
                        await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                raise
        return written

    async def write_small(self, files: list[SmallFile]) -> None:
        """As rclone does: what is at the batch's keys already is found by listing the directory they
        share (a request per thousand keys), not by a HEAD per file; each then goes up in one conditional
        PUT, whose ETag (S3's MD5 of what it stored) confirms a file when it is the MD5 of the bytes sent
        (stored_as_sent). Where that directory holds much more than the batch, each file is written on
        its own."""
        if not files:
            return
        keys = {self.key(file.uri): file for file in files}
        directory = os.path.commonprefix(list(keys)).rpartition("/")[0]
        existing: set[str] = set()
        with self._translated(files[0].uri):
            listed = 0
            async for entry in self._list(f"{directory}/" if directory else ""):
                listed += 1
                if listed > _LISTING_PER_FILE * len(keys):
                    await super().write_small(files)
                    return
                if entry["Key"] in keys:
                    existing.add(entry["Key"])
        if existing:
            uri = keys[min(existing)].uri
            raise PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")

        async def put(file: SmallFile) -> None:
            with self._translated(file.uri):
                response = await self._client.put_object(
                    Bucket=self.bucket, Key=self.key(file.uri), Body=file.content, IfNoneMatch="*"
                )
            self._note_etag(file.uri, response, checksum_of(file.content, ChecksumMethod.MD5))

        await write_all_or_none(self, files, put)

    async def _upload_part(self, key: str, upload_id: str, number: int, body: bytearray) -> tuple[str, bytes]:
        """Part ``number`` sent; its ETag and MD5."""
        digest = bytes.fromhex(await asyncio.to_thread(checksum_of, body, ChecksumMethod.MD5))
        response = await self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
        )
        return response["ETag"], digest

    def _same_service(self, other: object) -> bool:
        """Whether ``other`` is a bucket of the same S3 service reached with the same credentials: one
        CopyObject request can then copy from it."""
        if not isinstance(other, S3Backend) or self.outbound is not None or other.outbound is not None:
            return False
        mine, theirs = self.settings, other.settings
        return (mine.endpoint, mine.region, mine.env_auth, mine.access_key_id, mine.secret_access_key) == (
            theirs.endpoint,
            theirs.region,
            theirs.env_auth,
            theirs.access_key_id,
            theirs.secret_access_key,
        )

    async def copy_within(
        self, source: object, source_uri: str, uri: str, size: int, method: ChecksumMethod
    ) -> tuple[str, int] | None:
        """Copy ``source_uri`` of ``source`` to ``uri`` inside the S3 service (CopyObject, or UploadPartCopy
        for objects beyond what CopyObject takes: none of the bytes pass through DLM), S3 computing the
        copy's checksum by ``method``; returns it (hex) and the bytes DLM read to know it (0 unless the
        store computes none). None, with nothing copied, when S3 cannot: another service or other
        credentials, a method S3 does not compute. Never over an existing object: looked for first, and
        a copy in parts completes only if nothing is at the key (If-None-Match)."""
        algorithm = _SERVER_CHECKSUMS.get(method)
        if algorithm is None or not self._same_service(source):
            return None
        assert isinstance(source, S3Backend)
        self._confirmed.discard(uri)
        copy_source = {"Bucket": source.bucket, "Key": source.key(source_uri)}
        with self._translated(uri):
            if await self.stat(uri) is not None:
                raise PayloadExists(f"{uri!r} exists already; DLM never overwrites a payload")
            try:
                if size <= MAX_COPY_OBJECT:
                    response = await self._client.copy_object(
                        Bucket=self.bucket, Key=self.key(uri), CopySource=copy_source, ChecksumAlgorithm=algorithm
                    )
                    computed = response.get("CopyObjectResult", {}).get(f"Checksum{algorithm}")
                else:
                    computed = await self._copy_in_parts(copy_source, self.key(uri), size, algorithm)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NO_SERVER_COPY:
                    return None  # a store that does not copy, or not with a checksum: the bytes stream
                raise
        if not computed:
            # A store that copies but computes no checksum: the copy is read back once, here.
            return await self.checksum(uri, method), size
        digest = base64.b64decode(computed)
        return (f"{int.from_bytes(digest, 'big'):08x}" if method is ChecksumMethod.CRC32C else digest.hex()), 0

    async def _copy_in_parts(self, copy_source: dict[str, str], key: str, size: int, algorithm: str) -> str | None:
        """UploadPartCopy of the object's ranges, upload_concurrency at a time; returns its checksum
        (base64) combined from the parts' where S3 gave one for each and they combine (CRC32C), else
        None. Any failure aborts the upload."""
        part_size = max(self.part_size(size), COPY_PART_SIZE)
        await self._abort_stale_uploads(key)
        created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ChecksumAlgorithm=algorithm)
        upload_id = created["UploadId"]
        slots = asyncio.Semaphore(self.settings.upload_concurrency)
        field = f"Checksum{algorithm}"

        async def copy_part(number: int, start: int) -> tuple[dict[str, Any], int]:
            end = min(size, start + part_size) - 1
            async with slots:
                copied = await self._client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=copy_source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
            result = copied["CopyPartResult"]
            part = {"PartNumber": number, "ETag": result["ETag"], **({field: result[field]} if field in result else {})}
            return part, end - start + 1

        try:
            parts = await asyncio.gather(
                *(copy_part(number, start) for number, start in enumerate(range(0, size, part_size), 1))
            )
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": [part for part, _ in parts]},
                IfNoneMatch="*",
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        if algorithm != "CRC32C" or any(field not in part for part, _ in parts):
            return None
        combined: int | None = None
        for part, length in parts:
            value = int.from_bytes(base64.b64decode(part[field]), "big")
            combined = value if combined is None else crc32c_combine(combined, value, length)
        assert combined is not None
        return base64.b64encode(combined.to_bytes(4, "big")).decode()

    def _note_etag(self, uri: str, response: dict[str, Any], sent: str) -> None:
        """Remember ``uri`` as confirmed when S3's ETag of what it stored is the one the bytes sent make."""
        if _stored_etag(response) == sent:
            self._confirmed.add(uri)

    def stored_as_sent(self, uri: str) -> bool:
        """Confirmed by the ETag of its PUT or multipart upload; any other ETag (an object encrypted with
        KMS or a customer key, a store that makes its ETags its own way) confirms nothing."""
        return uri in self._confirmed

    async def _abort_stale_uploads(self, key: str) -> None:
        """A writer that crashed mid-upload leaves its parts billed and invisible; the next write of the
        same key (the resumed job) clears them."""
        listed = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for upload in listed.get("Uploads", []):
            if upload["Key"] == key:
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])

    async def delete(self, uri: str) -> bool:
        key = self.key(uri)
        found = False
        self._confirmed.discard(uri)
        with self._translated(uri):
            info = await self.stat(uri)
            if info is not None and not info.is_container:
                await self._client.delete_object(Bucket=self.bucket, Key=key)
                found = True
            batch: list[dict[str, str]] = []
            async for listed in self._list(f"{key}/"):
                batch.append({"Key": listed["Key"]})
                if len(batch) == 1000:
                    await self._delete_batch(batch)
                    batch, found = [], True
            if batch:
                await self._delete_batch(batch)
                found = True
        return found

    async def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        response = await self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        if errors := response.get("Errors"):
            raise StorageRefused(f"s3://{self.bucket}/{errors[0]['Key']}: {errors[0].get('Code')}")

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for listed in page.get("Contents", []):
                yield listed

    async def walk(self, uri: str = "") -> AsyncIterator[Entry]:
        with self._translated(uri):
            if uri:
                info = await self.stat(uri)
                if info is None:
                    raise PayloadMissing(f"no payload at {uri!r}")
                if not info.is_container:
                    yield Entry(path="", size=info.size or 0)
                    return
                prefix = f"{self.key(uri)}/"
            else:
                prefix = self.prefix
            async for listed in self._list(prefix):
                relative = listed["Key"][len(prefix) :]
                if relative and not relative.endswith("/"):  # skip "directory" marker objects
                    yield Entry(path=relative, size=listed["Size"])

    async def presigned_url(self, uri: str, seconds: int) -> str:
        """A URL that reads the object without credentials, for ``seconds``."""
        with self._translated(uri):
            url: str = await self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(uri)}, ExpiresIn=seconds
            )
        return url

    async def checksum(self, uri: str, method: ChecksumMethod) -> str:
        hasher = new_hasher(method)
        async for chunk in self.read(uri):
            hasher.update(chunk)
        return hasher.hexdigest()


def _parents(key: str, below: str) -> Iterator[str]:
    """The directories ``key`` lies in, below ``below`` (the deepest first)."""
    while (key := key.rpartition("/")[0]) and len(key) > len(below):
        yield key


def _stored_etag(response: dict[str, Any]) -> str | None:
    """The ETag S3 gave what it stored; None where it says nothing of the bytes (objects encrypted with
    KMS or a customer key)."""
    if response.get("SSECustomerAlgorithm") or str(response.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return None
    return str(response.get("ETag", "")).strip('"') or None
