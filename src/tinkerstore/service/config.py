"""Open a store from a data directory or from explicit catalog and blob URLs."""

from __future__ import annotations

import os
from pathlib import Path

from tinkerstore.errors import InvalidInput
from tinkerstore.service.store import Store
from tinkerstore.store.blobs import open_blobs
from tinkerstore.store.catalog import open_catalog

__all__ = ["DEFAULT_DATA_DIR", "open_store", "resolve_urls"]

DEFAULT_DATA_DIR = Path("tinkerstore-data")


def resolve_urls(
    data_dir: Path | None, database_url: str | None, blob_url: str | None
) -> tuple[str, str]:
    """The catalog and blob URLs: explicit ones win, the rest default to files under data_dir."""
    base = Path(data_dir or DEFAULT_DATA_DIR).absolute()
    if database_url is None or blob_url is None:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
    db = database_url or f"sqlite:///{base / 'catalog.db'}"
    blobs = blob_url or (base / "blobs").as_uri()
    if not (db.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://", "memory://"))):
        raise InvalidInput(
            f"unsupported database URL {db.split('://')[0]}://...",
            hint="use sqlite:///path/to/catalog.db or postgresql://user@host:port/db",
        )
    return db, blobs


def open_store(
    data_dir: Path | None = None,
    *,
    database_url: str | None = None,
    blob_url: str | None = None,
    migrate: bool = True,
) -> Store:
    db, blobs = resolve_urls(data_dir, database_url, blob_url)
    catalog = open_catalog(db)
    if migrate:
        catalog.migrate()
    return Store(catalog, open_blobs(blobs))
