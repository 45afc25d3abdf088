"""Schema migrations: a short, ordered list of steps and a ``schema_version`` table.

``migrate(conn)`` runs inside ONE write transaction that the caller opened (``BEGIN IMMEDIATE``
on SQLite, which already excludes every other writer). On PostgreSQL it first takes a
transaction-scoped advisory lock, so two processes starting at once apply each step exactly once:
the second waits, then finds the steps recorded. DDL is transactional on both databases, so a
failed step leaves the schema as it was.

Adding a version: append a step that alters the schema from the previous version (plain DDL via
``conn.exec_driver_sql`` or SQLAlchemy constructs) and update ``schema.py`` to match. Step 1
creates ``schema.metadata`` as it is at version 1; once a step 2 exists, step 1 must create a
frozen copy of the version-1 tables instead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from sqlalchemy import Connection, func, insert, select, text

from tinkerstore.errors import TinkerstoreError
from tinkerstore.store.catalog import schema

__all__ = ["LATEST_VERSION", "STEPS", "Step", "migrate"]

# Any fixed 64-bit number, the same in every tinkerstore process.
_PG_LOCK_KEY = 0x74696E6B_73746F72  # "tinkstor"


class Step(NamedTuple):
    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial_schema(conn: Connection) -> None:
    schema.metadata.create_all(conn)
    conn.execute(
        insert(schema.sequences),
        [{"name": "checkpoint", "value": 0}, {"name": "run", "value": 0}],
    )


STEPS: list[Step] = [Step(1, "initial schema", _initial_schema)]
LATEST_VERSION = STEPS[-1].version


def migrate(conn: Connection) -> list[int]:
    """Apply the missing steps in order; return the versions applied (empty when up to date)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    schema.schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema.schema_version.c.version))).scalar() or 0
    if current > LATEST_VERSION:
        raise TinkerstoreError(
            f"the catalog database is at schema version {current}, newer than this tinkerstore "
            f"understands (up to {LATEST_VERSION})",
            hint="upgrade tinkerstore, or point it at another database",
        )
    applied = []
    for step in STEPS:
        if step.version <= current:
            continue
        step.apply(conn)
        conn.execute(
            insert(schema.schema_version).values(
                version=step.version, description=step.description, applied_at=datetime.now(UTC)
            )
        )
        applied.append(step.version)
    return applied
