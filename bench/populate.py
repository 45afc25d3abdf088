"""Bulk-populate a catalog with committed checkpoints, through SQL on the real schema.

A million full saves would take hours; the listing benchmark only needs rows. This writes what
``sql_checkpoints.commit_version`` writes for each save, in bulk and in the same order of
effects: the ``checkpoint`` sequence advanced by N (so snapshots and ``seq`` stay consistent),
one ``completed`` version row and one checkpoint row per save, and the ``ckpt_owner`` /
``ckpt_run`` counters moved by the same totals (through ``sql_checkpoints.add_counter``, the
commit path's own upsert), all in one transaction per batch. Tables and column types come from
``tinkerstore.store.catalog.schema``, so SQLite's integer timestamps and the JSON columns are
encoded exactly as the catalog does.

On SQLite the rows themselves are generated inside the database (``INSERT ... SELECT`` over a
recursive counter, values encoded as ``UtcDateTime``/``JsonText``/``Boolean`` store them:
integer microseconds, JSON text, 0/1): a million checkpoints take seconds instead of minutes
of per-row Python. The sequence and counters still go through the same statements as above.
On PostgreSQL the two tables are ``ANALYZE``d afterwards, as autovacuum would have done.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, create_engine, insert, text, update

from tinkerstore.store.catalog import sqlalchemy_url
from tinkerstore.store.catalog._common import to_micros
from tinkerstore.store.catalog.schema import checkpoints, sequences, versions
from tinkerstore.store.catalog.sql_checkpoints import add_counter, current_seq
from tinkerstore.types.paths import CheckpointKind

__all__ = ["BATCH", "bulk_add_checkpoints"]

BATCH = 50_000
SIZE_BYTES = 8 << 20  # a plausible LoRA checkpoint; only the counters' byte totals see it


def bulk_add_checkpoints(
    database_url: str, *, owner_id: str, run_id: str, count: int, start_index: int = 0
) -> None:
    """Add ``count`` committed checkpoints (alternately weights / sampler_weights) to a run."""
    engine = create_engine(sqlalchemy_url(database_url))
    if engine.dialect.name == "sqlite":
        # One bulk load: a crash would just mean re-running the benchmark.
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _fast(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA synchronous = OFF")
            cur.close()

    base = datetime.now(UTC) - timedelta(days=1)
    try:
        done = 0
        while done < count:
            n = min(BATCH, count - done)
            with engine.begin() as conn:
                conn.execute(
                    update(sequences)
                    .where(sequences.c.name == "checkpoint")
                    .values(value=sequences.c.value + n)
                )
                first_seq = current_seq(conn, "checkpoint") - n + 1
                if engine.dialect.name == "sqlite":
                    i0 = start_index + done
                    _sqlite_rows(conn, owner_id, run_id, i0, n, first_seq, to_micros(base))
                    evens = (n + (i0 % 2 == 0)) // 2  # indexes i0..i0+n-1 that are even
                    for kind, k in (
                        (CheckpointKind.WEIGHTS.value, evens),
                        (CheckpointKind.SAMPLER_WEIGHTS.value, n - evens),
                    ):
                        if k:
                            add_counter(conn, "ckpt_owner", owner_id, kind, k, k * SIZE_BYTES)
                            add_counter(conn, "ckpt_run", run_id, kind, k, k * SIZE_BYTES)
                    done += n
                    continue
                vrows, crows = [], []
                per_kind: dict[str, int] = {}
                for j in range(n):
                    i = start_index + done + j
                    kind = (
                        CheckpointKind.WEIGHTS if i % 2 == 0 else CheckpointKind.SAMPLER_WEIGHTS
                    ).value
                    per_kind[kind] = per_kind.get(kind, 0) + 1
                    vid = uuid.uuid4().hex
                    at = base + timedelta(microseconds=i)
                    common = {
                        "run_id": run_id,
                        "kind": kind,
                        "name": f"step-{i:08d}",
                        "owner_id": owner_id,
                        "created_at": at,
                        "blob_prefix": f"v/{vid}/",
                        "size_bytes": SIZE_BYTES,
                        "manifest_digest": "0" * 64,
                        "format_version": 1,
                        "version_id": vid,
                    }
                    vrows.append(
                        {
                            **common,
                            "state": "completed",
                            "error": None,
                            "ttl_seconds": None,
                            "overwrite": False,
                            "user_metadata": None,
                        }
                    )
                    crows.append(
                        {
                            **common,
                            "seq": first_seq + j,
                            "expires_at": None,
                            "public": False,
                            "user_metadata": {},
                        }
                    )
                conn.execute(insert(versions), vrows)
                conn.execute(insert(checkpoints), crows)
                for kind, k in per_kind.items():
                    add_counter(conn, "ckpt_owner", owner_id, kind, k, k * SIZE_BYTES)
                    add_counter(conn, "ckpt_run", run_id, kind, k, k * SIZE_BYTES)
            done += n
        if engine.dialect.name == "postgresql":
            # A live catalog grows slowly enough for autovacuum to keep the planner's statistics
            # current; right after a bulk load they still describe the empty tables, and pages
            # then measured 2-5x slower until autovacuum got to them (mid-benchmark).
            with engine.begin() as conn:
                for table in (versions, checkpoints):
                    conn.execute(text(f"ANALYZE {table.name}"))
    finally:
        engine.dispose()


_SQLITE_VERSIONS = """
WITH RECURSIVE cnt(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM cnt WHERE j + 1 < :n)
INSERT INTO versions (version_id, run_id, kind, name, owner_id, state, created_at, blob_prefix,
                      size_bytes, manifest_digest, format_version, error, ttl_seconds,
                      overwrite, user_metadata)
SELECT printf('%s%016x', :vp, :i0 + j), :run, CASE WHEN (:i0 + j) % 2 = 0 THEN :kw ELSE :ks END,
       printf('step-%08d', :i0 + j), :owner, 'completed', :t0 + :i0 + j,
       printf('v/%s%016x/', :vp, :i0 + j), :size, :digest, 1, NULL, NULL, 0, NULL
FROM cnt
"""

_SQLITE_CHECKPOINTS = """
INSERT INTO checkpoints (run_id, kind, name, owner_id, version_id, blob_prefix, seq, created_at,
                         size_bytes, manifest_digest, format_version, expires_at, public,
                         user_metadata)
SELECT run_id, kind, name, owner_id, version_id, blob_prefix,
       :seq0 + (created_at - :t0 - :i0), created_at, size_bytes, manifest_digest,
       format_version, NULL, 0, '{}'
FROM versions
WHERE run_id = :run AND version_id >= printf('%s%016x', :vp, :i0)
  AND version_id < printf('%s%016x', :vp, :i0 + :n)
"""


def _sqlite_rows(
    conn: Connection, owner_id: str, run_id: str, i0: int, n: int, seq0: int, t0: int
) -> None:
    """``n`` version + checkpoint rows for indexes ``i0 ..``, made by SQLite itself."""
    params = {
        "n": n,
        "i0": i0,
        "vp": uuid.uuid4().hex[:16],  # + 16 hex digits of the index: a unique 32-hex id
        "run": run_id,
        "owner": owner_id,
        "kw": CheckpointKind.WEIGHTS.value,
        "ks": CheckpointKind.SAMPLER_WEIGHTS.value,
        "t0": t0,
        "size": SIZE_BYTES,
        "digest": "0" * 64,
        "seq0": seq0,
    }
    conn.execute(text(_SQLITE_VERSIONS), params)
    conn.execute(text(_SQLITE_CHECKPOINTS), params)
