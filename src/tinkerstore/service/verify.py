"""Whole-store verification: does every byte the catalog vouches for exist and check out?

``verify_store`` reads, never writes. For each committed checkpoint (expired ones included: their
bytes are still served until the sweeper removes them) it checks, in order:

1. the manifest exists and its SHA-256 equals the digest the catalog recorded at commit;
2. the manifest parses and agrees with its catalog row (tinker path, total size);
3. every file the manifest lists exists with the listed size and, unless ``checksums=False``,
   the listed XXH3-128 (read end to end, one chunk in memory at a time).

Then it compares records with storage: pending and failed versions still on record, blob
prefixes no version row knows (orphans), and temporary files a dead writer left behind. Those
are ``leftover`` problems, which ``tinkerstore sweep`` repairs; everything else is ``corrupt``
and needs a human (restore from backup, or delete the checkpoint). Superseded versions are
normal garbage inside the sweeper's grace period, so they are counted, not reported.

A store in use keeps changing while it is verified: a checkpoint deleted or overwritten between
listing and reading is skipped rather than reported, and pending versions are saves in flight.
Verify a quiet store (or one whose server is stopped) for a verdict that means "clean".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import xxhash

from tinkerstore.errors import CheckpointCorrupted, InvalidManifest
from tinkerstore.service.store import MAX_PAGE, Store
from tinkerstore.store.catalog.base import CheckpointRecord, VersionRecord, VersionState
from tinkerstore.store.format import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    file_key,
    manifest_key,
    read_manifest,
)
from tinkerstore.types.paths import format_tinker_path

__all__ = ["Problem", "Severity", "VerifyReport", "verify_store"]

Severity = Literal["corrupt", "leftover"]
_FAR_FUTURE = timedelta(days=365 * 1000)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, naming the checkpoint and the file where there is one."""

    severity: Severity
    code: str  # stable: "file_checksum_mismatch", "orphan_prefix", ... (docs/reliability.md)
    detail: str
    tinker_path: str | None = None
    file: str | None = None
    blob_prefix: str | None = None

    def __str__(self) -> str:
        where = self.tinker_path or self.blob_prefix or "store"
        if self.file is not None:
            where += f" file {self.file}"
        return f"[{self.severity}] {self.code}: {where}: {self.detail}"


@dataclass
class VerifyReport:
    checkpoints: int = 0
    files: int = 0
    bytes_read: int = 0
    superseded_versions: int = 0  # garbage inside the grace period: normal, not a problem
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "checkpoints": self.checkpoints,
            "files": self.files,
            "bytes_read": self.bytes_read,
            "superseded_versions": self.superseded_versions,
            "problems": [asdict(p) for p in self.problems],
        }


def verify_store(store: Store, *, checksums: bool = True) -> VerifyReport:
    """Check the whole store (see the module docstring); change nothing."""
    report = VerifyReport()
    completed: set[str] = set()
    for record in _all_checkpoints(store):
        completed.add(record.blob_prefix)
        problems = _check_checkpoint(store, record, report, checksums=checksums)
        if problems and _still_current(store, record):
            report.problems.extend(problems)
        report.checkpoints += 1
    _check_records_vs_blobs(store, completed, report)
    return report


def _all_checkpoints(store: Store) -> Iterator[CheckpointRecord]:
    """Every committed checkpoint of every run: the unexpired ones page by page (with a
    snapshot, so concurrent commits do not shift pages), then the expired, unswept ones."""
    catalog, now = store.catalog, store.now()
    offset = 0
    while True:
        runs = catalog.list_runs(
            None, limit=MAX_PAGE, offset=offset, include_public_of_others=False
        )
        for run in runs.items:
            seen, snapshot = 0, None
            while True:
                page = catalog.list_checkpoints(
                    run_id=run.run_id, limit=MAX_PAGE, offset=seen, snapshot=snapshot, now=now
                )
                snapshot = page.snapshot
                yield from page.items
                seen += len(page.items)
                if len(page.items) < MAX_PAGE:
                    break
        offset += len(runs.items)
        if len(runs.items) < MAX_PAGE:
            break
    # Expired checkpoints are invisible to listings but their bytes are still on storage.
    yield from catalog.expired_checkpoints(now, 1_000_000)


def _still_current(store: Store, record: CheckpointRecord) -> bool:
    """Whether the catalog still points ``record``'s name at the same version (a concurrent
    delete or overwrite explains a missing manifest without anything being wrong)."""
    now_record = store.catalog.get_checkpoint(record.run_id, record.kind, record.name)
    return now_record is not None and now_record.version_id == record.version_id


def _check_checkpoint(
    store: Store, record: CheckpointRecord, report: VerifyReport, *, checksums: bool
) -> list[Problem]:
    path = format_tinker_path(record.run_id, record.kind, record.name)

    def corrupt(code: str, detail: str, file: str | None = None) -> Problem:
        return Problem("corrupt", code, detail, path, file, record.blob_prefix)

    version = store.catalog.get_version(record.version_id)
    if version is None or version.state != VersionState.COMPLETED:
        state = "missing" if version is None else version.state.value
        return [corrupt("version_state", f"the catalog's version row is {state}, not completed")]
    if not store.blobs.exists(manifest_key(record.blob_prefix)):
        return [corrupt("manifest_missing", "the manifest is missing from storage", MANIFEST_NAME)]
    try:
        manifest = read_manifest(store.blobs, record.blob_prefix, record.manifest_digest)
    except CheckpointCorrupted as exc:
        return [corrupt("manifest_digest_mismatch", exc.message, MANIFEST_NAME)]
    except InvalidManifest as exc:  # digest matched, yet unreadable: written that way
        return [corrupt("manifest_invalid", exc.message, MANIFEST_NAME)]
    problems = [
        corrupt("manifest_mismatch", detail, MANIFEST_NAME)
        for detail in _manifest_vs_record(manifest, record, path)
    ]
    for entry in manifest.files:
        report.files += 1
        problem = _check_file(store, record, entry, report, checksums=checksums)
        if problem is not None:
            problems.append(corrupt(*problem, file=entry.path))
    return problems


def _manifest_vs_record(manifest: Manifest, record: CheckpointRecord, path: str) -> list[str]:
    """What the manifest and its catalog row disagree on (a row pointing at the wrong bytes)."""
    found = []
    if manifest.tinker_path != path:
        found.append(f"the manifest belongs to {manifest.tinker_path}, not to this checkpoint")
    if manifest.total_size != record.size_bytes:
        found.append(
            f"the manifest lists {manifest.total_size} bytes, the catalog {record.size_bytes}"
        )
    return found


def _check_file(
    store: Store,
    record: CheckpointRecord,
    entry: FileEntry,
    report: VerifyReport,
    *,
    checksums: bool,
) -> tuple[str, str] | None:
    """``(code, detail)`` of what is wrong with one file, or ``None``."""
    key = file_key(record.blob_prefix, entry.path)
    try:
        size = store.blobs.size(key)
    except FileNotFoundError:
        return "file_missing", "the file is missing from storage"
    if size != entry.size:
        return "file_size_mismatch", f"{size} bytes on storage, the manifest says {entry.size}"
    if not checksums:
        return None
    hasher = xxhash.xxh3_128()
    try:
        for chunk in store.blobs.open_range(key):
            hasher.update(chunk)
            report.bytes_read += len(chunk)
    except FileNotFoundError:
        return "file_missing", "the file vanished from storage while being read"
    if hasher.hexdigest() != entry.xxh3_128:
        return (
            "file_checksum_mismatch",
            f"XXH3-128 {hasher.hexdigest()} on storage, the manifest says {entry.xxh3_128}",
        )
    return None


def _check_records_vs_blobs(store: Store, completed: set[str], report: VerifyReport) -> None:
    catalog, blobs = store.catalog, store.blobs
    live = catalog.live_blob_prefixes()
    for prefix in sorted(live - completed):
        version = catalog.get_version(prefix.removeprefix("v/").rstrip("/"))
        if version is None or version.state == VersionState.PENDING:
            report.problems.append(_leftover_version(version, prefix, "pending_version"))
        # A completed version nobody points at cannot happen: commit and delete change both.
    garbage = catalog.garbage_versions(store.now() + _FAR_FUTURE, 1_000_000)
    for version in garbage:
        if version.state == VersionState.FAILED:
            report.problems.append(
                _leftover_version(version, version.blob_prefix, "failed_version")
            )
        else:
            report.superseded_versions += 1
    known = live | {v.blob_prefix for v in garbage}
    for prefix, modified in blobs.list_prefixes("v/"):
        if prefix not in known and catalog.get_version(prefix[2:].rstrip("/")) is None:
            report.problems.append(
                Problem(
                    "leftover",
                    "orphan_prefix",
                    f"bytes no version row knows (last written {_iso(modified)})",
                    blob_prefix=prefix,
                )
            )
    tmp_dir = getattr(blobs, "root", None)
    if tmp_dir is not None and os.path.isdir(os.path.join(tmp_dir, "tmp")):
        leftovers = len(os.listdir(os.path.join(tmp_dir, "tmp")))
        if leftovers:
            report.problems.append(
                Problem(
                    "leftover",
                    "tmp_leftover",
                    f"{leftovers} temporary file(s) of unfinished writes in "
                    f"{os.path.join(tmp_dir, 'tmp')} (writes in flight, or left by a crash)",
                )
            )


def _leftover_version(version: VersionRecord | None, prefix: str, code: str) -> Problem:
    if version is not None:
        path = format_tinker_path(version.run_id, version.kind, version.name)
        detail = f"a {version.state.value} save started {_iso(version.created_at)}"
        if version.error:
            detail += f" ({version.error[:200]})"
        return Problem("leftover", code, detail, path, None, prefix)
    return Problem("leftover", code, "a version row without details", None, None, prefix)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
