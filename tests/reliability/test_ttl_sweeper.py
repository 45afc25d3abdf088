"""Item 7: expiry is swept exactly once (also by racing sweeper processes), a cleared TTL is
never swept, and the download rule: a transfer under way finishes, new requests get 404, and
the bytes go only after the sweeper's grace period."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import RUN, add_figure, make_run, make_user, save, tinker_path
from tests.server.live import live_server
from tests.support.backends import make_urls
from tinkerstore.errors import CheckpointNotFound
from tinkerstore.service import Store, open_store
from tinkerstore.service.verify import verify_store
from tinkerstore.store.format import file_key

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600


def advance(store: Store, seconds: float) -> None:
    now = store.now() + timedelta(seconds=seconds)
    store.now = lambda: now  # the store and its sweeper read the clock through store.now


def test_expired_swept_once_cleared_never(store: Store) -> None:
    owner = make_user(store, "owner")
    make_run(store, owner)
    doomed = [save(store, owner, f"d{i}", ttl_seconds=HOUR) for i in range(5)]
    cleared = save(store, owner, "cleared", ttl_seconds=HOUR)
    extended = save(store, owner, "extended", ttl_seconds=HOUR)
    forever = save(store, owner, "forever")
    store.set_ttl(owner.principal, tinker_path(cleared), None)
    store.set_ttl(owner.principal, tinker_path(extended), 10 * HOUR)

    assert store.sweep().expired == []  # nothing is due yet
    advance(store, HOUR + 1)
    first = store.sweep()
    assert sorted(first.expired) == sorted(tinker_path(r) for r in doomed)
    assert store.sweep().expired == []  # exactly once
    advance(store, 100 * 24 * HOUR)  # long after everything, grace included
    later = store.sweep()
    assert later.expired == [tinker_path(extended)]
    remaining = store.list_checkpoints(owner.principal, RUN, limit=100)
    assert {r.name for r in remaining.items} == {"cleared", "forever"}
    assert remaining.total_count == 2
    for record in (cleared, forever):
        assert store.read_file(record, "adapter_config.json")
    assert verify_store(store).ok, verify_store(store).problems
    events = [a.event for a in store.audit_log(owner.principal)]
    assert events.count("checkpoint_expired") == 6


@pytest.mark.parametrize("backend", ["sqlite-fs", "pg-s3"])
def test_two_sweeper_processes_race_and_delete_each_expiry_once(
    backend: str, tmp_path: Path
) -> None:
    n = 25
    with make_urls(backend, tmp_path) as (db, blobs):
        with make_store_at(db, blobs) as store:
            owner = make_user(store, "owner")
            make_run(store, owner)
            records = [save(store, owner, f"e{i}", ttl_seconds=HOUR) for i in range(n)]
            past = store.now() - timedelta(seconds=1)
            for r in records:
                store.catalog.set_expiry(r.run_id, r.kind, r.name, past)
            env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"}
            start_at = time.time() + 3.0  # both processes import and connect first
            command = [
                sys.executable, "-m", "tests.reliability.sweep_once", db, blobs, str(start_at)
            ]  # fmt: skip
            procs = [
                subprocess.Popen(
                    command,
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(2)
            ]
            reports = []
            for proc in procs:
                out, err = proc.communicate(timeout=120)
                assert proc.returncode == 0, err
                reports.append(json.loads(out))
            a, b = (set(r["expired"]) for r in reports)
            assert not a & b, f"swept twice: {a & b}"
            assert a | b == {tinker_path(r) for r in records}
            assert reports[0]["errors"] == reports[1]["errors"] == []
            assert "database is locked" not in str(reports)
            audit = [e for e in store.audit_log(owner.principal) if e.event == "checkpoint_expired"]
            assert len(audit) == n
            add_figure("expired checkpoints raced by two sweeper processes", n)


@contextmanager
def make_store_at(db: str, blobs: str) -> Iterator[Store]:
    store = open_store(None, database_url=db, blob_url=blobs)
    try:
        yield store
    finally:
        store.catalog.close()


def test_download_under_way_finishes_new_requests_404_bytes_go_after_grace(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    owner = make_user(store, "owner")
    make_run(store, owner)
    big = os.urandom(4 * 1024 * 1024)  # several 1 MiB chunks
    record = save(store, owner, "big", files={"model.bin": big}, ttl_seconds=HOUR)
    store.catalog.close()
    with live_server(data_dir) as server:
        base = f"{server.url}/api/v1/training_runs/{RUN}/checkpoints/weights/big"
        headers = {"X-API-Key": owner.key, "Accept": "application/json"}
        url = httpx.get(f"{base}/external_weights_urls", headers=headers).json()["urls"][
            "model.bin"
        ]
        with httpx.stream("GET", url, timeout=30) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            received = next(chunks)
            assert len(received) < len(big)
            # Meanwhile the checkpoint expires and a sweeper (another process, like
            # `tinkerstore sweep` beside the server) deletes it.
            other = open_store(data_dir)
            other.catalog.set_expiry(RUN, record.kind, "big", other.now() - timedelta(seconds=1))
            assert other.sweep().expired == [tinker_path(record)]
            received += b"".join(chunks)
        assert received == big  # the transfer under way finished, byte for byte
        # From now on, the same URL and any new request are 404.
        assert httpx.get(url, timeout=30).status_code == 404
        assert httpx.get(f"{base}/external_weights_urls", headers=headers).status_code == 404
        with pytest.raises(CheckpointNotFound):
            other.resolve(owner.principal, tinker_path(record))
        # Bytes stay for the grace period, then the sweeper removes them.
        key = file_key(record.blob_prefix, "model.bin")
        assert other.blobs.exists(key)
        advance(other, other.sweeper.grace.total_seconds() + 1)
        assert other.sweep().garbage_versions == 1
        assert not other.blobs.exists(key)
        assert verify_store(other).ok
        other.catalog.close()


def test_expired_checkpoint_is_404_at_once(store: Store) -> None:
    owner = make_user(store, "owner")
    make_run(store, owner)
    record = save(store, owner, "soon", ttl_seconds=HOUR)
    advance(store, HOUR)  # expiry is reached at now >= expires_at
    with pytest.raises(CheckpointNotFound, match="expired"):
        store.resolve(owner.principal, tinker_path(record))
    assert store.list_checkpoints(owner.principal, RUN, limit=10).total_count == 0


def test_grace_counts_from_when_a_checkpoint_stopped_being_live(store: Store) -> None:
    owner = make_user(store, "owner")
    make_run(store, owner)
    record = save(store, owner, "old", ttl_seconds=HOUR)
    advance(store, HOUR)  # a day-old checkpoint would do the same; expiry is one way out
    assert store.sweep().expired == [tinker_path(record)]
    # Within the grace period a download under way must still find every byte.
    assert store.read_file(record, "adapter_config.json")
    advance(store, store.sweeper.grace.total_seconds() - 1)
    assert store.sweep().garbage_versions == 0  # still inside the grace period
    assert store.read_file(record, "adapter_config.json")
    advance(store, 2)  # just past it: the bytes and the version row go
    assert store.sweep().garbage_versions == 1
    assert store.catalog.get_version(record.version_id) is None
    assert record.blob_prefix not in {p for p, _ in store.blobs.list_prefixes("v/")}
