"""``S3BlobStore``: blobs as objects in an S3-compatible bucket (AWS, SeaweedFS, MinIO, ...).

S3 has no rename, and needs none: an object appears atomically when ``put_object`` or
``complete_multipart_upload`` returns, so "nothing visible before commit" holds by itself.
A writer keeps at most one part in memory (``part_size``, 8 MiB by default): a blob that fits in
one part goes up with a single ``put_object`` at commit, a larger one as a multipart upload
whose parts leave as they fill. ``abort`` aborts the multipart upload so no parts linger.

Keys live under an optional ``prefix`` inside the bucket (``s3://bucket/prefix``), so several
deployments or test runs can share one bucket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tinkerstore.errors import TinkerstoreError, Unavailable
from tinkerstore.store.blobs.base import check_key
from tinkerstore.store.blobs.memory import CHUNK_SIZE, check_prefix

__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "S3BlobStore", "S3BlobWriter"]

log = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's own floor for every part but the last
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _last(end: int | None) -> str:
    """The inclusive last byte of an HTTP Range for an exclusive ``end`` (open if ``None``)."""
    return "" if end is None else str(end - 1)


def _wrap(exc: Exception, what: str) -> TinkerstoreError:
    """Turn a boto error into our tree: unreachable -> Unavailable, anything else -> 500."""
    if isinstance(exc, ClientError):
        return TinkerstoreError(
            f"object store refused to {what}: {_code(exc)} {exc}",
            hint="check the bucket, credentials and permissions of the S3 blob store",
        )
    return Unavailable(
        f"object store unreachable while trying to {what}: {exc}",
        hint="check that the S3 endpoint is up and reachable, then retry",
    )


class S3BlobWriter:
    """Buffers one part at a time; ``commit`` completes the upload."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._obj = store._obj(key)
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0
        self._state = "open"

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        """Run one S3 call; on failure, clean up (abort) before raising our error."""
        try:
            return fn(Bucket=self._store.bucket, Key=self._obj, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            self.abort()
            self._state = "failed"
            raise _wrap(exc, f"{what} {self._obj!r}") from exc

    def _flush_part(self) -> None:
        client = self._store.client
        if self._upload_id is None:
            resp = self._call("start a multipart upload of", client.create_multipart_upload)
            self._upload_id = str(resp["UploadId"])
        number = len(self._parts) + 1
        resp = self._call(
            f"upload part {number} of",
            client.upload_part,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buf),
        )
        self._parts.append({"ETag": resp["ETag"], "PartNumber": number})
        self._buf.clear()

    def write(self, data: bytes | memoryview) -> None:
        if self._state != "open":
            raise ValueError(f"write to a {self._state} blob writer for {self._key!r}")
        view = memoryview(data).cast("B")
        part_size = self._store.part_size
        self._size += len(view)
        while view:
            room = part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= part_size:
                self._flush_part()

    def commit(self) -> int:
        if self._state != "open":
            raise ValueError(f"commit of a {self._state} blob writer for {self._key!r}")
        client = self._store.client
        if self._upload_id is None:
            self._call("upload", client.put_object, Body=bytes(self._buf))
        else:
            if self._buf:
                self._flush_part()
            self._call(
                "complete the multipart upload of",
                client.complete_multipart_upload,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buf = bytearray()
        self._state = "committed"
        return self._size

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._buf = bytearray()
        if self._upload_id is not None:
            try:
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._obj, UploadId=self._upload_id
                )
            except (BotoCoreError, ClientError) as exc:
                # abort runs on error paths: raising here would hide the original error. The
                # parts stay until the bucket's lifecycle rule for incomplete uploads runs.
                log.warning("could not abort multipart upload of %r: %s", self._obj, exc)


class _BodyChunks:
    """Iterates a ``get_object`` body in chunks, and closes the connection when done or dropped."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self._chunks: Iterator[bytes] = body.iter_chunks(chunk_size=CHUNK_SIZE)

    def __iter__(self) -> _BodyChunks:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        self._body.close()

    def __del__(self) -> None:
        # An abandoned iterator must not pin a pooled connection until the pool runs dry.
        try:
            self.close()
        except Exception:  # noqa: S110 -- nothing useful to do in a finaliser
            pass


class S3BlobStore:
    """A ``BlobStore`` over ``s3://bucket/prefix``.

    ``client`` may be given (tests, custom sessions); otherwise one is built with SigV4 (presigned
    URLs need it on most S3-compatible servers), standard retries and path-style addressing when
    a custom ``endpoint_url`` is set (virtual hosts rarely resolve for self-hosted servers).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        addressing_style: str | None = None,
        max_attempts: int = 5,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size} is below S3's minimum of {MIN_PART_SIZE}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.part_size = part_size
        if client is None:
            config = Config(
                signature_version="s3v4",
                retries={"max_attempts": max_attempts, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": addressing_style or ("path" if endpoint_url else "auto")},
                # Only checksum where S3 demands it: several S3-compatible servers reject the
                # newer default trailing checksums, and our manifest carries its own hashes.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.client(
                "s3", endpoint_url=endpoint_url, region_name=region_name, config=config
            )
        self.client = client

    def __repr__(self) -> str:
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}')"

    def _obj(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _obj_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def _head(self, key: str) -> dict[str, Any]:
        obj = self._obj(key)
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=obj))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise FileNotFoundError(f"no blob under key {key!r} in {self!r}") from exc
            raise _wrap(exc, f"read {obj!r}") from exc
        except BotoCoreError as exc:
            raise _wrap(exc, f"read {obj!r}") from exc

    def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(self, key)

    def put(self, key: str, data: bytes) -> None:
        obj = self._obj(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=obj, Body=bytes(data))
        except (BotoCoreError, ClientError) as exc:
            raise _wrap(exc, f"upload {obj!r}") from exc

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if no object is there (``If-None-Match: *``); return whether we did.

        The server arbitrates, so two replicas racing for one key cannot both win.
        """
        obj = self._obj(key)
        for attempt in range(4):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=obj, Body=bytes(data), IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                if _code(exc) == "PreconditionFailed":
                    return False
                # 409: another conditional write to this key is in flight; its outcome decides.
                if _code(exc) == "ConditionalRequestConflict" and attempt < 3:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                raise _wrap(exc, f"conditionally upload {obj!r}") from exc
            except BotoCoreError as exc:
                raise _wrap(exc, f"conditionally upload {obj!r}") from exc
        raise AssertionError("unreachable")

    def get(self, key: str) -> bytes:
        return b"".join(self.open_range(key))  # no Range header: one plain GET

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        obj = self._obj(key)
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"byte range [{start}, {end}) has a negative bound")
        if end is not None and end <= start:
            self._head(key)  # an empty range still needs the blob to exist
            return iter(())
        # S3 clamps an end past the object's size itself; a start at or past it is a 416.
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{_last(end)}"}
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=obj, **ranged)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise FileNotFoundError(f"no blob under key {key!r} in {self!r}") from exc
            if _code(exc) == "InvalidRange":  # start at or past the end: exists, nothing to read
                return iter(())
            raise _wrap(exc, f"read {obj!r}") from exc
        except BotoCoreError as exc:
            raise _wrap(exc, f"read {obj!r}") from exc
        return _BodyChunks(resp["Body"])

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def _list(self, prefix: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._obj_prefix(prefix), **kwargs
            )
            yield from pages
        except (BotoCoreError, ClientError) as exc:
            raise _wrap(exc, f"list {self._obj_prefix(prefix)!r}") from exc

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix, allow_root=False)
        count = 0
        for page in self._list(prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), _DELETE_BATCH):
                batch = keys[i : i + _DELETE_BATCH]
                try:
                    resp = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                    )
                except (BotoCoreError, ClientError) as exc:
                    raise _wrap(exc, f"delete under {self._obj_prefix(prefix)!r}") from exc
                if resp.get("Errors"):
                    first = resp["Errors"][0]
                    raise TinkerstoreError(
                        f"object store failed to delete {len(resp['Errors'])} objects under "
                        f"{self._obj_prefix(prefix)!r}, e.g. {first.get('Key')!r}: "
                        f"{first.get('Code')} {first.get('Message')}",
                        hint="check the store's delete permissions; the sweeper will retry",
                    )
                count += len(batch)
        return count

    def list_prefixes(self, parent: str) -> Iterator[tuple[str, datetime]]:
        check_prefix(parent, allow_root=True)
        cut = len(self._obj_prefix(""))
        children = [
            cp["Prefix"][cut:]
            for page in self._list(parent, Delimiter="/")
            for cp in page.get("CommonPrefixes", [])
        ]
        # S3 has no directory times: a prefix is as new as its newest object (for the sweeper's
        # grace period, the conservative choice). One listing per child; versions hold few files.
        found: list[tuple[str, datetime]] = []
        for child in children:
            times = [
                o["LastModified"] for page in self._list(child) for o in page.get("Contents", [])
            ]
            if times:
                found.append((child, max(times).astimezone(UTC)))
        return iter(found)

    def local_path(self, key: str) -> Path | None:
        self._obj(key)
        return None

    def presign_get(self, key: str, expires_in: int) -> str | None:
        """A SigV4 presigned GET URL, verified (signature and expiry) by the object store."""
        obj = self._obj(key)
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": obj}, ExpiresIn=expires_in
            )
        )
