"""The 0.25 archive on an object store: a tar object built once per checkpoint version.

On S3 the bytes of a download never pass through a replica: clients get a presigned URL of an
object. A 0.25 archive is not an object of the checkpoint, so the first request for it starts
building one in the background (``tarstream`` generates the tar from the manifest, each file is
streamed from the bucket into a multipart upload, one part in memory at a time) and answers
``503`` with ``Retry-After``, which the SDK retries for minutes (protocol.md §5.1). Once the
object exists, every replica answers with its presigned URL at once.

Where things live, under the version's blob prefix so the sweeper deletes them with it::

    v/<version_id>/archive.v<LAYOUT_VERSION>.tar          the cached archive (appears atomically
                                                          when the multipart upload completes)
    v/<version_id>/archive-build/<window>                 "someone is building", a conditional
                                                          put (If-None-Match) per time window

Two replicas never build one archive at the same time: the build marker is written with
``put_if_absent``, so the object store picks one winner per window. A builder that crashed does
not block anyone for long: its marker names a window of ``stale_after`` seconds, and in a later
window (once the marker is that old) the next request's put wins again. A build that overruns
its window may be duplicated; both write the same bytes to the same key, so that costs time only.
A build that finishes after its version was deleted leaves an orphan prefix the sweeper removes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from tinkerstore.errors import TinkerstoreError
from tinkerstore.server.tarstream import LAYOUT_VERSION, TarLayout, TarMember
from tinkerstore.service import Store
from tinkerstore.store.catalog.base import CheckpointRecord

__all__ = ["ArchiveBuilds", "archive_key", "for_app"]

log = logging.getLogger("tinkerstore.server.archives")

BUILD_PREFIX = "archive-build/"


def archive_key(blob_prefix: str) -> str:
    # The layout version is in the name: a future layout never serves an old cached tar.
    return f"{blob_prefix}archive.v{LAYOUT_VERSION}.tar"


class ArchiveBuilds:
    """Builds cached archives in background threads of this replica (see the module docstring).

    ``ready(record)`` returns the archive's key once the object exists; until then it makes sure
    a build runs somewhere and returns ``None``.
    """

    def __init__(self, store: Store, *, stale_after: float = 600.0, workers: int = 2) -> None:
        self._store = store
        self.stale_after = stale_after
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="archive-build")
        self._lock = threading.Lock()
        self._building: dict[str, Future[None]] = {}  # version id -> this process's build

    def ready(self, record: CheckpointRecord, *, wait: float = 0.0) -> str | None:
        """The archive key if the tar object exists, else ``None`` after starting (or finding)
        a build and waiting up to ``wait`` seconds for it (small checkpoints finish at once)."""
        key = archive_key(record.blob_prefix)
        if self._store.blobs.exists(key):
            return key
        build = self._start(record)
        if build is not None and wait > 0:
            try:
                build.result(timeout=wait)
            except FutureTimeout:
                return None
            except TinkerstoreError:
                raise  # e.g. a corrupt checkpoint: say so instead of "still preparing" forever
            except Exception:  # logged by the build; the next request starts another
                return None
            return key if self._store.blobs.exists(key) else None
        return None

    def _start(self, record: CheckpointRecord) -> Future[None] | None:
        vid = record.version_id
        with self._lock:
            if vid in self._building:
                return self._building[vid]
            if not self._claim(record):
                return None  # another replica is building it
            build = self._pool.submit(self._build, record)
            self._building[vid] = build
        build.add_done_callback(lambda _f: self._forget(vid))
        return build

    def _forget(self, version_id: str) -> None:
        with self._lock:
            self._building.pop(version_id, None)

    def _claim(self, record: CheckpointRecord) -> bool:
        """Win this window's build marker, unless the previous window's is still fresh."""
        now = time.time()
        window = int(now // self.stale_after)
        blobs, base = self._store.blobs, record.blob_prefix + BUILD_PREFIX
        try:
            previous = json.loads(blobs.get(f"{base}{window - 1}"))
            if now - float(previous["started"]) < self.stale_after:
                return False
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable marker holds nobody back
        marker = json.dumps({"started": now}).encode()
        return blobs.put_if_absent(f"{base}{window}", marker)

    def _build(self, record: CheckpointRecord) -> None:
        store, key = self._store, archive_key(record.blob_prefix)
        started = time.monotonic()
        try:
            manifest = store.manifest(record)
            layout = TarLayout(
                (TarMember(f.path, f.size) for f in manifest.files),
                mtime=int(record.created_at.timestamp()),
            )
            writer = store.blobs.writer(key)
            try:

                def read(relpath: str, start: int, end: int) -> Any:
                    return store.open_range(record, relpath, start, end)

                for chunk in layout.iter_range(0, layout.total_size, read):
                    writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        except Exception as exc:
            # Let the next request try again at once instead of after the marker's window.
            log.warning("building the archive of version %s failed: %s", record.version_id, exc)
            try:
                store.blobs.delete_prefix(record.blob_prefix + BUILD_PREFIX)
            except (TinkerstoreError, OSError) as cleanup:
                log.warning("could not remove the archive build marker: %s", cleanup)
            raise
        log.info(
            "built the archive of version %s (%d bytes) in %.1f s",
            record.version_id,
            layout.total_size,
            time.monotonic() - started,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_APP_LOCK = threading.Lock()


def for_app(state: Any, store: Store) -> ArchiveBuilds:
    """The app's ``ArchiveBuilds``, made on first use (only S3-backed servers need one)."""
    with _APP_LOCK:
        builds: ArchiveBuilds | None = getattr(state, "archive_builds", None)
        if builds is None:
            builds = ArchiveBuilds(store)
            state.archive_builds = builds
        return builds
