"""What the benchmarks measure on: a store with a user and a run, and float32 model states."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.common import MIB, fresh_postgres_database
from tinkerstore.service import Principal, Store, open_store
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.types.paths import CheckpointKind

__all__ = ["BenchStore", "make_state", "pg_s3_store", "sqlite_fs_store", "state_bytes"]

FILE_NAME = "adapter_model.safetensors"
_names = itertools.count()


@dataclass
class BenchStore:
    store: Store
    principal: Principal
    api_key: str
    run_id: str
    label: str
    db_url: str | None = None  # set for PostgreSQL + S3 stores, to start a server on them
    blob_url: str | None = None

    def save(self, data: bytes | memoryview, name: str | None = None) -> CheckpointRecord:
        """One committed, durable save of ``data`` as the checkpoint's one file."""
        name = name or f"ckpt-{next(_names):06d}"
        with self.store.begin_save(self.principal, self.run_id, CheckpointKind.WEIGHTS, name) as s:
            s.add_file(FILE_NAME, data)
            return s.commit()

    def forget_blobs(self, record: CheckpointRecord) -> None:
        """Free the disk (or bucket) space of a measured save; its catalog row stays."""
        self.store.blobs.delete_prefix(record.blob_prefix)

    def close(self) -> None:
        self.store.catalog.close()


def _setup(store: Store, label: str) -> BenchStore:
    _, key = store.create_api_key("bench", "benchmarks")
    principal = store.authenticate(key)
    store.create_run(principal, "bench-run", base_model="bench/base", lora_config={"rank": 16})
    return BenchStore(store, principal, key, "bench-run", label)


def sqlite_fs_store(data_dir: Path) -> BenchStore:
    """The embedded default: SQLite catalog + files under ``data_dir``."""
    return _setup(open_store(data_dir), "sqlite+fs")


@contextmanager
def pg_s3_store(db_base_url: str, s3_url: str) -> Iterator[BenchStore]:
    """PostgreSQL (a fresh database, dropped after) + S3 (a fresh prefix)."""
    import uuid

    with fresh_postgres_database(db_base_url) as db:
        blob_url = f"{s3_url.rstrip('/')}/bench-{uuid.uuid4().hex[:12]}"
        bench = _setup(open_store(None, database_url=db, blob_url=blob_url), "pg+s3")
        bench.db_url, bench.blob_url = db, blob_url
        try:
            yield bench
        finally:
            bench.close()


def make_state(total_bytes: int, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    """A float32 state of ``total_bytes``: LoRA-like 256 KiB A/B matrices up to 256 MiB,
    64 MiB full-weight matrices above (a "large state")."""
    rng = np.random.default_rng(seed)
    if total_bytes <= 256 * MIB:
        tensor_bytes, rows = 256 * 1024, 16
    else:
        tensor_bytes, rows = 64 * MIB, 4096
    count = max(1, total_bytes // tensor_bytes)
    cols = tensor_bytes // 4 // rows
    state = {}
    for i in range(count):
        layer, part = divmod(i, 2)
        name = f"base_model.model.layers.{layer}.lora_{'AB'[part]}.weight"
        state[name] = rng.standard_normal((rows, cols), dtype=np.float32)
    return state


def state_bytes(state: dict[str, npt.NDArray[np.float32]]) -> bytes:
    """The state as one safetensors file (what a save stores)."""
    from safetensors.numpy import save

    return bytes(save(state))
