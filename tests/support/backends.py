"""Build real stores for tests: in-memory twins, SQLite + files, PostgreSQL + S3.

PostgreSQL and S3 come from ``TINKERSTORE_TEST_DATABASE_URL`` and ``TINKERSTORE_TEST_S3_URL``
(``source scripts/services.sh start`` sets both; .ci/run does). Without them the ``pg-s3``
parameter skips with a loud message, and fails under CI.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tinkerstore.service import Store
from tinkerstore.store.blobs import open_blobs
from tinkerstore.store.catalog import open_catalog

BACKENDS = ("memory", "sqlite-fs", "pg-s3")


def require_scale_env() -> tuple[str, str]:
    db = os.environ.get("TINKERSTORE_TEST_DATABASE_URL")
    s3 = os.environ.get("TINKERSTORE_TEST_S3_URL")
    if not db or not s3:
        msg = (
            "PostgreSQL/S3 not configured "
            "(TINKERSTORE_TEST_DATABASE_URL, TINKERSTORE_TEST_S3_URL): "
            "run `source scripts/services.sh start` first"
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        sys.stderr.write(f"\n*** SKIPPING: {msg} ***\n")
        pytest.skip(msg)
    return db, s3


@contextmanager
def fresh_postgres_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the test server; dropped afterwards."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin_url = base_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    head, _, _ = base_url.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextmanager
def make_urls(kind: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database_url, blob_url) for a fresh store of ``kind``."""
    if kind == "memory":
        yield "memory://", "memory://"
    elif kind == "sqlite-fs":
        yield f"sqlite:///{tmp_path / 'catalog.db'}", (tmp_path / "blobs").as_uri()
    elif kind == "pg-s3":
        db, s3 = require_scale_env()
        with fresh_postgres_database(db) as url:
            yield url, f"{s3.rstrip('/')}/{uuid.uuid4().hex[:12]}"
    else:
        raise ValueError(kind)


@contextmanager
def make_store(kind: str, tmp_path: Path) -> Iterator[Store]:
    with make_urls(kind, tmp_path) as (db, blobs):
        catalog = open_catalog(db)
        catalog.migrate()
        try:
            yield Store(catalog, open_blobs(blobs))
        finally:
            catalog.close()
