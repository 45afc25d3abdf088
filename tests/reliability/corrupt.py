"""Ways to damage a stored checkpoint behind tinkerstore's back, on any backend (tests only)."""

from __future__ import annotations

import dataclasses

from sqlalchemy import update

from tinkerstore.service import Store
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.store.catalog.memory import MemoryCatalog
from tinkerstore.store.format import file_key, manifest_key

DATA_FILE = "adapter_model.safetensors"


def flip_byte(store: Store, key: str, offset: int = 100) -> None:
    data = bytearray(store.blobs.get(key))
    data[offset % len(data)] ^= 0x01
    store.blobs.put(key, bytes(data))


def truncate(store: Store, key: str) -> None:
    store.blobs.put(key, store.blobs.get(key)[:-1])


def flip_catalog_digest(store: Store, record: CheckpointRecord) -> None:
    """Change one hex digit of the manifest digest in the checkpoint's catalog row."""
    digest = record.manifest_digest
    bad = ("1" if digest[0] != "1" else "2") + digest[1:]
    catalog = store.catalog
    if isinstance(catalog, MemoryCatalog):
        key = (record.run_id, record.kind, record.name)
        catalog._checkpoints[key] = dataclasses.replace(record, manifest_digest=bad)
        return
    from tinkerstore.store.catalog.schema import checkpoints

    with catalog._write() as conn:  # type: ignore[attr-defined]
        conn.execute(
            update(checkpoints)
            .where(checkpoints.c.version_id == record.version_id)
            .values(manifest_digest=bad)
        )


# kind -> (damage, the file the damage must be reported against, verify's problem code)
KINDS = {
    "data_byte_flipped": (
        lambda s, r: flip_byte(s, file_key(r.blob_prefix, DATA_FILE)),
        DATA_FILE,
        "file_checksum_mismatch",
    ),
    "data_truncated": (
        lambda s, r: truncate(s, file_key(r.blob_prefix, DATA_FILE)),
        DATA_FILE,
        "file_size_mismatch",
    ),
    "manifest_byte_flipped": (
        lambda s, r: flip_byte(s, manifest_key(r.blob_prefix), offset=20),
        "manifest.json",
        "manifest_digest_mismatch",
    ),
    "catalog_digest_flipped": (flip_catalog_digest, "manifest.json", "manifest_digest_mismatch"),
    "all_bytes_deleted": (
        lambda s, r: s.blobs.delete_prefix(r.blob_prefix),
        "manifest.json",
        "manifest_missing",
    ),
}
