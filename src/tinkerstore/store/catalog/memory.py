"""``MemoryCatalog``: the in-memory twin of the SQL catalog.

Plain dicts behind one lock, so every method is trivially one transaction. It exists so tests of
the layers above run without a database; the contract suite holds it to exactly the behaviour of
``SqlCatalog`` (same errors, same ordering, same totals). Nothing here is optimised: it scans.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from tinkerstore.errors import (
    AlreadyExists,
    ApiKeyNotFound,
    FutureNotFound,
    InvalidInput,
    NotFound,
    RunNotFound,
    SessionNotFound,
)
from tinkerstore.store.catalog._common import (
    check_page_args,
    checkpoint_exists,
    checkpoint_not_found,
    local_try_lock,
    new_user_id,
    opt_utc,
    utc,
)
from tinkerstore.store.catalog.base import (
    ApiKeyRecord,
    AuditRecord,
    CheckpointRecord,
    FutureRecord,
    FutureState,
    Page,
    RunRecord,
    SamplerRecord,
    SessionRecord,
    UserRecord,
    VersionRecord,
    VersionState,
)
from tinkerstore.types.paths import CheckpointKind

__all__ = ["MemoryCatalog"]

_Key = tuple[str, CheckpointKind, str]
_GARBAGE = (VersionState.FAILED, VersionState.SUPERSEDED)


def _alive(ckpt: CheckpointRecord, now: datetime) -> bool:
    return ckpt.expires_at is None or ckpt.expires_at > now


def _dead_since(version: VersionRecord) -> datetime:
    # Same rule as the SQL ``coalesce(garbage_since, created_at)``.
    return version.garbage_since or version.created_at


class MemoryCatalog:
    """The in-memory catalog (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._settings: dict[str, str] = {}
        self._users: dict[str, UserRecord] = {}
        self._keys: dict[int, ApiKeyRecord] = {}
        self._runs: dict[str, RunRecord] = {}  # insertion order is creation order
        self._versions: dict[str, VersionRecord] = {}
        self._checkpoints: dict[_Key, CheckpointRecord] = {}
        self._seq = 0  # last checkpoint seq handed out at a commit
        self._sessions: dict[str, SessionRecord] = {}
        self._samplers: dict[str, SamplerRecord] = {}
        self._futures: dict[str, FutureRecord] = {}
        self._future_slots: dict[tuple[str, int], str] = {}
        self._audit: list[AuditRecord] = []
        self._named_locks: dict[str, threading.Lock] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Nothing to create: the dicts are the schema."""

    def close(self) -> None:
        """Nothing to release."""

    # -- settings ----------------------------------------------------------------------------
    def get_or_create_setting(self, key: str, default: str) -> str:
        with self._lock:
            return self._settings.setdefault(key, default)

    # -- coordination ------------------------------------------------------------------------
    @contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        with local_try_lock(self._named_locks, name) as held:
            yield held

    # -- users and keys ----------------------------------------------------------------------
    def create_user(self, name: str, now: datetime) -> UserRecord:
        with self._lock:
            if self.get_user_by_name(name) is not None:
                raise AlreadyExists(f"user {name!r} already exists", hint="choose another name")
            user = UserRecord(user_id=new_user_id(), name=name, created_at=utc(now))
            self._users[user.user_id] = user
            return user

    def get_user_by_name(self, name: str) -> UserRecord | None:
        with self._lock:
            return next((u for u in self._users.values() if u.name == name), None)

    def get_user(self, user_id: str) -> UserRecord | None:
        with self._lock:
            return self._users.get(user_id)

    def count_users(self) -> int:
        with self._lock:
            return len(self._users)

    def add_api_key(self, user_id: str, key_hash: str, label: str, now: datetime) -> ApiKeyRecord:
        with self._lock:
            if self.find_api_key(key_hash) is not None:
                raise AlreadyExists(
                    "an API key with that hash already exists", hint="make a new key"
                )
            key = ApiKeyRecord(len(self._keys) + 1, user_id, key_hash, label, utc(now))
            self._keys[key.key_id] = key
            return key

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._lock:
            return next((k for k in self._keys.values() if k.key_hash == key_hash), None)

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        with self._lock:
            return [k for k in self._keys.values() if user_id is None or k.user_id == user_id]

    def revoke_api_key(self, key_id: int, now: datetime) -> ApiKeyRecord:
        with self._lock:
            key = self._keys.get(key_id)
            if key is None:
                raise ApiKeyNotFound(f"API key {key_id} does not exist", hint="list the keys")
            if key.revoked_at is None:
                key = self._keys[key_id] = dataclasses.replace(key, revoked_at=utc(now))
            return key

    # -- training runs -----------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> RunRecord:
        with self._lock:
            if run.run_id in self._runs:
                raise AlreadyExists(f"run {run.run_id!r} already exists", hint="use a new run id")
            run = dataclasses.replace(
                run,
                created_at=utc(run.created_at),
                last_request_time=utc(run.last_request_time),
                lora_config=dict(run.lora_config),
                user_metadata=dict(run.user_metadata),
            )
            self._runs[run.run_id] = run
            return run

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def touch_run(self, run_id: str, now: datetime) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFound(f"run {run_id!r} does not exist")
            self._runs[run_id] = dataclasses.replace(run, last_request_time=utc(now))

    def list_runs(
        self, owner_id: str | None, *, limit: int, offset: int, include_public_of_others: bool
    ) -> Page[RunRecord]:
        check_page_args(limit, offset)
        with self._lock:
            public_runs = {c.run_id for c in self._checkpoints.values() if c.public}
            rows = [
                r
                for r in reversed(self._runs.values())
                if owner_id is None
                or r.owner_id == owner_id
                or (include_public_of_others and r.run_id in public_runs)
            ]
            return Page(rows[offset : offset + limit], offset, limit, len(rows), len(self._runs))

    # -- checkpoint versions and the commit ---------------------------------------------------
    def begin_version(self, version: VersionRecord) -> VersionRecord:
        with self._lock:
            if version.version_id in self._versions:
                raise AlreadyExists(f"version {version.version_id!r} already exists")
            key = (version.run_id, version.kind, version.name)
            old = self._checkpoints.get(key)
            if old is not None and _alive(old, utc(version.created_at)) and not version.overwrite:
                raise checkpoint_exists(*key)
            version = dataclasses.replace(
                version,
                state=VersionState.PENDING,
                created_at=utc(version.created_at),
                garbage_since=None,
                user_metadata=None
                if version.user_metadata is None
                else dict(version.user_metadata),
            )
            self._versions[version.version_id] = version
            return version

    def commit_version(
        self,
        version_id: str,
        *,
        size_bytes: int,
        manifest_digest: str,
        now: datetime,
        expires_at: datetime | None,
    ) -> CheckpointRecord:
        with self._lock:
            version = self._versions.get(version_id)
            if version is None or version.state is not VersionState.PENDING:
                state = "missing" if version is None else version.state.value
                raise NotFound(
                    f"version {version_id!r} is not pending ({state}): it cannot be committed",
                    hint="the save was abandoned or failed; save again",
                )
            now = utc(now)
            key = (version.run_id, version.kind, version.name)
            old = self._checkpoints.get(key)
            if old is not None and _alive(old, now) and not version.overwrite:
                self._versions[version_id] = dataclasses.replace(
                    version,
                    state=VersionState.FAILED,
                    error="name taken by a concurrent save",
                    garbage_since=now,
                )
                raise checkpoint_exists(*key)
            if old is not None:
                self._supersede(old.version_id, now)
            self._seq += 1
            self._versions[version_id] = version = dataclasses.replace(
                version,
                state=VersionState.COMPLETED,
                size_bytes=size_bytes,
                manifest_digest=manifest_digest,
            )
            ckpt = CheckpointRecord(
                run_id=version.run_id,
                kind=version.kind,
                name=version.name,
                owner_id=version.owner_id,
                version_id=version_id,
                blob_prefix=version.blob_prefix,
                seq=self._seq,
                created_at=now,
                size_bytes=size_bytes,
                manifest_digest=manifest_digest,
                format_version=version.format_version,
                expires_at=opt_utc(expires_at),
                public=False,  # an overwrite is new content: it is never published implicitly
                user_metadata=dict(version.user_metadata or {}),
            )
            self._checkpoints[key] = ckpt
            return ckpt

    def _supersede(self, version_id: str, now: datetime) -> None:
        old = self._versions.get(version_id)
        if old is not None:
            self._versions[version_id] = dataclasses.replace(
                old, state=VersionState.SUPERSEDED, garbage_since=now
            )

    def fail_version(self, version_id: str, error: str, now: datetime) -> None:
        now = utc(now)
        with self._lock:
            version = self._versions.get(version_id)
            if version is not None and version.state is VersionState.PENDING:
                self._versions[version_id] = dataclasses.replace(
                    version, state=VersionState.FAILED, error=error, garbage_since=now
                )

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._lock:
            return self._versions.get(version_id)

    def fail_stale_pending(self, older_than: datetime, now: datetime) -> list[VersionRecord]:
        older_than, now = utc(older_than), utc(now)
        with self._lock:
            stale = [
                v
                for v in self._versions.values()
                if v.state is VersionState.PENDING and v.created_at < older_than
            ]
            failed = []
            for v in sorted(stale, key=lambda v: (v.created_at, v.version_id)):
                v = dataclasses.replace(
                    v,
                    state=VersionState.FAILED,
                    error="abandoned: still pending at sweep",
                    garbage_since=now,
                )
                self._versions[v.version_id] = v
                failed.append(v)
            return failed

    def garbage_versions(self, older_than: datetime, limit: int) -> list[VersionRecord]:
        older_than = utc(older_than)
        with self._lock:
            rows = [
                v
                for v in self._versions.values()
                if v.state in _GARBAGE and _dead_since(v) <= older_than
            ]
            return sorted(rows, key=lambda v: (_dead_since(v), v.version_id))[:limit]

    def forget_versions(self, version_ids: Sequence[str]) -> None:
        with self._lock:
            for vid in version_ids:
                v = self._versions.get(vid)
                if v is not None and v.state in _GARBAGE:  # never drop a live version's row
                    del self._versions[vid]

    def live_blob_prefixes(self) -> set[str]:
        with self._lock:
            return {v.blob_prefix for v in self._versions.values() if v.state not in _GARBAGE}

    # -- visible checkpoints ------------------------------------------------------------------
    def get_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str
    ) -> CheckpointRecord | None:
        with self._lock:
            return self._checkpoints.get((run_id, kind, name))

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
        if (run_id is None) == (owner_id is None):
            raise InvalidInput("list_checkpoints needs exactly one of run_id and owner_id")
        check_page_args(limit, offset)
        now = utc(now)
        with self._lock:
            snap = self._seq if snapshot is None else snapshot
            rows = sorted(
                (
                    c
                    for c in self._checkpoints.values()
                    if (c.run_id == run_id if run_id is not None else c.owner_id == owner_id)
                    and (kinds is None or c.kind in kinds)
                    and (c.public or not public_only)
                    and c.seq <= snap
                    and _alive(c, now)
                ),
                key=lambda c: -c.seq,
            )
            return Page(rows[offset : offset + limit], offset, limit, len(rows), snap)

    def latest_checkpoint(
        self, run_id: str, kind: CheckpointKind, now: datetime
    ) -> CheckpointRecord | None:
        now = utc(now)
        with self._lock:
            rows = [
                c
                for c in self._checkpoints.values()
                if c.run_id == run_id and c.kind == kind and _alive(c, now)
            ]
            return max(rows, key=lambda c: c.seq, default=None)

    def delete_checkpoint(
        self, run_id: str, kind: CheckpointKind, name: str, *, now: datetime
    ) -> CheckpointRecord:
        now = utc(now)
        with self._lock:
            ckpt = self._existing(run_id, kind, name)
            del self._checkpoints[(run_id, kind, name)]
            self._supersede(ckpt.version_id, now)
            return ckpt

    def _existing(self, run_id: str, kind: CheckpointKind, name: str) -> CheckpointRecord:
        ckpt = self._checkpoints.get((run_id, kind, name))
        if ckpt is None:
            raise checkpoint_not_found(run_id, kind, name)
        return ckpt

    def set_public(
        self, run_id: str, kind: CheckpointKind, name: str, public: bool
    ) -> CheckpointRecord:
        with self._lock:
            ckpt = dataclasses.replace(self._existing(run_id, kind, name), public=public)
            self._checkpoints[(run_id, kind, name)] = ckpt
            return ckpt

    def set_expiry(
        self, run_id: str, kind: CheckpointKind, name: str, expires_at: datetime | None
    ) -> CheckpointRecord:
        expires_at = opt_utc(expires_at)
        with self._lock:
            ckpt = dataclasses.replace(self._existing(run_id, kind, name), expires_at=expires_at)
            self._checkpoints[(run_id, kind, name)] = ckpt
            return ckpt

    def expired_checkpoints(self, now: datetime, limit: int) -> list[CheckpointRecord]:
        now = utc(now)
        with self._lock:
            rows = [c for c in self._checkpoints.values() if not _alive(c, now)]
            return sorted(rows, key=lambda c: (c.expires_at, c.seq))[:limit]

    def delete_if_expired(
        self, run_id: str, kind: CheckpointKind, name: str, now: datetime
    ) -> bool:
        now = utc(now)
        with self._lock:
            ckpt = self._checkpoints.get((run_id, kind, name))
            if ckpt is None or _alive(ckpt, now):
                return False
            self.delete_checkpoint(run_id, kind, name, now=now)
            return True

    def storage_usage(self, owner_id: str, now: datetime) -> tuple[int, int]:
        now = utc(now)
        with self._lock:
            rows = [
                c for c in self._checkpoints.values() if c.owner_id == owner_id and _alive(c, now)
            ]
            return len(rows), sum(c.size_bytes for c in rows)

    # -- sessions, samplers, futures, audit ---------------------------------------------------
    def create_session(self, session: SessionRecord) -> SessionRecord:
        with self._lock:
            if session.session_id in self._sessions:
                raise AlreadyExists(f"session {session.session_id!r} already exists")
            session = dataclasses.replace(
                session,
                created_at=utc(session.created_at),
                last_heartbeat=utc(session.last_heartbeat),
                tags=tuple(session.tags),
                user_metadata=dict(session.user_metadata),
                model_seq_ids=tuple(session.model_seq_ids),
            )
            self._sessions[session.session_id] = session
            return session

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(session_id)

    def _session(self, session_id: str) -> SessionRecord:
        session = self._sessions.get(session_id)
        if session is None:
            raise SessionNotFound(f"session {session_id!r} does not exist")
        return session

    def heartbeat_session(self, session_id: str, now: datetime) -> None:
        with self._lock:
            session = self._session(session_id)
            self._sessions[session_id] = dataclasses.replace(session, last_heartbeat=utc(now))

    def finish_session(self, session_id: str, reason: str, now: datetime) -> SessionRecord:
        with self._lock:
            session = self._session(session_id)
            if session.finished_reason is None:
                session = dataclasses.replace(session, finished_reason=reason)
                self._sessions[session_id] = session
            return session

    def create_sampler(self, sampler: SamplerRecord) -> SamplerRecord:
        with self._lock:
            sampler = dataclasses.replace(sampler, created_at=utc(sampler.created_at))
            return self._samplers.setdefault(sampler.sampler_id, sampler)

    def get_sampler(self, sampler_id: str) -> SamplerRecord | None:
        with self._lock:
            return self._samplers.get(sampler_id)

    def create_future(self, future: FutureRecord) -> tuple[FutureRecord, bool]:
        with self._lock:
            slot = None
            if future.model_id is not None and future.seq_id is not None:
                slot = (future.model_id, future.seq_id)
                if slot in self._future_slots:
                    return self._futures[self._future_slots[slot]], False
            if future.request_id in self._futures:
                return self._futures[future.request_id], False
            future = dataclasses.replace(
                future,
                state=FutureState.PENDING,
                created_at=utc(future.created_at),
                finished_at=None,
                result=None,
            )
            self._futures[future.request_id] = future
            if slot is not None:
                self._future_slots[slot] = future.request_id
            return future, True

    def finish_future(
        self, request_id: str, state: FutureState, result: bytes, content_type: str, now: datetime
    ) -> None:
        if state is FutureState.PENDING:
            raise ValueError("finish_future needs a final state (done or failed)")
        with self._lock:
            future = self._futures.get(request_id)
            if future is None:
                raise FutureNotFound(f"future {request_id!r} does not exist")
            if future.state is FutureState.PENDING:  # the first outcome wins
                self._futures[request_id] = dataclasses.replace(
                    future,
                    state=state,
                    result=bytes(result),
                    content_type=content_type,
                    finished_at=utc(now),
                )

    def get_future(self, request_id: str) -> FutureRecord | None:
        with self._lock:
            return self._futures.get(request_id)

    def fail_pending_futures(self, error_body: bytes, now: datetime) -> int:
        with self._lock:
            pending = [f for f in self._futures.values() if f.state is FutureState.PENDING]
            for f in pending:
                self.finish_future(
                    f.request_id, FutureState.FAILED, error_body, "application/json", now
                )
            return len(pending)

    def add_audit(
        self,
        owner_id: str,
        event: str,
        now: datetime,
        *,
        tinker_path: str | None = None,
        model_id: str | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            seq = len(self._audit) + 1
            record = AuditRecord(
                seq, utc(now), owner_id, event, tinker_path, model_id, dict(details or {})
            )
            self._audit.append(record)

    def list_audit(
        self, owner_id: str, *, since: datetime | None, until: datetime | None, limit: int
    ) -> list[AuditRecord]:
        since, until = opt_utc(since), opt_utc(until)
        with self._lock:
            rows = [
                a
                for a in self._audit
                if a.owner_id == owner_id
                and (since is None or a.timestamp >= since)
                and (until is None or a.timestamp < until)
            ]
            rows.sort(key=lambda a: (a.timestamp, a.seq), reverse=True)
            return rows[:limit]
