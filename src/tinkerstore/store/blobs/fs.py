"""``FileBlobStore``: blobs as files under one root directory.

A writer streams into ``<root>/tmp/<random>.part`` (same filesystem as the target, so the final
rename is atomic), and ``commit`` does what a crash-safe publish needs, in this order::

    fsync(temp file) -> mkdir parents -> rename(temp, target) -> fsync(parent dirs)

so after ``commit`` returns the blob survives a power cut, and before it nothing is visible
under the key. A writer opened with ``durable=False`` skips both fsyncs: the caller promises to
call ``sync_prefix`` on a prefix holding the key before it relies on the blob (a checkpoint save
writes several blobs under its version's prefix and syncs the prefix once, before its catalog
commit, instead of paying one journal commit per blob and per directory).

A crash leaves at most an orphan in ``tmp/``, which ``cleanup_tmp`` removes at start-up.
The first key segment ``tmp`` is therefore reserved.

Every key is checked twice: ``check_key`` refuses dot segments and the like, then the resolved
path (symlinks followed) must still lie under the resolved root.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinkerstore.errors import InvalidPath, StorageFull
from tinkerstore.store.blobs.base import check_key
from tinkerstore.store.blobs.memory import CHUNK_SIZE, check_prefix, clamp_range

__all__ = ["TMP_DIR", "FileBlobStore", "FileBlobWriter"]

TMP_DIR = "tmp"
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Every this many bytes, a writer asks the kernel (from a helper thread, so the writer never
# waits) to start writing back what it has written so far: the disk then works while we still
# copy, and the final fsync waits only for the tail. POSIX_FADV_DONTNEED starts asynchronous
# writeback of the range and evicts only pages already clean, which fresh writes are not.
WRITEBACK_BYTES = 8 << 20
_WRITEBACK = hasattr(os, "posix_fadvise")
_sync_pool: ThreadPoolExecutor | None = None
_sync_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _sync_pool
    with _sync_pool_lock:
        if _sync_pool is None:
            _sync_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tinkerstore-sync")
        return _sync_pool


def _fsync_all(paths: list[str]) -> None:
    """fsync every path, concurrently: the kernel merges the cache flushes and journal commits
    of fsyncs in flight together, so N of them cost about what the slowest one does."""
    fds: list[int] = []
    try:
        for path in paths:
            fds.append(os.open(path, os.O_RDONLY))
        for _ in _pool().map(os.fsync, fds):
            pass
    finally:
        for fd in fds:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(path: str | Path) -> None:
    """``shutil.rmtree`` that tolerates a concurrent remover (sweeper vs. start-up cleanup)."""

    def onerror(func: object, failed: str, exc_info: tuple[Any, BaseException, Any]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=onerror)


def _storage_full(exc: OSError, root: Path, key: str) -> StorageFull:
    return StorageFull(
        f"no space left on the blob store at {root} while writing {key!r}: {exc.strerror}",
        hint="free disk space (or raise the quota) under the store root, then retry the save",
    )


class FileBlobWriter:
    """Streams to a temp file; ``commit`` renames it into place durably."""

    def __init__(
        self, store: FileBlobStore, key: str, target: Path, *, durable: bool = True
    ) -> None:
        self._store = store
        self._key = key
        self._target = target
        self._durable = durable
        self._tmp = store._new_tmp_path()
        self._fd: int | None = None
        self._size = 0
        self._kicked = 0  # bytes before this offset were handed to writeback
        self._writeback: list[Future[None]] = []
        self._state = "open"
        try:
            self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:  # out of inodes is a full disk too
            raise self._fail(exc) from exc

    def __del__(self) -> None:
        # A writer dropped without commit/abort (a bug, or an exception in between) must not
        # leak its descriptor; its temp file goes too rather than waiting for cleanup_tmp.
        if getattr(self, "_state", None) == "open":
            try:
                self.abort()
            except OSError:
                pass

    def _fail(self, exc: OSError) -> Exception:
        """Clean up after a failed write/commit and pick the error to raise."""
        self.abort()
        self._state = "failed"
        if exc.errno in _FULL_ERRNOS:
            return _storage_full(exc, self._store.root, self._key)
        return exc

    def write(self, data: bytes | memoryview) -> None:
        if self._state != "open" or self._fd is None:
            raise ValueError(f"write to a {self._state} blob writer for {self._key!r}")
        view = memoryview(data).cast("B")
        try:
            while view:  # os.write may write less than asked (signals, pipes, near-full disks)
                n = os.write(self._fd, view)
                view = view[n:]
                self._size += n
        except OSError as exc:
            raise self._fail(exc) from exc
        if _WRITEBACK and self._size - self._kicked >= WRITEBACK_BYTES:
            start, length = self._kicked, self._size - self._kicked
            self._kicked = self._size
            self._writeback.append(
                _pool().submit(os.posix_fadvise, self._fd, start, length, os.POSIX_FADV_DONTNEED)
            )

    def _drain_writeback(self) -> None:
        """Wait for the writeback requests in flight: they use our descriptor."""
        pending, self._writeback = self._writeback, []
        for request in pending:
            try:
                request.result()
            except OSError:
                pass  # only a hint; fsync reports real I/O errors

    def commit(self) -> int:
        self._finish(replace=True)
        return self._size

    def _finish(self, *, replace: bool) -> bool:
        """fsync, close and publish; with ``replace=False`` only if the key is still free."""
        if self._state != "open" or self._fd is None:
            raise ValueError(f"commit of a {self._state} blob writer for {self._key!r}")
        try:
            self._drain_writeback()
            if self._durable:
                os.fsync(self._fd)  # data on disk before the name points at it
            os.close(self._fd)
            self._fd = None
            published = self._store._publish(
                self._tmp, self._target, replace=replace, durable=self._durable
            )
        except OSError as exc:
            raise self._fail(exc) from exc
        self._state = "committed"
        return published

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        self._drain_writeback()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._tmp.unlink(missing_ok=True)


class FileBlobStore:
    """A ``BlobStore`` over a local directory (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        (self.root / TMP_DIR).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The path for ``key``, refusing anything that could land outside the root."""
        check_key(key)
        if key.split("/", 1)[0] == TMP_DIR:
            raise InvalidPath(
                f"invalid blob key {key!r}: {TMP_DIR!r} is reserved for in-flight writes",
                hint="choose a key that does not start with 'tmp/'",
            )
        path = self.root / key
        # check_key already refused '..'; resolving catches a symlink planted inside the root.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidPath(f"blob key {key!r} resolves outside the store root {self.root}")
        return path

    def _file(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no blob under key {key!r} in {self.root}")
        return path

    def _new_tmp_path(self) -> Path:
        return self.root / TMP_DIR / f"{secrets.token_hex(16)}.part"

    def _publish(self, tmp: Path, target: Path, *, replace: bool, durable: bool = True) -> bool:
        """Move a fsync'd temp file to ``target``; with ``replace=False`` only if absent.

        Returns whether ``target`` now holds ``tmp``'s bytes. Parent directories created on the
        way are fsync'd into their own parents, so the whole path survives a crash (unless
        ``durable`` is false: then ``sync_prefix`` does it later).
        """
        created: list[Path] = []
        parent = target.parent
        while not parent.is_dir():
            created.append(parent)
            parent = parent.parent
        for d in reversed(created):
            try:
                d.mkdir()
            except FileExistsError:
                pass  # a concurrent writer made it first
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic create-if-absent, unlike rename
            except FileExistsError:
                tmp.unlink(missing_ok=True)
                return False
            tmp.unlink()
        if durable:
            for d in {target.parent, *(c.parent for c in created)}:
                _fsync_dir(d)
        return True

    # -- the protocol ------------------------------------------------------------------------

    def writer(self, key: str, *, durable: bool = True) -> FileBlobWriter:
        """A writer for ``key``; ``durable=False``: see the module docstring (``sync_prefix``)."""
        return FileBlobWriter(self, key, self._path(key), durable=durable)

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        w = self.writer(key, durable=durable)
        w.write(data)
        w.commit()

    def sync_prefix(self, prefix: str) -> None:
        """Make everything under ``prefix`` durable: every file and directory in it, and every
        directory on the way up to the root (their entries for what lies below). The fsyncs
        run concurrently, so a whole checkpoint costs about what its largest file does."""
        check_prefix(prefix, allow_root=False)
        base = self._path(prefix[:-1])
        paths: list[str] = []
        for dirpath, _, filenames in os.walk(base, followlinks=False):
            paths.append(dirpath)
            paths.extend(os.path.join(dirpath, name) for name in filenames)
        parent = base.parent
        while parent.is_relative_to(self.root):
            paths.append(str(parent))
            if parent == self.root:
                break
            parent = parent.parent
        _fsync_all(paths)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if nothing is there yet; return whether we wrote it."""
        w = self.writer(key)
        w.write(data)
        return w._finish(replace=False)

    def get(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._file(key)  # raises FileNotFoundError now, before the first chunk
        lo, hi = clamp_range(start, end, path.stat().st_size)
        return self._read_chunks(path, lo, hi)

    @staticmethod
    def _read_chunks(path: Path, lo: int, hi: int) -> Iterator[bytes]:
        # Opened lazily, inside the generator, so an unstarted iterator holds no descriptor.
        if lo >= hi:
            return
        with path.open("rb", buffering=0) as f:
            f.seek(lo)
            remaining = hi - lo
            while remaining > 0:
                chunk = f.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise OSError(f"blob file {path} shrank while being read")
                remaining -= len(chunk)
                yield chunk

    def size(self, key: str) -> int:
        return self._file(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix, allow_root=False)
        path = self._path(prefix[:-1])
        if path.is_symlink() or not path.is_dir():
            return 0
        # Rename first: the whole prefix vanishes in one atomic step, and of two sweepers racing
        # for the same prefix exactly one wins the rename; the other deletes (and counts) nothing.
        doomed = self._new_tmp_path().with_suffix(".deleting")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return 0
        count = sum(len(files) for _, _, files in os.walk(doomed))
        _rmtree(doomed)  # a crash here leaves it to cleanup_tmp
        return count

    def list_prefixes(self, parent: str) -> Iterator[tuple[str, datetime]]:
        check_prefix(parent, allow_root=True)
        base = self._path(parent[:-1]) if parent else self.root
        if not base.is_dir():
            return iter(())
        found: list[tuple[str, datetime]] = []
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or (not parent and entry.name == TMP_DIR):
                continue
            # A directory's mtime moves when a blob is renamed into it, but not when one lands
            # deeper down; the newest mtime in the subtree is the time of its last commit.
            newest = max(os.stat(d).st_mtime for d, _, _ in os.walk(entry.path, followlinks=False))
            found.append((f"{parent}{entry.name}/", datetime.fromtimestamp(newest, UTC)))
        return iter(found)

    def local_path(self, key: str) -> Path | None:
        """The file holding ``key``; raises ``FileNotFoundError`` if absent."""
        return self._file(key)

    def presign_get(self, key: str, expires_in: int) -> str | None:
        self._path(key)
        return None

    def cleanup_tmp(self, older_than: datetime) -> int:
        """Remove what dead writers and deleters left in ``tmp/``; return how many entries.

        Only entries last modified before ``older_than`` go, so a write in flight in this or
        another process (its file's mtime moves with every chunk) is left alone.
        """
        cutoff = older_than.timestamp()
        removed = 0
        for entry in os.scandir(self.root / TMP_DIR):
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _rmtree(entry.path)  # a delete_prefix cut short by a crash
                else:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass  # committed, aborted or removed by someone else while we looked
        return removed
