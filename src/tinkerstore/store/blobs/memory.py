"""``MemoryBlobStore``: the in-memory twin of the blob store, for tests and throwaway servers.

It honours the same contract as the real stores (key checks, nothing visible before ``commit``,
range edges, prefixes) so a test that passes against it means something. Everything lives in
one dict behind a lock; blobs are immutable ``bytes``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from tinkerstore.errors import InvalidPath
from tinkerstore.store.blobs.base import check_key

__all__ = ["CHUNK_SIZE", "MemoryBlobStore", "MemoryBlobWriter", "check_prefix", "clamp_range"]

CHUNK_SIZE = 1024 * 1024


def check_prefix(prefix: str, *, allow_root: bool) -> str:
    """A prefix is ``""`` (the root, only where ``allow_root``) or a safe key plus ``/``."""
    if prefix == "" and allow_root:
        return prefix
    if not prefix.endswith("/"):
        raise InvalidPath(
            f"invalid blob prefix {prefix!r}",
            hint="a prefix is a relative key ending in '/', e.g. 'v/<version_id>/'",
        )
    check_key(prefix[:-1])
    return prefix


def clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """Clamp ``[start, end)`` to a blob of ``size`` bytes; an inverted range becomes empty.

    Reading past the end is not an error here (the HTTP layer decides about 416): it simply
    yields fewer bytes, like ``bytes[start:end]``.
    """
    if start < 0 or (end is not None and end < 0):
        raise ValueError(f"byte range [{start}, {end}) has a negative bound")
    stop = size if end is None else min(end, size)
    start = min(start, size)
    return start, max(start, stop)


class MemoryBlobWriter:
    """Collects chunks; ``commit`` publishes them under the key in one step."""

    def __init__(self, store: MemoryBlobStore, key: str) -> None:
        self._store = store
        self._key = key
        self._chunks: list[bytes] = []
        self._size = 0
        self._state = "open"

    def write(self, data: bytes | memoryview) -> None:
        if self._state != "open":
            raise ValueError(f"write to a {self._state} blob writer for {self._key!r}")
        # Copy: the caller may reuse its buffer (a memoryview over a bytearray) after we return.
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._size += len(chunk)

    def commit(self) -> int:
        if self._state != "open":
            raise ValueError(f"commit of a {self._state} blob writer for {self._key!r}")
        self._store._publish(self._key, b"".join(self._chunks))
        self._chunks = []
        self._state = "committed"
        return self._size

    def abort(self) -> None:
        if self._state == "open":
            self._chunks = []
            self._state = "aborted"


class MemoryBlobStore:
    """A ``BlobStore`` in a dict. Not durable, by design."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, tuple[bytes, datetime]] = {}

    def __repr__(self) -> str:
        return f"MemoryBlobStore({len(self._blobs)} blobs)"

    def _publish(self, key: str, data: bytes) -> None:
        with self._lock:
            self._blobs[key] = (data, datetime.now(UTC))

    def _get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            entry = self._blobs.get(key)
        if entry is None:
            raise FileNotFoundError(f"no blob under key {key!r}")
        return entry[0]

    def writer(self, key: str) -> MemoryBlobWriter:
        return MemoryBlobWriter(self, check_key(key))

    def put(self, key: str, data: bytes) -> None:
        self._publish(check_key(key), bytes(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if nothing is there yet; return whether we wrote it."""
        check_key(key)
        with self._lock:
            if key in self._blobs:
                return False
            self._blobs[key] = (bytes(data), datetime.now(UTC))
            return True

    def get(self, key: str) -> bytes:
        return self._get(key)

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        data = self._get(key)  # raises now, not at the first next()
        lo, hi = clamp_range(start, end, len(data))
        return (data[pos : min(pos + CHUNK_SIZE, hi)] for pos in range(lo, hi, CHUNK_SIZE))

    def size(self, key: str) -> int:
        return len(self._get(key))

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return key in self._blobs

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix, allow_root=False)
        with self._lock:
            doomed = [k for k in self._blobs if k.startswith(prefix)]
            for k in doomed:
                del self._blobs[k]
        return len(doomed)

    def list_prefixes(self, parent: str) -> Iterator[tuple[str, datetime]]:
        check_prefix(parent, allow_root=True)
        newest: dict[str, datetime] = {}
        with self._lock:
            for key, (_, mtime) in self._blobs.items():
                rest = key[len(parent) :] if key.startswith(parent) else None
                if rest is None or "/" not in rest:
                    continue  # not under parent, or a blob directly in it (not a child prefix)
                child = parent + rest.split("/", 1)[0] + "/"
                newest[child] = max(mtime, newest.get(child, mtime))
        return iter(sorted(newest.items()))

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    def presign_get(self, key: str, expires_in: int) -> str | None:
        check_key(key)
        return None
