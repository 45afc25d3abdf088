"""The checkpoint store's business rules, as a library (no HTTP).

Access is decided in one place, ``_visible``: a principal sees a checkpoint it owns, or one that
is published when it only reads. Anything else behaves exactly like a missing checkpoint, so no
caller can learn that another user's private checkpoint exists.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from tinkerstore.errors import CheckpointNotFound, InvalidInput, InvalidTTL, RunNotFound
from tinkerstore.service.keys import Principal, Users
from tinkerstore.service.saves import PendingSave, expiry
from tinkerstore.service.sweeper import Sweeper, SweepReport
from tinkerstore.store.blobs.base import BlobStore
from tinkerstore.store.catalog.base import (
    ApiKeyRecord,
    AuditRecord,
    Catalog,
    CheckpointRecord,
    Page,
    RunRecord,
    VersionRecord,
    VersionState,
)
from tinkerstore.store.format import (
    Manifest,
    file_key,
    read_manifest,
    read_verified,
    verified_chunks,
)
from tinkerstore.types.paths import CheckpointKind, ParsedCheckpointTinkerPath, validate_segment

__all__ = ["MAX_PAGE", "MAX_TTL_SECONDS", "MIN_TTL_SECONDS", "AccessScope", "Store", "check_ttl"]

# The TTL range the Tinker service documents: one hour to ten years (365.25-day years).
MIN_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 315_576_000
MAX_PAGE = 1000
AccessScope = Literal["owned", "accessible"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def check_ttl(ttl_seconds: int | None) -> int | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidTTL(f"ttl_seconds must be an integer or null, got {ttl_seconds!r}")
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidTTL(
            f"ttl_seconds={ttl_seconds} is out of range",
            hint=f"use {MIN_TTL_SECONDS} (1 hour) to {MAX_TTL_SECONDS} (10 years), "
            "or null for never",
        )
    return ttl_seconds


def _check_page(limit: int, offset: int) -> None:
    if not 0 < limit <= MAX_PAGE:
        raise InvalidInput(f"limit={limit} is out of range", hint=f"use 1 to {MAX_PAGE}")
    if offset < 0:
        raise InvalidInput(f"offset={offset} is negative", hint="use an offset of 0 or more")


class Store:
    """The checkpoint service over a catalog and a blob store."""

    def __init__(
        self,
        catalog: Catalog,
        blobs: BlobStore,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.now = clock
        self.users = Users(catalog)
        self.sweeper = Sweeper(self)

    def recover(self, *, sole_writer: bool = True) -> SweepReport:
        """Start-up repair (see ``tinkerstore.service.sweeper``)."""
        return self.sweeper.recover(sole_writer=sole_writer)

    def sweep(self) -> SweepReport:
        return self.sweeper.sweep()

    # -- users and keys ----------------------------------------------------------------------
    def authenticate(self, api_key: str | None) -> Principal:
        return self.users.authenticate(api_key)

    def create_api_key(self, user_name: str, label: str = "") -> tuple[ApiKeyRecord, str]:
        return self.users.create_api_key(user_name, self.now(), label)

    def signing_secret(self) -> bytes:
        return bytes.fromhex(
            self.catalog.get_or_create_setting("url_signing_secret", secrets.token_hex(32))
        )

    # -- runs --------------------------------------------------------------------------------
    def create_run(
        self,
        principal: Principal,
        run_id: str,
        *,
        base_model: str,
        lora_config: Mapping[str, Any] | None,
        user_metadata: Mapping[str, str] | None = None,
        session_id: str | None = None,
    ) -> RunRecord:
        validate_segment(run_id, "run id")
        now = self.now()
        lora = dict(lora_config) if lora_config is not None else None
        run = RunRecord(
            run_id=run_id,
            owner_id=principal.user_id,
            base_model=base_model,
            is_lora=lora is not None,
            lora_rank=int(lora["rank"]) if lora and "rank" in lora else None,
            lora_config=lora or {},
            user_metadata={str(k): str(v) for k, v in (user_metadata or {}).items()},
            created_at=now,
            last_request_time=now,
            session_id=session_id,
        )
        return self.catalog.create_run(run)

    def get_run(
        self, principal: Principal, run_id: str, *, access_scope: AccessScope = "owned"
    ) -> RunRecord:
        run = self.catalog.get_run(run_id)
        if run is not None and (
            run.owner_id == principal.user_id
            or (access_scope == "accessible" and self._run_has_public(run_id))
        ):
            return run
        raise RunNotFound(
            f"training run {run_id!r} not found",
            hint="list your runs with `tinker run list`",
        )

    def list_runs(
        self, principal: Principal, *, limit: int, offset: int, access_scope: AccessScope = "owned"
    ) -> Page[RunRecord]:
        _check_page(limit, offset)
        return self.catalog.list_runs(
            principal.user_id,
            limit=limit,
            offset=offset,
            include_public_of_others=access_scope == "accessible",
        )

    def _run_has_public(self, run_id: str) -> bool:
        page = self.catalog.list_checkpoints(
            run_id=run_id, limit=MAX_PAGE, offset=0, now=self.now(), public_only=True
        )
        return bool(page.items)

    # -- saving ------------------------------------------------------------------------------
    def begin_save(
        self,
        principal: Principal,
        run_id: str,
        kind: CheckpointKind,
        name: str,
        *,
        overwrite: bool = False,
        ttl_seconds: int | None = None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> PendingSave:
        """Start a save into a run the principal owns. Nothing is visible until ``commit()``."""
        path = ParsedCheckpointTinkerPath.from_parts(run_id, kind, name)
        check_ttl(ttl_seconds)
        self.get_run(principal, run_id)  # owner only; 404 otherwise
        now = self.now()
        version_id = uuid.uuid4().hex
        version = self.catalog.begin_version(
            VersionRecord(
                version_id=version_id,
                run_id=run_id,
                kind=kind,
                name=name,
                owner_id=principal.user_id,
                state=VersionState.PENDING,
                created_at=now,
                blob_prefix=f"v/{version_id}/",
                ttl_seconds=ttl_seconds,
                overwrite=overwrite,
                user_metadata={str(k): str(v) for k, v in user_metadata.items()}
                if user_metadata
                else None,
            )
        )

        def on_commit(record: CheckpointRecord) -> None:
            self.catalog.touch_run(run_id, record.created_at)
            self._audit(
                principal, "checkpoint_saved", path.tinker_path, size=str(record.size_bytes)
            )

        return PendingSave(self, version, path.tinker_path, expiry(now, ttl_seconds), on_commit)

    def save_files(
        self,
        principal: Principal,
        run_id: str,
        kind: CheckpointKind,
        name: str,
        files: Mapping[str, bytes],
        **options: Any,
    ) -> CheckpointRecord:
        with self.begin_save(principal, run_id, kind, name, **options) as save:
            for relpath, data in files.items():
                save.add_file(relpath, data)
            return save.commit()

    # -- reading -----------------------------------------------------------------------------
    def resolve(
        self, principal: Principal, tinker_path: str, *, for_write: bool = False
    ) -> CheckpointRecord:
        path = ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
        return self._visible(principal, path, for_write=for_write)

    def _visible(
        self, principal: Principal, path: ParsedCheckpointTinkerPath, *, for_write: bool
    ) -> CheckpointRecord:
        record = self.catalog.get_checkpoint(path.training_run_id, path.kind, path.name)
        if record is not None:
            owner = record.owner_id == principal.user_id
            if owner or (record.public and not for_write):
                if record.expires_at is None or record.expires_at > self.now():
                    return record
                if owner:
                    raise CheckpointNotFound(
                        f"checkpoint {path.tinker_path} expired at {record.expires_at.isoformat()}",
                        hint="expired checkpoints are deleted; save a new one",
                    )
        raise CheckpointNotFound(
            f"checkpoint {path.tinker_path} not found",
            hint="check the path with `tinker checkpoint list`",
        )

    def manifest(self, record: CheckpointRecord) -> Manifest:
        return read_manifest(self.blobs, record.blob_prefix, record.manifest_digest)

    def open_range(
        self, record: CheckpointRecord, relpath: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """Raw bytes of one file (downloads verify end to end with the manifest's checksums)."""
        return self.blobs.open_range(file_key(record.blob_prefix, relpath), start, end)

    def read_file(self, record: CheckpointRecord, relpath: str) -> bytes:
        """One file's bytes, every byte checked against the manifest (one copy, like a plain
        read: local files are read straight into the result while hashing on a helper thread)."""
        entry = self.manifest(record).entry(relpath)
        return read_verified(self.blobs, record.blob_prefix, entry)

    def download_to(self, principal: Principal, tinker_path: str, dest_dir: Path) -> Manifest:
        """Copy a checkpoint's files into ``dest_dir`` after verifying every checksum. The files
        are staged beside ``dest_dir`` and moved into place only once all of them verified."""
        record = self.resolve(principal, tinker_path)
        manifest = self.manifest(record)
        dest_dir = Path(dest_dir)
        staging = dest_dir.with_name(f".{dest_dir.name}.partial-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as out:
                    for chunk in verified_chunks(self.blobs, record.blob_prefix, entry):
                        out.write(chunk)
            dest_dir.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(dest_dir)
        except BaseException:
            _rmtree(staging)
            raise
        return manifest

    # -- listing -----------------------------------------------------------------------------
    def list_checkpoints(
        self,
        principal: Principal,
        run_id: str,
        *,
        limit: int = 100,
        offset: int = 0,
        kinds: Sequence[CheckpointKind] | None = None,
        snapshot: int | None = None,
    ) -> Page[CheckpointRecord]:
        """A run's checkpoints, newest first. Others see only the run's published ones."""
        _check_page(limit, offset)
        run = self.catalog.get_run(run_id)
        if run is None:
            raise RunNotFound(
                f"training run {run_id!r} not found", hint="list runs with `tinker run list`"
            )
        mine = run.owner_id == principal.user_id
        page = self.catalog.list_checkpoints(
            run_id=run_id,
            kinds=kinds,
            limit=limit,
            offset=offset,
            snapshot=snapshot,
            now=self.now(),
            public_only=not mine,
        )
        if not mine and page.total_count == 0:
            raise RunNotFound(
                f"training run {run_id!r} not found", hint="list runs with `tinker run list`"
            )
        return page

    def list_user_checkpoints(
        self,
        principal: Principal,
        *,
        limit: int = 100,
        offset: int = 0,
        kinds: Sequence[CheckpointKind] | None = None,
        snapshot: int | None = None,
    ) -> Page[CheckpointRecord]:
        _check_page(limit, offset)
        return self.catalog.list_checkpoints(
            owner_id=principal.user_id,
            kinds=kinds,
            limit=limit,
            offset=offset,
            snapshot=snapshot,
            now=self.now(),
        )

    def latest_checkpoint(
        self, principal: Principal, run_id: str, kind: CheckpointKind
    ) -> CheckpointRecord | None:
        record = self.catalog.latest_checkpoint(run_id, kind, self.now())
        if record is None or (record.owner_id != principal.user_id and not record.public):
            return None
        return record

    # -- changing ----------------------------------------------------------------------------
    def delete_checkpoint(self, principal: Principal, tinker_path: str) -> CheckpointRecord:
        record = self.resolve(principal, tinker_path, for_write=True)
        deleted = self.catalog.delete_checkpoint(
            record.run_id, record.kind, record.name, now=self.now()
        )
        self._audit(principal, "checkpoint_deleted", tinker_path)
        return deleted

    def publish(self, principal: Principal, tinker_path: str) -> CheckpointRecord:
        return self._set_public(principal, tinker_path, True)

    def unpublish(self, principal: Principal, tinker_path: str) -> CheckpointRecord:
        return self._set_public(principal, tinker_path, False)

    def _set_public(self, principal: Principal, tinker_path: str, public: bool) -> CheckpointRecord:
        # Idempotent on purpose: the SDK retries 409 for minutes, so "already public" is a 2xx.
        record = self.resolve(principal, tinker_path, for_write=True)
        if record.public == public:
            return record
        updated = self.catalog.set_public(record.run_id, record.kind, record.name, public)
        self._audit(
            principal, "checkpoint_published" if public else "checkpoint_unpublished", tinker_path
        )
        return updated

    def set_ttl(
        self, principal: Principal, tinker_path: str, ttl_seconds: int | None
    ) -> CheckpointRecord:
        check_ttl(ttl_seconds)
        record = self.resolve(principal, tinker_path, for_write=True)
        updated = self.catalog.set_expiry(
            record.run_id, record.kind, record.name, expiry(self.now(), ttl_seconds)
        )
        self._audit(principal, "checkpoint_ttl_set", tinker_path, ttl_seconds=str(ttl_seconds))
        return updated

    # -- accounting --------------------------------------------------------------------------
    def storage_usage(self, principal: Principal) -> tuple[int, int]:
        return self.catalog.storage_usage(principal.user_id, self.now())

    def audit_log(
        self,
        principal: Principal,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 1000,
    ) -> list[AuditRecord]:
        return self.catalog.list_audit(principal.user_id, since=since, until=until, limit=limit)

    def _audit(self, principal: Principal, event: str, tinker_path: str, **details: str) -> None:
        self.catalog.add_audit(
            principal.user_id, event, self.now(), tinker_path=tinker_path, details=details or None
        )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
