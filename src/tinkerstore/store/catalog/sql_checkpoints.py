"""The SQL side of versions and checkpoints: the commit, deletes, pages and their counters.

Every function runs on a ``Connection`` inside a transaction opened by ``SqlCatalog`` (a write
transaction for anything that changes rows). Lock order on PostgreSQL, to rule out deadlocks:
the ``checkpoint`` sequence row (commits only), then a version row, then the checkpoint row, then
the old version, then counter rows (owner before run), then the run row.

Totals: ``counters`` holds per owner+kind and per run+kind counts of checkpoint rows, changed in
the same transaction as the rows. A page's ``total_count`` is that counter minus rows newer than
the snapshot and minus expired rows the sweeper has not removed yet; those are index range scans
over few rows, so the cost does not grow with the number of checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    ScalarSelect,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tinkerstore.errors import AlreadyExists, InvalidInput, NotFound
from tinkerstore.store.catalog._common import (
    checkpoint_exists,
    checkpoint_not_found,
    opt_utc,
    utc,
)
from tinkerstore.store.catalog.base import CheckpointRecord, Page, VersionRecord, VersionState
from tinkerstore.store.catalog.schema import (
    checkpoints,
    counters,
    row_to_checkpoint,
    row_to_version,
    runs,
    sequences,
    versions,
)
from tinkerstore.types.paths import CheckpointKind

__all__ = [
    "add_counter",
    "begin_version",
    "commit_version",
    "current_seq",
    "delete_checkpoint",
    "delete_if_expired",
    "expired_checkpoints",
    "fail_stale_pending",
    "fail_version",
    "forget_versions",
    "garbage_versions",
    "latest_checkpoint",
    "list_checkpoints",
    "next_seq",
    "set_expiry",
    "set_public",
    "storage_usage",
]

c = checkpoints.c
_GARBAGE = (VersionState.FAILED.value, VersionState.SUPERSEDED.value)


def _key(run_id: str, kind: CheckpointKind, name: str) -> ColumnElement[bool]:
    return and_(c.run_id == run_id, c.kind == CheckpointKind(kind).value, c.name == name)


def _alive(now: datetime) -> ColumnElement[bool]:
    return or_(c.expires_at.is_(None), c.expires_at > now)


# -- sequences and counters ------------------------------------------------------------------
def next_seq(conn: Connection, name: str) -> int:
    # UPDATE first: on PostgreSQL its row lock serialises everyone taking this number until
    # commit, so numbers become visible in order (see schema.sequences).
    conn.execute(
        update(sequences).where(sequences.c.name == name).values(value=sequences.c.value + 1)
    )
    return current_seq(conn, name)


def current_seq(conn: Connection, name: str) -> int:
    return int(conn.execute(select(sequences.c.value).where(sequences.c.name == name)).scalar_one())


def add_counter(conn: Connection, scope: str, subject: str, kind: str, n: int, nbytes: int) -> None:
    if n == 0 and nbytes == 0:
        return
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = make(counters).values(scope=scope, subject=subject, kind=kind, n=n, bytes=nbytes)
    stmt = stmt.on_conflict_do_update(
        index_elements=[counters.c.scope, counters.c.subject, counters.c.kind],
        set_={"n": counters.c.n + stmt.excluded.n, "bytes": counters.c.bytes + stmt.excluded.bytes},
    )
    conn.execute(stmt)


def _count_checkpoint(conn: Connection, row: Row[Any], sign: int) -> None:
    add_counter(conn, "ckpt_owner", row.owner_id, row.kind, sign, sign * int(row.size_bytes))
    add_counter(conn, "ckpt_run", row.run_id, row.kind, sign, sign * int(row.size_bytes))


def _add_public(conn: Connection, run_id: str, delta: int) -> None:
    if delta:
        conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(public_checkpoints=runs.c.public_checkpoints + delta)
        )


# -- versions and the commit -------------------------------------------------------------------
def _locked_checkpoint(conn: Connection, where: ColumnElement[bool]) -> Row[Any] | None:
    return conn.execute(select(checkpoints).where(where).with_for_update()).first()


def begin_version(conn: Connection, version: VersionRecord) -> VersionRecord:
    existing = conn.execute(
        select(c.expires_at).where(_key(version.run_id, version.kind, version.name))
    ).first()
    created = utc(version.created_at)
    taken = existing is not None and (existing.expires_at is None or existing.expires_at > created)
    if taken and not version.overwrite:
        raise checkpoint_exists(version.run_id, version.kind, version.name)
    conn.execute(
        insert(versions).values(
            version_id=version.version_id,
            run_id=version.run_id,
            kind=CheckpointKind(version.kind).value,
            name=version.name,
            owner_id=version.owner_id,
            state=VersionState.PENDING.value,
            created_at=created,
            blob_prefix=version.blob_prefix,
            size_bytes=version.size_bytes,
            manifest_digest=version.manifest_digest,
            format_version=version.format_version,
            error=version.error,
            ttl_seconds=version.ttl_seconds,
            overwrite=version.overwrite,
            user_metadata=version.user_metadata,
        )
    )
    row = conn.execute(select(versions).where(versions.c.version_id == version.version_id)).one()
    return row_to_version(row)


def commit_version(
    conn: Connection,
    version_id: str,
    *,
    size_bytes: int,
    manifest_digest: str,
    now: datetime,
    expires_at: datetime | None,
) -> CheckpointRecord | AlreadyExists:
    """The commit. Returns (not raises) ``AlreadyExists`` so the caller commits the version's
    ``failed`` state before raising it."""
    now, expires_at = utc(now), opt_utc(expires_at)
    seq = next_seq(conn, "checkpoint")  # first: the commit lock on PostgreSQL
    v = conn.execute(
        select(versions).where(versions.c.version_id == version_id).with_for_update()
    ).first()
    if v is None or v.state != VersionState.PENDING.value:
        state = "missing" if v is None else v.state
        raise NotFound(
            f"version {version_id!r} is not pending ({state}): it cannot be committed",
            hint="the save was abandoned or failed; save again",
        )
    kind = CheckpointKind(v.kind)
    old = _locked_checkpoint(conn, _key(v.run_id, kind, v.name))
    old_alive = old is not None and (old.expires_at is None or old.expires_at > now)
    if old_alive and not v.overwrite:
        conn.execute(
            update(versions)
            .where(versions.c.version_id == version_id)
            .values(
                state=VersionState.FAILED.value,
                error="name taken by a concurrent save",
                garbage_since=now,
            )
        )
        return checkpoint_exists(v.run_id, kind, v.name)
    conn.execute(
        update(versions)
        .where(versions.c.version_id == version_id)
        .values(
            state=VersionState.COMPLETED.value,
            size_bytes=size_bytes,
            manifest_digest=manifest_digest,
        )
    )
    values = {
        "owner_id": v.owner_id,
        "version_id": version_id,
        "blob_prefix": v.blob_prefix,
        "seq": seq,
        "created_at": now,
        "size_bytes": size_bytes,
        "manifest_digest": manifest_digest,
        "format_version": v.format_version,
        "expires_at": expires_at,
        "public": False,  # an overwrite is new content: it is never published implicitly
        "user_metadata": v.user_metadata or {},
    }
    if old is not None:
        # The overwrite: swap the pointer in place, in this same transaction.
        _supersede(conn, old.version_id, now)
        conn.execute(update(checkpoints).where(_key(v.run_id, kind, v.name)).values(**values))
        _count_checkpoint(conn, old, -1)
    else:
        conn.execute(
            insert(checkpoints).values(run_id=v.run_id, kind=kind.value, name=v.name, **values)
        )
    new = conn.execute(select(checkpoints).where(_key(v.run_id, kind, v.name))).one()
    _count_checkpoint(conn, new, +1)
    if old is not None and old.public:
        _add_public(conn, old.run_id, -1)
    return row_to_checkpoint(new)


def _supersede(conn: Connection, version_id: str, now: datetime) -> None:
    conn.execute(
        update(versions)
        .where(versions.c.version_id == version_id)
        .values(state=VersionState.SUPERSEDED.value, garbage_since=now)
    )


def fail_version(conn: Connection, version_id: str, error: str, now: datetime) -> None:
    conn.execute(
        update(versions)
        .where(versions.c.version_id == version_id, versions.c.state == VersionState.PENDING.value)
        .values(state=VersionState.FAILED.value, error=error, garbage_since=utc(now))
    )


def fail_stale_pending(
    conn: Connection, older_than: datetime, now: datetime
) -> list[VersionRecord]:
    stale = versions.c.state == VersionState.PENDING.value
    where = and_(stale, versions.c.created_at < utc(older_than))
    rows = conn.execute(
        select(versions.c.version_id)
        .where(where)
        .order_by(versions.c.created_at, versions.c.version_id)
        .with_for_update()
    ).all()
    ids = [r.version_id for r in rows]
    if not ids:
        return []
    error = "abandoned: still pending at sweep"
    conn.execute(
        update(versions)
        .where(versions.c.version_id.in_(ids), stale)
        .values(state=VersionState.FAILED.value, error=error, garbage_since=utc(now))
    )
    found = conn.execute(select(versions).where(versions.c.version_id.in_(ids))).all()
    by_id = {r.version_id: row_to_version(r) for r in found}
    return [by_id[i] for i in ids]


def garbage_versions(conn: Connection, older_than: datetime, limit: int) -> list[VersionRecord]:
    # The grace period runs from when the version stopped being live. ``created_at`` stands in
    # only for a garbage row written without ``garbage_since`` (not by this module). ``<=``: a
    # recovery sweep (no grace) must take the versions it failed at this same ``now``. The
    # state index narrows the scan to garbage rows, which the sweeper keeps few.
    dead_since = func.coalesce(versions.c.garbage_since, versions.c.created_at)
    rows = conn.execute(
        select(versions)
        .where(versions.c.state.in_(_GARBAGE), dead_since <= utc(older_than))
        .order_by(dead_since, versions.c.version_id)
        .limit(limit)
    ).all()
    return [row_to_version(r) for r in rows]


def forget_versions(conn: Connection, version_ids: Sequence[str]) -> None:
    ids = list(version_ids)
    for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
        conn.execute(
            delete(versions).where(
                versions.c.version_id.in_(ids[start : start + 500]),
                versions.c.state.in_(_GARBAGE),  # never drop a live version's row
            )
        )


# -- visible checkpoints ------------------------------------------------------------------------
def list_checkpoints(
    conn: Connection,
    *,
    run_id: str | None,
    owner_id: str | None,
    kinds: Sequence[CheckpointKind] | None,
    limit: int,
    offset: int,
    snapshot: int | None,
    now: datetime,
    public_only: bool = False,
) -> Page[CheckpointRecord]:
    if run_id is not None and owner_id is None:
        col, scope, subject = c.run_id, "ckpt_run", run_id
    elif owner_id is not None and run_id is None:
        col, scope, subject = c.owner_id, "ckpt_owner", owner_id
    else:
        raise InvalidInput("list_checkpoints needs exactly one of run_id and owner_id")
    now = utc(now)
    snap = current_seq(conn, "checkpoint") if snapshot is None else snapshot
    kind_values = None if kinds is None else sorted({CheckpointKind(k).value for k in kinds})
    if kind_values == []:
        return Page([], offset, limit, 0, snap)

    def scoped(*conds: ColumnElement[bool]) -> list[ColumnElement[bool]]:
        out = [col == subject, *conds]
        if kind_values is not None:
            out.append(c.kind.in_(kind_values))
        if public_only:
            out.append(c.public.is_(True))
        return out

    items: list[CheckpointRecord] = []
    if limit > 0:
        page = (
            select(checkpoints)
            .where(*scoped(c.seq <= snap, _alive(now)))
            .order_by(c.seq.desc())
            .limit(limit)
            .offset(offset)
        )
        items = [row_to_checkpoint(r) for r in conn.execute(page)]
    counted = select(func.coalesce(func.sum(counters.c.n), 0)).where(
        counters.c.scope == scope, counters.c.subject == subject
    )
    if kind_values is not None:
        counted = counted.where(counters.c.kind.in_(kind_values))
    if public_only:
        # Other users' view of a run: rare and small, so no counters are kept for it.
        visible = select(func.count()).select_from(checkpoints)
        visible = visible.where(*scoped(c.seq <= snap, _alive(now)))
        return Page(items, offset, limit, int(conn.execute(visible).scalar_one()), snap)

    # total = counted - |newer OR expired|, by inclusion-exclusion, in one round trip. Each
    # count has ONE range condition, so the planner can only pick the index that makes it a
    # short range scan (``seq <= snap`` next to ``expires_at <= now`` made SQLite walk all of
    # the owner's rows).
    def count(*conds: ColumnElement[bool]) -> ScalarSelect[int]:
        return (
            select(func.count()).select_from(checkpoints).where(*scoped(*conds)).scalar_subquery()
        )

    newer, expired = c.seq > snap, c.expires_at <= now
    row = conn.execute(
        select(counted.scalar_subquery(), count(newer), count(expired), count(newer, expired))
    ).one()
    total = int(row[0]) - int(row[1]) - int(row[2]) + int(row[3])
    return Page(items, offset, limit, max(total, 0), snap)


def latest_checkpoint(
    conn: Connection, run_id: str, kind: CheckpointKind, now: datetime
) -> CheckpointRecord | None:
    row = conn.execute(
        select(checkpoints)
        .where(c.run_id == run_id, c.kind == CheckpointKind(kind).value, _alive(utc(now)))
        .order_by(c.seq.desc())
        .limit(1)
    ).first()
    return None if row is None else row_to_checkpoint(row)


def _remove(conn: Connection, row: Row[Any], now: datetime) -> None:
    conn.execute(delete(checkpoints).where(_key(row.run_id, CheckpointKind(row.kind), row.name)))
    _supersede(conn, row.version_id, now)
    _count_checkpoint(conn, row, -1)
    if row.public:
        _add_public(conn, row.run_id, -1)


def delete_checkpoint(
    conn: Connection, run_id: str, kind: CheckpointKind, name: str, now: datetime
) -> CheckpointRecord:
    row = _locked_checkpoint(conn, _key(run_id, kind, name))
    if row is None:
        raise checkpoint_not_found(run_id, kind, name)
    _remove(conn, row, utc(now))
    return row_to_checkpoint(row)


def delete_if_expired(
    conn: Connection, run_id: str, kind: CheckpointKind, name: str, now: datetime
) -> bool:
    # The expiry test is in the locking SELECT: on PostgreSQL a racing caller blocks on the row
    # lock and then re-checks this WHERE against the committed row (gone, or TTL cleared).
    now = utc(now)
    row = _locked_checkpoint(conn, and_(_key(run_id, kind, name), c.expires_at <= now))
    if row is None:
        return False
    _remove(conn, row, now)
    return True


def set_public(
    conn: Connection, run_id: str, kind: CheckpointKind, name: str, public: bool
) -> CheckpointRecord:
    row = _locked_checkpoint(conn, _key(run_id, kind, name))
    if row is None:
        raise checkpoint_not_found(run_id, kind, name)
    if bool(row.public) != public:
        conn.execute(update(checkpoints).where(_key(run_id, kind, name)).values(public=public))
        _add_public(conn, run_id, 1 if public else -1)
    return row_to_checkpoint(
        conn.execute(select(checkpoints).where(_key(run_id, kind, name))).one()
    )


def set_expiry(
    conn: Connection, run_id: str, kind: CheckpointKind, name: str, expires_at: datetime | None
) -> CheckpointRecord:
    result = conn.execute(
        update(checkpoints).where(_key(run_id, kind, name)).values(expires_at=opt_utc(expires_at))
    )
    if result.rowcount == 0:
        raise checkpoint_not_found(run_id, kind, name)
    return row_to_checkpoint(
        conn.execute(select(checkpoints).where(_key(run_id, kind, name))).one()
    )


def expired_checkpoints(conn: Connection, now: datetime, limit: int) -> list[CheckpointRecord]:
    rows = conn.execute(
        select(checkpoints)
        .where(c.expires_at <= utc(now))
        .order_by(c.expires_at, c.seq)
        .limit(limit)
    ).all()
    return [row_to_checkpoint(r) for r in rows]


def storage_usage(conn: Connection, owner_id: str, now: datetime) -> tuple[int, int]:
    counted = conn.execute(
        select(
            func.coalesce(func.sum(counters.c.n), 0), func.coalesce(func.sum(counters.c.bytes), 0)
        ).where(counters.c.scope == "ckpt_owner", counters.c.subject == owner_id)
    ).one()
    expired = conn.execute(
        select(func.count(), func.coalesce(func.sum(c.size_bytes), 0)).where(
            c.owner_id == owner_id, c.expires_at <= utc(now)
        )
    ).one()
    return int(counted[0]) - int(expired[0]), int(counted[1]) - int(expired[1])
