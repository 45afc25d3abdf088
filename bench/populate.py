"""Bulk-populate a catalog with committed checkpoints, through SQL on the real schema.

A million full saves would take hours; the listing benchmark only needs rows. This writes what
``sql_checkpoints.commit_version`` writes for each save, in bulk and in the same order of
effects: the ``checkpoint`` sequence advanced by N (so snapshots and ``seq`` stay consistent),
one ``completed`` version row and one checkpoint row per save, and the ``ckpt_owner`` /
``ckpt_run`` counters moved by the same totals (through ``sql_checkpoints.add_counter``, the
commit path's own upsert), all in one transaction per batch. Tables and column types come from
``tinkerstore.store.catalog.schema``, so SQLite's integer timestamps and the JSON columns are
encoded exactly as the catalog does.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, insert, update

from tinkerstore.store.catalog import sqlalchemy_url
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
    finally:
        engine.dispose()
