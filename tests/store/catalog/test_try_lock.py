"""``Catalog.try_lock``: one holder at a time, never waiting, released at the end of the block.

On PostgreSQL the lock spans processes: a second catalog handle (another replica) is refused
while the first holds it, and a holder whose connection dies (a killed replica) frees it.
"""

from __future__ import annotations

import time

import pytest

from tests.store.catalog.conftest import CatalogDB
from tinkerstore.store.catalog import Catalog


def test_one_holder_at_a_time(catalog: Catalog) -> None:
    with catalog.try_lock("sweeper") as first:
        assert first is True
        with catalog.try_lock("sweeper") as second:
            assert second is False  # not re-entrant: a second sweeper in this process waits
        with catalog.try_lock("other") as other:
            assert other is True  # names are independent
    with catalog.try_lock("sweeper") as again:
        assert again is True  # released when the block ended


def test_released_when_the_block_raises(catalog: Catalog) -> None:
    with pytest.raises(RuntimeError), catalog.try_lock("sweeper") as held:
        assert held
        raise RuntimeError("sweep failed")
    with catalog.try_lock("sweeper") as held:
        assert held


def test_second_handle_is_refused(sql_db: CatalogDB) -> None:
    """Two handles on one database: two replicas on PostgreSQL, two catalogs of one process on
    SQLite (which serves one process only)."""
    a, b = sql_db.open(), sql_db.open()
    with a.try_lock("sweeper") as held_a:
        assert held_a
        with b.try_lock("sweeper") as held_b:
            assert held_b is False
    with b.try_lock("sweeper") as held_b:
        assert held_b


def test_lock_of_a_dead_session_is_freed(sql_db: CatalogDB) -> None:
    if sql_db.kind != "postgresql":
        pytest.skip("PostgreSQL only: a killed replica's session ends and frees its lock")
    import sqlalchemy as sa

    a, b = sql_db.open(), sql_db.open()
    lock = a.try_lock("sweeper")
    assert lock.__enter__() is True
    # Kill the session holding the advisory lock from outside, as if replica A's host died.
    admin = sa.create_engine(sql_db.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND a.datname = current_database()"
            )
        ).all()
    admin.dispose()
    assert len(killed) == 1
    # pg_terminate_backend only signals: the session ends (and its lock goes) a moment later.
    deadline = time.monotonic() + 10
    while True:
        with b.try_lock("sweeper") as held_b:
            if held_b:
                break
        assert time.monotonic() < deadline, "the dead session's lock was never released"
        time.sleep(0.05)
    lock.__exit__(None, None, None)  # unlocking on a dead connection must not raise
