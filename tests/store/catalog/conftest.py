"""Catalog fixtures: every contract test runs on memory, a SQLite file and PostgreSQL.

PostgreSQL comes from ``TINKERSTORE_TEST_DATABASE_URL`` (``postgresql://...``; ``source
scripts/services.sh start`` sets it). Each test run creates its own database there, each test its
own schema inside it, and both are dropped afterwards. Without the variable the ``postgresql``
parameter is skipped with a loud message; under ``CI`` it fails instead.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from tinkerstore.store.catalog import Catalog, MemoryCatalog, open_catalog

BACKENDS = ("memory", "sqlite", "postgresql")
_ENV = "TINKERSTORE_TEST_DATABASE_URL"
_warned = False


def _pg_admin_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _require_pg(config: pytest.Config) -> str:
    global _warned
    url = os.environ.get(_ENV)
    if url:
        return url
    msg = (
        f"PostgreSQL catalog tests need {_ENV}=postgresql://...: "
        "run `source scripts/services.sh start` first"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{msg} (CI is set, so this is a failure, not a skip)")
    if not _warned:  # once per run, past pytest's output capture, so nobody misses it
        _warned = True
        capture = config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            sys.stderr.write(f"\n*** SKIPPING PostgreSQL catalog tests: {msg} ***\n")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_test_database(pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh database for this test run (SQLAlchemy URL), dropped at the end."""
    import sqlalchemy as sa

    base = _pg_admin_url(_require_pg(pytestconfig))
    name = f"tscat_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    head, _, _ = base.partition("?")[0].rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class CatalogDB:
    """One fresh, empty catalog database; ``open()`` gives a new handle on it (a new process
    would do the same), except for memory, where there is only the one object."""

    kind: str
    url: str
    _handles: list[Catalog] = field(default_factory=list)
    _memory: MemoryCatalog | None = None

    def open(self, *, migrate: bool = True) -> Catalog:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryCatalog()
            return self._memory
        catalog = open_catalog(self.url)
        self._handles.append(catalog)
        if migrate:
            catalog.migrate()
        return catalog

    def close_all(self) -> None:
        for handle in self._handles:
            handle.close()


@contextmanager
def _pg_schema_url(base: str) -> Iterator[str]:
    """A fresh schema in the run's database, as a URL whose connections use it; dropped after."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        # Every connection of the catalog resolves unqualified table names in this schema.
        yield f"{base}?options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CatalogDB]:
    kind: str = request.param
    with ExitStack() as stack:
        if kind == "memory":
            url = "memory://"
        elif kind == "sqlite":
            url = f"sqlite:///{tmp_path / 'catalog.db'}"
        else:
            url = stack.enter_context(_pg_schema_url(request.getfixturevalue("pg_test_database")))
        database = CatalogDB(kind, url)
        stack.callback(database.close_all)  # before the schema is dropped
        yield database


@pytest.fixture
def catalog(db: CatalogDB) -> Catalog:
    """A migrated catalog on a fresh database."""
    return db.open()


@pytest.fixture
def sql_db(db: CatalogDB) -> CatalogDB:
    if db.kind == "memory":
        pytest.skip("SQL-only behaviour (the memory twin has no database)")
    return db


OpenCatalog = Callable[[], Catalog]
