"""The blob store: immutable bytes under keys, behind one small interface.

Keys are ``/``-separated relative paths built by tinkerstore itself (``v/<version_id>/<file>``),
never taken from a request; implementations still refuse any key with an empty, ``.`` or ``..``
segment, a leading ``/`` or a backslash, so no key can escape the store's root.

Call order of a write (one version's files, see ``tinkerstore.store.catalog.base``)::

    w = blobs.writer(key)       # nothing visible under key yet
    w.write(chunk) ...          # any number of chunks
    w.commit()                  # durable (fsync'd / uploaded); returns bytes written
      or w.abort()              # nothing left behind

Blobs are written once and never modified. Whether a blob is *live* is the catalog's business:
the store only offers ``list_prefixes`` and ``delete_prefix`` to the sweeper.

Implementations: ``MemoryBlobStore`` (the in-memory twin), ``FileBlobStore`` (a local
directory), ``S3BlobStore`` (any S3-compatible server). All pass
``tests/store/blobs/test_blobs_contract.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Protocol

from tinkerstore.errors import InvalidPath

__all__ = ["BlobStore", "BlobWriter", "check_key"]


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise ``InvalidPath``."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidPath(f"invalid blob key {key!r}")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidPath(f"invalid blob key {key!r}: segment {part!r}")
    return key


class BlobWriter(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> int:
        """Make the blob durable and visible under its key; return its size."""

    def abort(self) -> None:
        """Discard what was written (safe to call after a failed write)."""


class BlobStore(Protocol):
    def writer(self, key: str) -> BlobWriter: ...

    def put(self, key: str, data: bytes) -> None:
        """Write a small blob in one go (durable on return)."""

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``data`` only if nothing is stored under ``key`` (a conditional write on S3);
        return whether this call wrote it."""

    def get(self, key: str) -> bytes:
        """Read a whole (small) blob. Raises ``FileNotFoundError`` if absent."""

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` in chunks of at most ~1 MiB, reading lazily.

        Raises ``FileNotFoundError`` if absent (before yielding anything).
        """

    def size(self, key: str) -> int:
        """Raises ``FileNotFoundError`` if absent."""

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under ``prefix`` (which ends in ``/``); return how many."""

    def list_prefixes(self, parent: str) -> Iterator[tuple[str, datetime]]:
        """Yield ``(child_prefix, last_modified)`` for the direct children of ``parent``
        (e.g. ``"v/"`` yields ``"v/<version_id>/"``). Used by the sweeper for orphans."""

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key`` on a local filesystem, if any (lets the server use
        zero-copy file responses); ``None`` for remote stores."""

    def presign_get(self, key: str, expires_in: int) -> str | None:
        """A URL the object store itself serves and verifies, or ``None`` if the store cannot
        (local stores: the server signs its own URLs instead)."""
