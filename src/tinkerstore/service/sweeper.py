"""The sweeper: expiry, failed saves and orphan bytes.

What it does, in order, each pass:
1. deletes expired checkpoints (``delete_if_expired``: exactly once even with racing sweepers,
   and never one whose TTL was cleared or extended meanwhile);
2. turns pending versions older than ``pending_timeout`` into failed (their writer died);
3. removes the blobs of failed and superseded versions that became garbage at least
   ``grace`` ago (``garbage_since``), then their rows;
4. removes blob prefixes no version row knows (a crash between writing bytes and recording
   them, or rows forgotten after step 3 crashed midway) once they are older than ``grace``.

The grace period is the download rule: bytes of a deleted, expired or overwritten checkpoint stay
readable for ``grace`` after it stopped being live, so a download already under way finishes;
new requests for it get 404 at once (signed URLs name the version and are checked against the
catalog on every request).

``recover`` runs at start-up with ``pending_timeout=0`` when this process is the only writer of
the store (the embedded default), so every pending save left by a crash becomes failed at once.

Several replicas (PostgreSQL + S3): every pass, ``recover`` included, runs under the catalog's
``try_lock(SWEEPER_LOCK)``, so exactly one sweeper acts at a time; the others skip their turn
(``SweepReport.skipped``). A replica killed mid-save leaves a pending version that only the
timeout can tell from a live save: after ``pending_timeout`` a surviving replica's sweeper turns
it failed, then removes its bytes. Futures are left alone: nothing tells a dead replica's future
from a slow one, and failing work that still runs would lie to the client (a dead replica's
futures stay pending; its clients time out and resume from their last checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from tinkerstore.errors import TinkerstoreError

if TYPE_CHECKING:
    from tinkerstore.service.store import Store

__all__ = ["SWEEPER_LOCK", "SweepReport", "Sweeper"]

BATCH = 500
SWEEPER_LOCK = "sweeper"


@dataclass
class SweepReport:
    expired: list[str] = field(default_factory=list)  # tinker paths deleted for expiry
    failed_pending: int = 0
    garbage_versions: int = 0
    orphan_prefixes: int = 0
    tmp_files: int = 0
    failed_futures: int = 0
    errors: list[str] = field(default_factory=list)
    skipped: bool = False  # another sweeper held the lock: this pass did nothing

    def as_dict(self) -> dict[str, object]:
        return {
            "expired": len(self.expired),
            "failed_pending": self.failed_pending,
            "garbage_versions": self.garbage_versions,
            "orphan_prefixes": self.orphan_prefixes,
            "tmp_files": self.tmp_files,
            "failed_futures": self.failed_futures,
            "errors": self.errors,
            "skipped": self.skipped,
        }


class Sweeper:
    def __init__(
        self,
        store: Store,
        *,
        pending_timeout: timedelta = timedelta(hours=1),
        grace: timedelta = timedelta(minutes=15),
    ) -> None:
        self._store = store
        self.pending_timeout = pending_timeout
        self.grace = grace

    def recover(self, *, sole_writer: bool) -> SweepReport:
        """Start-up repair. ``sole_writer``: no other process can be saving right now."""
        with self._store.catalog.try_lock(SWEEPER_LOCK) as held:
            if not held:
                return SweepReport(skipped=True)
            return self._recover(sole_writer=sole_writer)

    def _recover(self, *, sole_writer: bool) -> SweepReport:
        now = self._store.now()
        report = SweepReport()
        timeout = timedelta(0) if sole_writer else self.pending_timeout
        report.failed_pending = len(self._store.catalog.fail_stale_pending(now - timeout, now))
        if sole_writer:
            report.failed_futures = self._store.catalog.fail_pending_futures(
                b'{"error":"the server restarted while this request was running; submit it again",'
                b'"category":"server"}',
                now,
            )
        cleanup = getattr(self._store.blobs, "cleanup_tmp", None)
        if cleanup is not None:
            report.tmp_files = cleanup(now - timeout)
        self._sweep_bytes(now, report, grace=timedelta(0) if sole_writer else self.grace)
        return report

    def sweep(self) -> SweepReport:
        """One pass, unless another sweeper (thread or replica) is in one: then skipped."""
        with self._store.catalog.try_lock(SWEEPER_LOCK) as held:
            if not held:
                return SweepReport(skipped=True)
            return self._sweep()

    def _sweep(self) -> SweepReport:
        now = self._store.now()
        report = SweepReport()
        catalog = self._store.catalog
        for record in catalog.expired_checkpoints(now, BATCH):
            try:
                if catalog.delete_if_expired(record.run_id, record.kind, record.name, now):
                    path = f"tinker://{record.run_id}/{record.kind.value}/{record.name}"
                    report.expired.append(path)
                    catalog.add_audit(record.owner_id, "checkpoint_expired", now, tinker_path=path)
            except TinkerstoreError as exc:
                report.errors.append(str(exc))
        report.failed_pending = len(catalog.fail_stale_pending(now - self.pending_timeout, now))
        self._sweep_bytes(now, report, grace=self.grace)
        return report

    def _sweep_bytes(self, now: datetime, report: SweepReport, *, grace: timedelta) -> None:
        catalog, blobs = self._store.catalog, self._store.blobs
        while True:
            garbage = catalog.garbage_versions(now - grace, BATCH)
            if not garbage:
                break
            for version in garbage:
                blobs.delete_prefix(version.blob_prefix)
            catalog.forget_versions([v.version_id for v in garbage])
            report.garbage_versions += len(garbage)
            if len(garbage) < BATCH:
                break
        live = catalog.live_blob_prefixes()
        cutoff = now - grace
        for prefix, modified in list(blobs.list_prefixes("v/")):
            if prefix not in live and modified <= cutoff and not self._is_garbage_row(prefix):
                blobs.delete_prefix(prefix)
                report.orphan_prefixes += 1

    def _is_garbage_row(self, prefix: str) -> bool:
        # A failed/superseded version still inside its grace period is not an orphan.
        version_id = prefix.removeprefix("v/").rstrip("/")
        return self._store.catalog.get_version(version_id) is not None
