"""The on-disk format of one checkpoint version: its files plus a manifest.

A version lives under ``v/<version_id>/`` in the blob store::

    v/<version_id>/files/<relative path>   the checkpoint's own files (safetensors, JSON, ...)
    v/<version_id>/manifest.json           written last; lists every file with size and checksum

The catalog stores the SHA-256 of the manifest bytes, so neither a file nor the manifest can be
altered without ``verify`` noticing. File checksums are XXH3-128: they guard against torn writes
and bit rot, are computed while writing (no second pass) and run far faster than the disk.

``format_version`` 1 is this layout. A reader refuses a version it does not know with a clear
error instead of guessing; ``tests/golden/`` keeps one committed checkpoint per released version.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import xxhash
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tinkerstore.errors import CheckpointCorrupted, InvalidManifest, InvalidPath
from tinkerstore.store.blobs.base import BlobStore, BlobWriter, check_key

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_MANIFEST_BYTES",
    "FileEntry",
    "HashingWriter",
    "Manifest",
    "check_relpath",
    "file_key",
    "manifest_key",
    "read_manifest",
    "read_verified",
    "verified_chunks",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# A manifest lists a handful of files; cap it before parsing so a hostile blob cannot make us
# allocate without bound.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_FILES = 10_000
HASH_ALGORITHM = "xxh3_128"
# Writes hash each 256 KiB piece right after copying it to the kernel, while it is still in the
# CPU cache (hashing 64 MiB afterwards would read it back from RAM). Reads are the other way
# round: the kernel's copy into the result is fastest in few large reads (many small reads into
# fresh memory measured up to 2x slower), so they come in 16 MiB pieces, each hashed after it
# arrives. Both measured on a busy 2-core VM, ahead of hashing on a helper thread, which only
# pays off when a core is idle.
_WRITE_PIECE = 256 << 10
_READ_PIECE = 16 << 20


def check_relpath(relpath: str) -> str:
    """A file path inside a checkpoint: relative, ``/``-separated, no dot segments."""
    try:
        check_key(relpath)
    except InvalidPath:
        raise InvalidPath(
            f"invalid file path {relpath!r} inside a checkpoint",
            hint="use a relative path without '.', '..', empty segments or backslashes",
        ) from None
    if len(relpath) > 1024:
        raise InvalidPath(f"file path inside a checkpoint is too long ({len(relpath)} chars)")
    return relpath


def file_key(blob_prefix: str, relpath: str) -> str:
    return f"{blob_prefix}files/{check_relpath(relpath)}"


def manifest_key(blob_prefix: str) -> str:
    return f"{blob_prefix}{MANIFEST_NAME}"


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    xxh3_128: str = Field(pattern=r"^[0-9a-f]{32}$")

    @field_validator("path")
    @classmethod
    def _path_is_safe(cls, value: str) -> str:
        return check_relpath(value)


class Manifest(BaseModel):
    """The manifest of one checkpoint version (JSON, sorted keys, UTF-8)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int
    tinker_path: str
    created_at: datetime
    files: tuple[FileEntry, ...]
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: tuple[FileEntry, ...]) -> tuple[FileEntry, ...]:
        if len(files) > MAX_FILES:
            raise ValueError(f"too many files ({len(files)} > {MAX_FILES})")
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate file paths")
        return files

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def entry(self, relpath: str) -> FileEntry:
        for f in self.files:
            if f.path == relpath:
                return f
        raise KeyError(relpath)

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def build(
        cls,
        tinker_path: str,
        files: Iterable[FileEntry],
        metadata: dict[str, Any] | None = None,
        created_at: datetime | None = None,
    ) -> Manifest:
        return cls(
            format_version=FORMAT_VERSION,
            tinker_path=tinker_path,
            created_at=created_at or datetime.now(UTC),
            files=tuple(sorted(files, key=lambda f: f.path)),
            metadata=metadata or {},
        )

    @classmethod
    def parse(cls, raw: bytes, *, expected_digest: str | None = None) -> Manifest:
        """Parse manifest bytes; with ``expected_digest`` also check them against the catalog."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(
                f"manifest is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} cap"
            )
        if expected_digest is not None and hashlib.sha256(raw).hexdigest() != expected_digest:
            raise CheckpointCorrupted(
                f"{MANIFEST_NAME} does not match the digest recorded at commit",
                hint="the checkpoint was altered on storage; restore it from a backup or delete it",
            )
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidManifest(f"manifest is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidManifest("manifest must be a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise InvalidManifest(
                f"unsupported checkpoint format_version {version!r}",
                hint=f"this tinkerstore reads format_version {FORMAT_VERSION}; upgrade tinkerstore",
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidManifest(f"malformed manifest: {exc.errors()[0]['msg']}") from exc


class HashingWriter:
    """Wraps a ``BlobWriter``, counting bytes and computing XXH3-128 as the bytes go by."""

    def __init__(self, relpath: str, inner: BlobWriter) -> None:
        self.relpath = check_relpath(relpath)
        self._inner = inner
        self._hash = xxhash.xxh3_128()
        self._size = 0

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, _WRITE_PIECE):
            piece = view[start : start + _WRITE_PIECE]
            self._inner.write(piece)
            self._hash.update(piece)  # still in the cache from the copy just made
        self._size += view.nbytes

    def commit(self) -> FileEntry:
        self._inner.commit()
        return FileEntry(path=self.relpath, size=self._size, xxh3_128=self._hash.hexdigest())

    def abort(self) -> None:
        self._inner.abort()


def read_manifest(blobs: BlobStore, blob_prefix: str, expected_digest: str) -> Manifest:
    key = manifest_key(blob_prefix)
    try:
        raw = blobs.get(key)
    except FileNotFoundError:
        raise CheckpointCorrupted(
            f"{MANIFEST_NAME} is missing from storage",
            hint="the checkpoint's files were removed outside tinkerstore; delete the checkpoint",
        ) from None
    return Manifest.parse(raw, expected_digest=expected_digest)


def _corrupted(entry: FileEntry) -> CheckpointCorrupted:
    return CheckpointCorrupted(
        f"file {entry.path!r} is corrupted (size or checksum differs from the manifest)",
        hint="restore the checkpoint from a backup or delete it",
    )


def _missing(entry: FileEntry) -> CheckpointCorrupted:
    return CheckpointCorrupted(
        f"file {entry.path!r} is missing from storage",
        hint="the checkpoint's files were removed outside tinkerstore; delete the checkpoint",
    )


def _bytes_api() -> tuple[Any, Any] | None:
    api = getattr(ctypes, "pythonapi", None)  # CPython only
    if api is None:
        return None
    make, addr = api.PyBytes_FromStringAndSize, api.PyBytes_AsString
    make.restype, make.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_ssize_t]
    addr.restype, addr.argtypes = ctypes.c_void_p, [ctypes.py_object]
    return make, addr


_BYTES_API = _bytes_api()


def _new_bytes(size: int) -> tuple[bytes, memoryview]:
    """A fresh ``bytes`` of ``size`` and a writable view of it, to be filled before it is used.

    This is the C API's own way to build a bytes object in place
    (``PyBytes_FromStringAndSize(NULL, n)``, then fill it): the file is read straight into the
    result, one copy like ``Path.read_bytes``, where a ``bytearray`` would cost a second full
    copy into ``bytes``. Nobody else sees the object until it is returned, filled.
    """
    if _BYTES_API is None or size == 0:
        buf = bytearray(size)
        return bytes(buf) if size == 0 else buf, memoryview(buf)  # type: ignore[return-value]
    make, addr = _BYTES_API
    out: bytes = make(None, size)
    return out, memoryview((ctypes.c_char * size).from_address(addr(out))).cast("B")


def read_verified(blobs: BlobStore, blob_prefix: str, entry: FileEntry) -> bytes:
    """A whole file's bytes, checked against the manifest's size and XXH3-128 (raises
    ``CheckpointCorrupted`` naming the file). Local files are read straight into the result
    (one copy, like ``Path.read_bytes``), hashing each piece as it arrives."""
    key = file_key(blob_prefix, entry.path)
    try:
        path = blobs.local_path(key)
    except FileNotFoundError:
        raise _missing(entry) from None
    if path is None:
        return b"".join(verified_chunks(blobs, blob_prefix, entry))
    hasher = xxhash.xxh3_128()
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError:
        raise _missing(entry) from None
    with f:
        if hasattr(os, "posix_fadvise"):
            # A larger readahead window: the disk keeps reading ahead while we hash a piece.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        out, view = _new_bytes(entry.size)
        pos = 0
        while pos < entry.size:
            n = f.readinto(view[pos : pos + _READ_PIECE])
            if not n:
                raise _corrupted(entry)  # shorter than the manifest says
            hasher.update(view[pos : pos + n])
            pos += n
        if f.read(1):
            raise _corrupted(entry)  # longer than the manifest says
    if hasher.hexdigest() != entry.xxh3_128:
        raise _corrupted(entry)
    return out


def verified_chunks(blobs: BlobStore, blob_prefix: str, entry: FileEntry) -> Iterator[bytes]:
    """Yield a whole file's bytes, raising ``CheckpointCorrupted`` (naming the file) at the end
    if its size or checksum differ from the manifest. Callers that must not act on bad bytes
    buffer or stage what they read until the generator finishes."""
    hasher = xxhash.xxh3_128()
    size = 0
    try:
        for chunk in blobs.open_range(file_key(blob_prefix, entry.path)):
            hasher.update(chunk)
            size += len(chunk)
            if size > entry.size:
                break
            yield chunk
    except FileNotFoundError:
        raise _missing(entry) from None
    if size != entry.size or hasher.hexdigest() != entry.xxh3_128:
        raise _corrupted(entry)
