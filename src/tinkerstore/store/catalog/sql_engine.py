"""Engines and transactions of ``SqlCatalog``, on SQLite or PostgreSQL.

SQLite (Datasette's recipe): WAL mode, so readers never block the writer nor each other; ONE
writer, so there is never a "database is locked" inside a transaction: every write transaction
starts with ``BEGIN IMMEDIATE`` (the write lock up front, waited for with ``busy_timeout`` when
another process holds it) on a single connection, and an in-process lock queues this process's
writers in front of it. Reads run on a pool of their own connections, each read inside a
deferred ``BEGIN`` so all its statements see one snapshot.

SQLite durability, per transaction (``_write(durable=...)``): in WAL mode ``synchronous=NORMAL``
is already safe against a killed *process* (SIGKILL, OOM: the commit is in the OS page cache
when COMMIT returns, and the database is never corrupted), but an OS crash or power loss may roll
back the last commits. So a transaction that makes a promise to a client ("your checkpoint is
saved", "deleted", "published", "your key is ...") runs with ``synchronous=FULL``: an fsync of the
WAL at commit, after the blobs were fsync'd, so the catalog is at least as durable as they are.
That fsync also makes every earlier commit durable. Chatty bookkeeping (futures, audit, touch,
heartbeat, pending/failed versions) runs with NORMAL: losing its last commits to a power cut is
harmless (a future is failed at start-up, a lost pending row only orphans blobs the sweeper
removes) and it saves one fsync (~10 ms on a VM disk) per request.

PostgreSQL: writes in READ COMMITTED with explicit row locks (see ``sql_checkpoints`` for the lock
order); reads in REPEATABLE READ so a page and its total come from one snapshot.

``try_lock`` (one sweeper among replicas): on PostgreSQL a session-level advisory lock held by a
connection kept out of the pool for the block, in autocommit so no transaction idles open; if the
process dies, its session ends and the lock goes with it. SQLite serves one server process (the
lock file of ``tinkerstore serve``), so a process-local lock per database file is enough.

Driver errors never leak: integrity violations the protocol expects become ``AlreadyExists`` or
are resolved by re-reading, everything else becomes ``Unavailable`` (``raise ... from exc``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import StaticPool

from tinkerstore.errors import AlreadyExists, StorageFull, Unavailable
from tinkerstore.store.catalog import migrations
from tinkerstore.store.catalog._common import local_try_lock

__all__ = ["SqlEngine"]

log = logging.getLogger(__name__)

# try_lock on SQLite: one registry per process, keyed by database URL and lock name, so two
# catalog handles on one file in one process exclude each other too.
_SQLITE_LOCKS: dict[str, threading.Lock] = {}
# The advisory lock key: a 64-bit hash of the schema and the name, so deployments sharing one
# database in different schemas do not block each other.
_PG_LOCK_KEY = "hashtextextended('tinkerstore:' || current_schema() || ':' || :name, 0)"


def _sqlite_engine(
    url: str, *, begin: str, pool_size: int, busy_timeout_s: float, memory: bool
) -> Engine:
    kwargs: dict[str, Any] = (
        {"poolclass": StaticPool}
        if memory
        else {
            "pool_size": pool_size,
            "max_overflow": 0 if pool_size == 1 else pool_size,
        }
    )
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_timeout_s}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, which would otherwise start
        # deferred transactions itself (and upgrade them to write locks mid-way: SQLITE_BUSY).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = FULL")  # _write() relaxes it where that is safe
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


def _private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use the umask): it holds the
    URL-signing secret. SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    if path.stat().st_uid == os.getuid():
        os.chmod(path, 0o600)  # also tightens a catalog created by an earlier version


class SqlEngine:
    """Engines, transactions and migrations of ``SqlCatalog`` (see the module docstring)."""

    def __init__(self, url: str, *, pool_size: int = 8, busy_timeout_s: float = 30.0) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        self._url_key = parsed.render_as_string(hide_password=True)
        self._write_lock: contextlib.AbstractContextManager[Any]
        # try_lock's registry on SQLite: process-wide for a file, this object's own in memory.
        self._local_locks = _SQLITE_LOCKS
        if self.dialect == "sqlite":
            memory = parsed.database in (None, "", ":memory:")
            if memory:
                self._local_locks = {}
            else:
                _private_file(Path(str(parsed.database)))
            self._write_engine = _sqlite_engine(
                url,
                begin="BEGIN IMMEDIATE",
                pool_size=1,
                busy_timeout_s=busy_timeout_s,
                memory=memory,
            )
            # An in-memory database lives in its one connection: reads share it, and the lock.
            self._read_engine = (
                self._write_engine
                if memory
                else _sqlite_engine(
                    url,
                    begin="BEGIN",
                    pool_size=pool_size,
                    busy_timeout_s=busy_timeout_s,
                    memory=False,
                )
            )
            lock = threading.Lock()
            self._write_lock = lock
            self._read_lock: contextlib.AbstractContextManager[Any] = (
                lock if memory else contextlib.nullcontext()
            )
        elif self.dialect == "postgresql":
            self._write_engine = create_engine(url, pool_size=pool_size, pool_pre_ping=True)
            self._read_engine = self._write_engine.execution_options(
                isolation_level="REPEATABLE READ"
            )
            self._write_lock = self._read_lock = contextlib.nullcontext()
        else:
            raise ValueError(
                f"unsupported catalog database {self.dialect!r}: use sqlite or postgresql"
            )

    @property
    def read_engine(self) -> Engine:
        """The engine reads run on (exposed for diagnostics, e.g. EXPLAIN in tests)."""
        return self._read_engine

    # -- transactions ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _write(self, *, durable: bool = True, raw_integrity: bool = False) -> Iterator[Connection]:
        """One write transaction. ``durable=False`` may be rolled back by a power cut (see the
        module docstring); ``raw_integrity`` lets the caller handle ``IntegrityError``."""
        with self._write_lock:
            try:
                with self._write_engine.connect() as conn:
                    if self.dialect == "sqlite":
                        # Outside the transaction: the setting applies to its commit.
                        raw = conn.connection.dbapi_connection
                        assert raw is not None
                        raw.cursor().execute(
                            f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}"
                        )
                    with conn.begin():
                        yield conn
            except IntegrityError as exc:
                if raw_integrity:
                    raise
                raise AlreadyExists(
                    f"the catalog refused a duplicate record: {exc.orig}",
                    hint="use a new id or name",
                ) from exc
            except DBAPIError as exc:
                raise unavailable(exc) from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._read_lock:
            try:
                with self._read_engine.connect() as conn:
                    yield conn
            except DBAPIError as exc:
                raise unavailable(exc) from exc

    # -- coordination ------------------------------------------------------------------------
    @contextlib.contextmanager
    def try_lock(self, name: str) -> Iterator[bool]:
        if self.dialect != "postgresql":
            with local_try_lock(self._local_locks, f"{self._url_key}\x00{name}") as held:
                yield held
            return
        try:
            conn = self._write_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            held = bool(
                conn.execute(
                    text(f"SELECT pg_try_advisory_lock({_PG_LOCK_KEY})"), {"name": name}
                ).scalar_one()
            )
        except DBAPIError as exc:
            raise unavailable(exc) from exc
        try:
            yield held
        finally:
            try:
                if held:
                    conn.execute(text(f"SELECT pg_advisory_unlock({_PG_LOCK_KEY})"), {"name": name})
            except DBAPIError as exc:
                # Never hand a connection that may still hold the lock back to the pool: closing
                # its session is what releases the lock then.
                log.warning(
                    "could not release catalog lock %r (%s); dropping the connection",
                    name,
                    exc.orig,
                )
                conn.invalidate()
            finally:
                conn.close()

    # -- lifecycle ---------------------------------------------------------------------------
    def migrate(self) -> None:
        with self._write() as conn:
            migrations.migrate(conn)

    def close(self) -> None:
        self._write_engine.dispose()
        self._read_engine.dispose()


def unavailable(exc: DBAPIError) -> Unavailable | StorageFull:
    orig = exc.orig
    # SQLITE_FULL (13) and PostgreSQL's disk_full (53100): the disk is the problem, and the
    # caller should hear StorageFull (507) like it does when a blob write hits ENOSPC.
    if getattr(orig, "sqlite_errorcode", None) == 13 or getattr(orig, "sqlstate", None) == "53100":
        return StorageFull(
            f"the catalog database ran out of disk space: {orig}",
            hint="free disk space where the catalog lives, then retry; "
            "earlier checkpoints are intact",
        )
    return Unavailable(
        f"the catalog database failed: {type(exc.orig).__name__}: {exc.orig}",
        hint="check that the database is reachable and migrated (tinkerstore migrates at start-up)",
    )
