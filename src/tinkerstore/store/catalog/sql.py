"""``SqlCatalog``: the catalog on SQLite or PostgreSQL, one schema, one set of queries.

Built in three layers, each a module of its own:

* ``sql_engine.SqlEngine``: engines, the one-writer transactions, error mapping, ``migrate``;
* ``sql_records.SqlRecords``: settings, users, keys, runs, sessions, samplers, futures, audit;
* ``SqlCatalog`` (here): versions and checkpoints, whose SQL lives in ``sql_checkpoints``.

Tables are in ``schema``, their versions in ``migrations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from tinkerstore.errors import AlreadyExists
from tinkerstore.store.catalog import sql_checkpoints as q
from tinkerstore.store.catalog._common import check_page_args
from tinkerstore.store.catalog.base import CheckpointRecord, Page, VersionRecord
from tinkerstore.store.catalog.schema import (
    checkpoints,
    row_to_checkpoint,
    row_to_version,
    versions,
)
from tinkerstore.store.catalog.sql_records import SqlRecords
from tinkerstore.types.paths import CheckpointKind

__all__ = ["SqlCatalog"]


class SqlCatalog(SqlRecords):
    """The catalog on a SQLAlchemy URL: ``sqlite:///path``, ``sqlite://`` (in memory, for
    tests) or ``postgresql+psycopg://...``. Call ``migrate()`` once before use."""

    # -- checkpoint versions and the commit ---------------------------------------------------
    def begin_version(self, version: VersionRecord) -> VersionRecord:
        try:
            with self._write(durable=False, raw_integrity=True) as conn:
                return q.begin_version(conn, version)
        except IntegrityError as exc:
            raise AlreadyExists(f"version {version.version_id!r} already exists") from exc

    def commit_version(
        self,
        version_id: str,
        *,
        size_bytes: int,
        manifest_digest: str,
        now: datetime,
        expires_at: datetime | None,
    ) -> CheckpointRecord:
        with self._write() as conn:
            outcome = q.commit_version(
                conn,
                version_id,
                size_bytes=size_bytes,
                manifest_digest=manifest_digest,
                now=now,
                expires_at=expires_at,
            )
        if isinstance(outcome, AlreadyExists):
            raise outcome  # after the commit above recorded the version as failed
        return outcome

    def fail_version(self, version_id: str, error: str, now: datetime) -> None:
        with self._write(durable=False) as conn:
            q.fail_version(conn, version_id, error, now)

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._read() as conn:
            row = conn.execute(select(versions).where(versions.c.version_id == version_id)).first()
        return None if row is None else row_to_version(row)

    def fail_stale_pending(self, older_than: datetime, now: datetime) -> list[VersionRecord]:
        with self._write(durable=False) as conn:
            return q.fail_stale_pending(conn, older_than, now)

    def garbage_versions(self, older_than: datetime, limit: int) -> list[VersionRecord]:
        with self._read() as conn:
            return q.garbage_versions(conn, older_than, limit)

    def forget_versions(self, version_ids: Sequence[str]) -> None:
        with self._write(durable=False) as conn:
            q.forget_versions(conn, version_ids)

    def live_blob_prefixes(self) -> set[str]:
        with self._read() as conn:
            rows = conn.execute(
                select(versions.c.blob_prefix).where(versions.c.state.in_(("pending", "completed")))
            )
            return {r.blob_prefix for r in rows}

    # -- visible checkpoints ------------------------------------------------------------------
    def get_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str
    ) -> CheckpointRecord | None:
        with self._read() as conn:
            row = conn.execute(
                select(checkpoints).where(
                    checkpoints.c.run_id == run_id,
                    checkpoints.c.kind == CheckpointKind(kind).value,
                    checkpoints.c.name == name,
                )
            ).first()
        return None if row is None else row_to_checkpoint(row)

    def list_checkpoints(
        self,
        *,
        run_id: str | None = None,
        owner_id: str | None = None,
        kinds: Sequence[CheckpointKind] | None = None,
        limit: int,
        offset: int,
        snapshot: int | None = None,
        now: datetime,
        public_only: bool = False,
    ) -> Page[CheckpointRecord]:
        check_page_args(limit, offset)
        with self._read() as conn:
            return q.list_checkpoints(
                conn,
                run_id=run_id,
                owner_id=owner_id,
                kinds=kinds,
                limit=limit,
                offset=offset,
                snapshot=snapshot,
                now=now,
                public_only=public_only,
            )

    def latest_checkpoint(
        self, run_id: str, kind: CheckpointKind, now: datetime
    ) -> CheckpointRecord | None:
        with self._read() as conn:
            return q.latest_checkpoint(conn, run_id, kind, now)

    def delete_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str, *, now: datetime
    ) -> CheckpointRecord:
        with self._write() as conn:
            return q.delete_checkpoint(conn, run_id, kind, name, now)

    def set_public(
        self, run_id: str, kind: CheckpointKind, name: str, public: bool
    ) -> CheckpointRecord:
        with self._write() as conn:
            return q.set_public(conn, run_id, kind, name, public)

    def set_expiry(
        self, run_id: str, kind: CheckpointKind, name: str, expires_at: datetime | None
    ) -> CheckpointRecord:
        with self._write() as conn:
            return q.set_expiry(conn, run_id, kind, name, expires_at)

    def expired_checkpoints(self, now: datetime, limit: int) -> list[CheckpointRecord]:
        with self._read() as conn:
            return q.expired_checkpoints(conn, now, limit)

    def delete_if_expired(
        self, run_id: str, kind: CheckpointKind, name: str, now: datetime
    ) -> bool:
        with self._write() as conn:
            return q.delete_if_expired(conn, run_id, kind, name, now)

    def storage_usage(self, owner_id: str, now: datetime) -> tuple[int, int]:
        with self._read() as conn:
            return q.storage_usage(conn, owner_id, now)
