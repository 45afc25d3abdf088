"""Helpers shared by the catalog implementations, so both raise the same errors and keep time
the same way (the contract suite compares them field for field)."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from tinkerstore.errors import AlreadyExists, CheckpointNotFound, InvalidInput
from tinkerstore.types.paths import CheckpointKind

__all__ = [
    "EPOCH",
    "check_page_args",
    "checkpoint_exists",
    "checkpoint_not_found",
    "from_micros",
    "local_try_lock",
    "new_user_id",
    "opt_utc",
    "to_micros",
    "utc",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def utc(value: datetime) -> datetime:
    """``value`` converted to UTC; a naive datetime is a bug in the caller, never a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} given to the catalog: pass a timezone-aware "
            "datetime (e.g. datetime.now(UTC))"
        )
    return value.astimezone(UTC)


def opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def to_micros(value: datetime) -> int:
    """Exact integer microseconds since the epoch (SQLite has no timestamp type)."""
    return (utc(value) - EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def new_user_id() -> str:
    return uuid.uuid4().hex


def _path(run_id: str, kind: CheckpointKind, name: str) -> str:
    # Not format_tinker_path: that validates, and an error message must never raise itself.
    return f"tinker://{run_id}/{kind.value}/{name}"


def checkpoint_not_found(run_id: str, kind: CheckpointKind, name: str) -> CheckpointNotFound:
    return CheckpointNotFound(
        f"checkpoint {_path(run_id, kind, name)} does not exist",
        hint="list the run's checkpoints to see which names exist",
    )


def checkpoint_exists(run_id: str, kind: CheckpointKind, name: str) -> AlreadyExists:
    return AlreadyExists(
        f"checkpoint {_path(run_id, kind, name)} already exists",
        hint="choose another name, or save with overwrite=True to replace it",
    )


def check_page_args(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise InvalidInput(
            f"invalid page: limit={limit}, offset={offset}",
            hint="limit and offset must be zero or positive",
        )


_REGISTRY_GUARD = threading.Lock()


@contextlib.contextmanager
def local_try_lock(registry: dict[str, threading.Lock], name: str) -> Iterator[bool]:
    """``Catalog.try_lock`` within one process: the lock ``name`` of ``registry``, taken without
    waiting. Not re-entrant on purpose: a second try while held says False, even on one thread."""
    with _REGISTRY_GUARD:
        lock = registry.setdefault(name, threading.Lock())
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()
