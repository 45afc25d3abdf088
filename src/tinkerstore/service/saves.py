"""One checkpoint save: begin (pending record) → write files → commit (one catalog transaction).

Everything a ``PendingSave`` writes lives under its version's own blob prefix, which no reader
can reach until the commit points the checkpoint name at it. A save that fails, is aborted or
dies with its process leaves a pending or failed version whose blobs the sweeper removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tinkerstore.errors import InvalidInput, StorageFull, TinkerstoreError
from tinkerstore.store.blobs.base import BlobWriter
from tinkerstore.store.catalog.base import CheckpointRecord, VersionRecord
from tinkerstore.store.format import FileEntry, HashingWriter, Manifest, file_key, manifest_key

if TYPE_CHECKING:
    from tinkerstore.service.store import Store

__all__ = ["CHUNK", "PendingSave"]

CHUNK = 1 << 20


@runtime_checkable
class _DeferredSync(Protocol):
    """A blob store whose writers can skip their own fsyncs (``FileBlobStore``): a save then
    syncs its whole version prefix once, before the catalog commit, instead of paying a
    journal commit per blob and per directory. Other stores are durable per blob anyway."""

    def writer(self, key: str, *, durable: bool = True) -> BlobWriter: ...

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None: ...

    def sync_prefix(self, prefix: str) -> None: ...


class _FileWriter:
    """Writes one file of a pending save; commits the file when the ``with`` block ends."""

    def __init__(self, save: PendingSave, relpath: str) -> None:
        self._save = save
        key = file_key(save.version.blob_prefix, relpath)
        blobs = save._store.blobs
        inner: BlobWriter
        if isinstance(blobs, _DeferredSync):
            inner = blobs.writer(key, durable=False)  # PendingSave.commit syncs the prefix
        else:
            inner = blobs.writer(key)
        self._writer = HashingWriter(relpath, inner)
        self._done = False

    def write(self, data: bytes | memoryview) -> None:
        with _storage_errors():
            self._writer.write(data)

    def close(self) -> FileEntry:
        with _storage_errors():
            entry = self._writer.commit()
        self._done = True
        self._save._add_entry(entry)
        return entry

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._writer.abort()

    def __enter__(self) -> _FileWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """Turn ENOSPC from any blob store into ``StorageFull``; everything else passes through."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise StorageFull(
            "no space left on the storage device while writing a checkpoint",
            hint="free space or raise the quota, then save again; earlier checkpoints are intact",
        ) from exc


class PendingSave:
    """A save in progress. Use as a context manager: leaving the block without ``commit()``
    (or with an exception) aborts the save and marks its version failed."""

    def __init__(
        self,
        store: Store,
        version: VersionRecord,
        tinker_path: str,
        expires_at: datetime | None,
        on_commit: Callable[[CheckpointRecord], None],
    ) -> None:
        self._store = store
        self.version = version
        self.tinker_path = tinker_path
        self._expires_at = expires_at
        self._on_commit = on_commit
        self._entries: dict[str, FileEntry] = {}
        self._state = "open"

    # -- writing ----------------------------------------------------------------------------
    def open_file(self, relpath: str) -> _FileWriter:
        self._check_open()
        if relpath in self._entries:
            raise InvalidInput(f"file {relpath!r} was already written to this checkpoint")
        return _FileWriter(self, relpath)

    def add_file(self, relpath: str, data: bytes | memoryview) -> FileEntry:
        with self.open_file(relpath) as f:
            view = memoryview(data)
            for start in range(0, len(view), CHUNK * 16):
                f.write(view[start : start + CHUNK * 16])
        return self._entries[relpath]

    def add_path(self, relpath: str, path: Path) -> FileEntry:
        with self.open_file(relpath) as f, open(path, "rb") as src:
            while chunk := src.read(CHUNK * 8):
                f.write(chunk)
        return self._entries[relpath]

    def add_directory(self, directory: Path) -> list[FileEntry]:
        """Store every regular file under ``directory`` (relative paths kept). Symlinks and other
        special files are refused: a checkpoint is plain bytes."""
        added = []
        for relpath, path in _walk_regular_files(directory):
            added.append(self.add_path(relpath, path))
        return added

    def _add_entry(self, entry: FileEntry) -> None:
        self._entries[entry.path] = entry

    # -- finishing --------------------------------------------------------------------------
    def commit(self, metadata: dict[str, Any] | None = None) -> CheckpointRecord:
        """Write the manifest, then commit in one catalog transaction. After this returns the
        checkpoint is visible and durable; if it raises, it is not visible."""
        self._check_open()
        if not self._entries:
            self.abort("a checkpoint needs at least one file")
            raise InvalidInput("a checkpoint needs at least one file")
        manifest = Manifest.build(
            self.tinker_path, self._entries.values(), metadata, created_at=self._store.now()
        )
        blobs = self._store.blobs
        prefix = self.version.blob_prefix
        try:
            with _storage_errors():
                if isinstance(blobs, _DeferredSync):
                    # Durability before visibility: every file, the manifest and all their
                    # directory entries are fsync'd here, before the catalog commit below.
                    blobs.put(manifest_key(prefix), manifest.to_bytes(), durable=False)
                    blobs.sync_prefix(prefix)
                else:
                    blobs.put(manifest_key(prefix), manifest.to_bytes())
            record = self._store.catalog.commit_version(
                self.version.version_id,
                size_bytes=manifest.total_size,
                manifest_digest=manifest.digest(),
                now=self._store.now(),
                expires_at=self._expires_at,
            )
        except BaseException as exc:
            self.abort(f"commit failed: {exc}")
            raise
        self._state = "committed"
        self._on_commit(record)
        return record

    def abort(self, error: str) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._store.catalog.fail_version(
                self.version.version_id, error[:2000], self._store.now()
            )
        except TinkerstoreError:
            pass  # already failed by the sweeper: nothing else to record

    def _check_open(self) -> None:
        if self._state != "open":
            raise InvalidInput(f"this save of {self.tinker_path} is already {self._state}")

    def __enter__(self) -> PendingSave:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "open":
            self.abort(f"save abandoned: {exc!r}" if exc else "save abandoned without commit")


def _walk_regular_files(directory: Path) -> Iterator[tuple[str, Path]]:
    root = Path(directory)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidInput(
                    f"{path} is not a regular file", hint="checkpoints hold regular files only"
                )
            yield path.relative_to(root).as_posix(), path


def expiry(now: datetime, ttl_seconds: int | None) -> datetime | None:
    return None if ttl_seconds is None else now + timedelta(seconds=ttl_seconds)
