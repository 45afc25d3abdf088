"""The catalog: records behind one interface (``base.Catalog``), in memory or in SQL.

``open_catalog(url)`` picks the implementation from a URL::

    memory://                         MemoryCatalog (tests)
    sqlite://                         SQLite in memory (tests)
    sqlite:///relative.db             SQLite file (four slashes for an absolute path)
    postgresql://user@host:5432/db    PostgreSQL through psycopg 3

Call ``migrate()`` on the result before using it.
"""

from __future__ import annotations

from tinkerstore.errors import InvalidInput
from tinkerstore.store.catalog.base import (
    ApiKeyRecord,
    AuditRecord,
    Catalog,
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
from tinkerstore.store.catalog.memory import MemoryCatalog

__all__ = [
    "ApiKeyRecord",
    "AuditRecord",
    "Catalog",
    "CheckpointRecord",
    "FutureRecord",
    "FutureState",
    "MemoryCatalog",
    "Page",
    "RunRecord",
    "SamplerRecord",
    "SessionRecord",
    "UserRecord",
    "VersionRecord",
    "VersionState",
    "open_catalog",
    "sqlalchemy_url",
]

_PG_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL for a catalog URL: plain ``postgresql://`` means psycopg 3 (the
    ``postgres`` extra), not SQLAlchemy's default psycopg2."""
    for prefix in _PG_PREFIXES:
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return url
    raise InvalidInput(
        f"unsupported catalog URL {_redact(url)!r}",
        hint="use sqlite:///path/to/catalog.db, postgresql://user@host/db or memory://",
    )


def open_catalog(url: str) -> Catalog:
    """A catalog for ``url`` (see the module docstring); call ``migrate()`` before use."""
    if url == "memory://":
        return MemoryCatalog()
    sa_url = sqlalchemy_url(url)
    # Imported here so `memory://` works without SQLAlchemy installed (the server extra).
    from tinkerstore.store.catalog.sql import SqlCatalog

    return SqlCatalog(sa_url)


def _redact(url: str) -> str:
    """The URL without a password, for error messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        creds, _, host = rest.rpartition("@")
        user, colon, _password = creds.partition(":")
        return f"{scheme}://{user}{':***' if colon else ''}@{host}"
    return url
