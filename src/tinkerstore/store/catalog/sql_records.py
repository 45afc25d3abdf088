"""Users, keys, runs, sessions, samplers, futures, audit and settings in SQL.

``SqlRecords`` adds these to ``SqlEngine``; ``SqlCatalog`` adds versions and checkpoints.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from sqlalchemy import Connection, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from tinkerstore.errors import (
    AlreadyExists,
    ApiKeyNotFound,
    FutureNotFound,
    RunNotFound,
    SessionNotFound,
)
from tinkerstore.store.catalog import sql_checkpoints as q
from tinkerstore.store.catalog._common import check_page_args, new_user_id, opt_utc, utc
from tinkerstore.store.catalog.base import (
    ApiKeyRecord,
    AuditRecord,
    FutureRecord,
    FutureState,
    Page,
    RunRecord,
    SamplerRecord,
    SessionRecord,
    UserRecord,
)
from tinkerstore.store.catalog.schema import (
    api_keys,
    audit,
    counters,
    futures,
    row_to_api_key,
    row_to_audit,
    row_to_future,
    row_to_run,
    row_to_sampler,
    row_to_session,
    row_to_user,
    runs,
    samplers,
    sessions,
    settings,
    users,
)
from tinkerstore.store.catalog.sql_engine import SqlEngine, unavailable

__all__ = ["SqlRecords"]


class SqlRecords(SqlEngine):
    """Every record of the catalog but versions and checkpoints."""

    # -- settings ----------------------------------------------------------------------------
    def get_or_create_setting(self, key: str, default: str) -> str:
        try:
            with self._write(raw_integrity=True) as conn:
                value = conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar()
                if value is None:
                    conn.execute(insert(settings).values(key=key, value=default))
                    value = default
                return str(value)
        except IntegrityError:  # another process stored it first: theirs wins
            with self._read() as conn:
                return str(
                    conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one()
                )

    # -- users and keys ----------------------------------------------------------------------
    def create_user(self, name: str, now: datetime) -> UserRecord:
        user = UserRecord(user_id=new_user_id(), name=name, created_at=utc(now))
        try:
            with self._write(raw_integrity=True) as conn:
                conn.execute(
                    insert(users).values(
                        user_id=user.user_id, name=name, created_at=user.created_at
                    )
                )
        except IntegrityError as exc:
            raise AlreadyExists(
                f"user {name!r} already exists", hint="choose another name"
            ) from exc
        return user

    def get_user_by_name(self, name: str) -> UserRecord | None:
        with self._read() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        return None if row is None else row_to_user(row)

    def get_user(self, user_id: str) -> UserRecord | None:
        with self._read() as conn:
            row = conn.execute(select(users).where(users.c.user_id == user_id)).first()
        return None if row is None else row_to_user(row)

    def count_users(self) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def add_api_key(self, user_id: str, key_hash: str, label: str, now: datetime) -> ApiKeyRecord:
        try:
            with self._write(raw_integrity=True) as conn:
                conn.execute(
                    insert(api_keys).values(
                        user_id=user_id, key_hash=key_hash, label=label, created_at=utc(now)
                    )
                )
                row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).one()
        except IntegrityError as exc:
            raise AlreadyExists(
                "an API key with that hash already exists", hint="make a new key"
            ) from exc
        return row_to_api_key(row)

    def find_api_key(self, key_hash: str) -> ApiKeyRecord | None:
        with self._read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).first()
        return None if row is None else row_to_api_key(row)

    def list_api_keys(self, user_id: str | None = None) -> list[ApiKeyRecord]:
        stmt = select(api_keys).order_by(api_keys.c.key_id)
        if user_id is not None:
            stmt = stmt.where(api_keys.c.user_id == user_id)
        with self._read() as conn:
            return [row_to_api_key(r) for r in conn.execute(stmt)]

    def revoke_api_key(self, key_id: int, now: datetime) -> ApiKeyRecord:
        with self._write() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utc(now))
            )
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
            if row is None:
                raise ApiKeyNotFound(f"API key {key_id} does not exist", hint="list the keys")
            return row_to_api_key(row)

    # -- training runs -----------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> RunRecord:
        try:
            with self._write(raw_integrity=True) as conn:
                if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run.run_id)).first():
                    raise AlreadyExists(
                        f"run {run.run_id!r} already exists", hint="use a new run id"
                    )
                conn.execute(
                    insert(runs).values(
                        run_id=run.run_id,
                        seq=q.next_seq(conn, "run"),
                        owner_id=run.owner_id,
                        base_model=run.base_model,
                        is_lora=run.is_lora,
                        lora_rank=run.lora_rank,
                        lora_config=run.lora_config,
                        user_metadata=run.user_metadata,
                        created_at=utc(run.created_at),
                        last_request_time=utc(run.last_request_time),
                        session_id=run.session_id,
                        corrupted=run.corrupted,
                        public_checkpoints=0,
                    )
                )
                q.add_counter(conn, "runs_owner", run.owner_id, "", 1, 0)
                q.add_counter(conn, "runs_all", "", "", 1, 0)
                row = conn.execute(select(runs).where(runs.c.run_id == run.run_id)).one()
        except IntegrityError as exc:
            raise AlreadyExists(
                f"run {run.run_id!r} already exists", hint="use a new run id"
            ) from exc
        return row_to_run(row)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._read() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else row_to_run(row)

    def touch_run(self, run_id: str, now: datetime) -> None:
        with self._write(durable=False) as conn:
            result = conn.execute(
                update(runs).where(runs.c.run_id == run_id).values(last_request_time=utc(now))
            )
            if result.rowcount == 0:
                raise RunNotFound(f"run {run_id!r} does not exist")

    def list_runs(
        self, owner_id: str | None, *, limit: int, offset: int, include_public_of_others: bool
    ) -> Page[RunRecord]:
        check_page_args(limit, offset)
        stmt = select(runs).order_by(runs.c.seq.desc()).limit(limit).offset(offset)
        total_of = select(func.coalesce(func.sum(counters.c.n), 0)).where(counters.c.kind == "")
        others = None
        if owner_id is None:
            total_of = total_of.where(counters.c.scope == "runs_all", counters.c.subject == "")
        else:
            total_of = total_of.where(
                counters.c.scope == "runs_owner", counters.c.subject == owner_id
            )
            if include_public_of_others:
                stmt = stmt.where(or_(runs.c.owner_id == owner_id, runs.c.public_checkpoints > 0))
                others = (
                    select(func.count())
                    .select_from(runs)
                    .where(runs.c.public_checkpoints > 0, runs.c.owner_id != owner_id)
                )
            else:
                stmt = stmt.where(runs.c.owner_id == owner_id)
        with self._read() as conn:
            snap = q.current_seq(conn, "run")
            items = [row_to_run(r) for r in conn.execute(stmt)] if limit else []
            total = int(conn.execute(total_of).scalar_one())
            if others is not None:
                total += int(conn.execute(others).scalar_one())
        return Page(items, offset, limit, total, snap)

    # -- sessions, samplers, futures, audit ---------------------------------------------------
    def create_session(self, session: SessionRecord) -> SessionRecord:
        try:
            with self._write(raw_integrity=True) as conn:
                conn.execute(
                    insert(sessions).values(
                        session_id=session.session_id,
                        owner_id=session.owner_id,
                        created_at=utc(session.created_at),
                        last_heartbeat=utc(session.last_heartbeat),
                        sdk_version=session.sdk_version,
                        tags=list(session.tags),
                        user_metadata=session.user_metadata,
                        finished_reason=session.finished_reason,
                        model_seq_ids=list(session.model_seq_ids),
                    )
                )
                row = conn.execute(
                    select(sessions).where(sessions.c.session_id == session.session_id)
                ).one()
        except IntegrityError as exc:
            raise AlreadyExists(f"session {session.session_id!r} already exists") from exc
        return row_to_session(row)

    def get_session(self, session_id: str) -> SessionRecord | None:
        with self._read() as conn:
            row = conn.execute(select(sessions).where(sessions.c.session_id == session_id)).first()
        return None if row is None else row_to_session(row)

    def heartbeat_session(self, session_id: str, now: datetime) -> None:
        with self._write(durable=False) as conn:
            result = conn.execute(
                update(sessions)
                .where(sessions.c.session_id == session_id)
                .values(last_heartbeat=utc(now))
            )
            if result.rowcount == 0:
                raise SessionNotFound(f"session {session_id!r} does not exist")

    def finish_session(self, session_id: str, reason: str, now: datetime) -> SessionRecord:
        with self._write() as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.session_id == session_id, sessions.c.finished_reason.is_(None))
                .values(finished_reason=reason)
            )
            row = conn.execute(select(sessions).where(sessions.c.session_id == session_id)).first()
            if row is None:
                raise SessionNotFound(f"session {session_id!r} does not exist")
            return row_to_session(row)

    def create_sampler(self, sampler: SamplerRecord) -> SamplerRecord:
        with contextlib.suppress(IntegrityError), self._write(raw_integrity=True) as conn:
            found = conn.execute(
                select(samplers).where(samplers.c.sampler_id == sampler.sampler_id)
            ).first()
            if found is None:
                conn.execute(
                    insert(samplers).values(
                        sampler_id=sampler.sampler_id,
                        owner_id=sampler.owner_id,
                        session_id=sampler.session_id,
                        base_model=sampler.base_model,
                        model_path=sampler.model_path,
                        created_at=utc(sampler.created_at),
                    )
                )
        # Re-read in every case: a racing creator may have won (idempotent on sampler_id).
        found_sampler = self.get_sampler(sampler.sampler_id)
        assert found_sampler is not None
        return found_sampler

    def get_sampler(self, sampler_id: str) -> SamplerRecord | None:
        with self._read() as conn:
            row = conn.execute(select(samplers).where(samplers.c.sampler_id == sampler_id)).first()
        return None if row is None else row_to_sampler(row)

    def _find_future(self, conn: Connection, future: FutureRecord) -> FutureRecord | None:
        cond = futures.c.request_id == future.request_id
        if future.model_id is not None and future.seq_id is not None:
            cond = or_(
                cond, (futures.c.model_id == future.model_id) & (futures.c.seq_id == future.seq_id)
            )
        row = conn.execute(
            select(futures).where(cond).order_by(futures.c.created_at).limit(1)
        ).first()
        return None if row is None else row_to_future(row)

    def create_future(self, future: FutureRecord) -> tuple[FutureRecord, bool]:
        try:
            with self._write(durable=False, raw_integrity=True) as conn:
                existing = self._find_future(conn, future)
                if existing is not None:
                    return existing, False
                conn.execute(
                    insert(futures).values(
                        request_id=future.request_id,
                        owner_id=future.owner_id,
                        model_id=future.model_id,
                        seq_id=future.seq_id,
                        request_type=future.request_type,
                        state=FutureState.PENDING.value,
                        created_at=utc(future.created_at),
                        finished_at=None,
                        result=None,
                        content_type=future.content_type,
                    )
                )
                row = conn.execute(
                    select(futures).where(futures.c.request_id == future.request_id)
                ).one()
                return row_to_future(row), True
        except IntegrityError as exc:
            # A concurrent retry inserted the same (model_id, seq_id) first: hand out theirs.
            with self._read() as conn:
                existing = self._find_future(conn, future)
            if existing is None:
                raise unavailable(exc) from exc
            return existing, False

    def finish_future(
        self, request_id: str, state: FutureState, result: bytes, content_type: str, now: datetime
    ) -> None:
        if state is FutureState.PENDING:
            raise ValueError("finish_future needs a final state (done or failed)")
        with self._write(durable=False) as conn:
            done = conn.execute(
                update(futures)
                .where(
                    futures.c.request_id == request_id, futures.c.state == FutureState.PENDING.value
                )
                .values(
                    state=state.value,
                    result=bytes(result),
                    content_type=content_type,
                    finished_at=utc(now),
                )
            )
            if (
                done.rowcount == 0
                and conn.execute(
                    select(futures.c.request_id).where(futures.c.request_id == request_id)
                ).first()
                is None
            ):
                raise FutureNotFound(f"future {request_id!r} does not exist")

    def get_future(self, request_id: str) -> FutureRecord | None:
        with self._read() as conn:
            row = conn.execute(select(futures).where(futures.c.request_id == request_id)).first()
        return None if row is None else row_to_future(row)

    def fail_pending_futures(self, error_body: bytes, now: datetime) -> int:
        with self._write(durable=False) as conn:
            result = conn.execute(
                update(futures)
                .where(futures.c.state == FutureState.PENDING.value)
                .values(
                    state=FutureState.FAILED.value,
                    result=bytes(error_body),
                    content_type="application/json",
                    finished_at=utc(now),
                )
            )
            return int(result.rowcount)

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
        with self._write(durable=False) as conn:
            conn.execute(
                insert(audit).values(
                    timestamp=utc(now),
                    owner_id=owner_id,
                    event=event,
                    tinker_path=tinker_path,
                    model_id=model_id,
                    details=dict(details or {}),
                )
            )

    def list_audit(
        self, owner_id: str, *, since: datetime | None, until: datetime | None, limit: int
    ) -> list[AuditRecord]:
        stmt = select(audit).where(audit.c.owner_id == owner_id)
        if (since := opt_utc(since)) is not None:
            stmt = stmt.where(audit.c.timestamp >= since)
        if (until := opt_utc(until)) is not None:
            stmt = stmt.where(audit.c.timestamp < until)
        stmt = stmt.order_by(audit.c.timestamp.desc(), audit.c.seq.desc()).limit(limit)
        with self._read() as conn:
            return [row_to_audit(r) for r in conn.execute(stmt)]
