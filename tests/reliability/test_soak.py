"""Item 3: a bounded concurrency soak on loopback against a live server (SQLite + files, and
PostgreSQL + S3).

Saver threads (the store API, in this process, on the server's SQLite data dir: a second
process writing the same catalog, which is what the single-writer rules must survive) and REST
threads (two users: sessions and heartbeats, listing, publish/unpublish, set TTL, delete,
download URLs and file downloads) run together for ``10 s * TINKERSTORE_RELIABILITY_SCALE``.

Then: no 5xx, no 'database is locked' anywhere, every thread finished (no deadlock), every
acknowledged and not deleted checkpoint is listed and verifies, list totals match the catalog,
and the downloaded bytes were always the saved bytes.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import RUN, add_figure, make_run, make_user, scale
from tests.server.live import live_server
from tests.support.backends import make_urls
from tinkerstore.errors import TinkerstoreError
from tinkerstore.service import open_store
from tinkerstore.service.verify import verify_store
from tinkerstore.types.paths import CheckpointKind

SAVERS, CALLERS = 3, 6
V038 = {"X-Stainless-Package-Version": "0.38.0", "Accept": "application/json"}


class Ledger:
    """What the test knows happened, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed: dict[str, str] = {}  # name -> sha256 of its data file
        self.deleted: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []

    def names(self) -> list[str]:
        with self.lock:
            return [n for n in self.committed if n not in self.deleted]


@pytest.mark.parametrize("backend", ["sqlite-fs", "pg-s3"])
def test_concurrent_clients_soak(backend: str, tmp_path: Path) -> None:
    with make_urls(backend, tmp_path) as (db, blobs):
        soak(tmp_path / "data", db, blobs)


def soak(data_dir: Path, db: str, blobs: str) -> None:
    duration = 10.0 * scale()
    store = open_store(data_dir, database_url=db, blob_url=blobs)
    owner, reader = make_user(store, "owner"), make_user(store, "reader")
    make_run(store, owner)
    ledger = Ledger()
    stop = threading.Event()

    def saver(index: int) -> None:
        rng = random.Random(index)
        i = 0
        while not stop.is_set():
            i += 1
            name = f"s{index}-{i}"
            data = rng.randbytes(rng.randint(1, 256 * 1024))
            try:
                store.save_files(
                    owner.principal, RUN, CheckpointKind.WEIGHTS, name,
                    {"model.bin": data, "config.json": b"{}"},
                )  # fmt: skip
            except TinkerstoreError as exc:
                with ledger.lock:
                    ledger.failures.append(f"save {name}: {exc!r}")
                continue
            with ledger.lock:
                ledger.committed[name] = hashlib.sha256(data).hexdigest()

    def caller(index: int, base: str) -> None:
        rng = random.Random(100 + index)
        user = owner if index % 3 else reader
        headers = {"X-API-Key": user.key, **V038}
        ck = f"{base}/api/v1/training_runs/{RUN}/checkpoints"
        with httpx.Client(timeout=60, headers=headers) as http:
            session = http.post(
                f"{base}/api/v1/create_session", json={"sdk_version": "0.38.0", "tags": []}
            ).json()["session_id"]
            while not stop.is_set():
                names = ledger.names()
                name = rng.choice(names) if names else "none"
                action = rng.choice(
                    ["heartbeat", "list", "list_user", "publish", "unpublish", "ttl", "delete",
                     "download", "download", "list"]
                )  # fmt: skip
                if action == "heartbeat":
                    r = http.post(f"{base}/api/v1/session_heartbeat", json={"session_id": session})
                elif action == "list":
                    r = http.get(ck)
                elif action == "list_user":
                    r = http.get(f"{base}/api/v1/checkpoints", params={"limit": 50})
                elif action == "publish":
                    r = http.post(f"{ck}/weights/{name}/publish")
                elif action == "unpublish":
                    r = http.delete(f"{ck}/weights/{name}/publish")
                elif action == "ttl":
                    ttl = rng.choice([None, 7200, 86400])
                    r = http.put(f"{ck}/weights/{name}/ttl", json={"ttl_seconds": ttl})
                elif action == "delete" and user is owner and rng.random() < 0.3:
                    r = http.delete(f"{ck}/weights/{name}")
                    if r.status_code == 204:
                        with ledger.lock:
                            ledger.deleted.add(name)
                else:
                    r = http.get(f"{ck}/weights/{name}/external_weights_urls")
                    if r.status_code == 200:
                        got = http.get(r.json()["urls"]["model.bin"])
                        if got.status_code == 200:
                            digest = hashlib.sha256(got.content).hexdigest()
                            if digest != ledger.committed.get(name):
                                with ledger.lock:
                                    ledger.failures.append(f"download {name}: wrong bytes")
                        _record(ledger, got)
                _record(ledger, r)

    server_env = {"TINKERSTORE_DATABASE_URL": db, "TINKERSTORE_BLOB_URL": blobs}
    with live_server(data_dir, **server_env) as server:
        threads = [threading.Thread(target=saver, args=(i,)) for i in range(SAVERS)]
        threads += [threading.Thread(target=caller, args=(i, server.url)) for i in range(CALLERS)]
        for t in threads:
            t.start()
        time.sleep(duration)
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client thread hung (deadlock?)"
        listed = httpx.get(
            f"{server.url}/api/v1/training_runs/{RUN}/checkpoints",
            headers={"X-API-Key": owner.key, **V038},
        ).json()
    log = server.log.read_text()
    assert ledger.failures == [], ledger.failures[:10]
    assert not [s for s in ledger.statuses if s >= 500], ledger.statuses
    assert "database is locked" not in log and "Traceback" not in log, log[-3000:]

    expected = set(ledger.names())
    names = {c["checkpoint_id"].split("/", 1)[1] for c in listed["checkpoints"]}
    assert names == expected, (expected - names, names - expected)
    assert listed["cursor"]["total_count"] == len(listed["checkpoints"]) == len(expected)
    page = store.list_checkpoints(owner.principal, RUN, limit=1000)
    assert page.total_count == len(page.items) == len(expected)
    count, _ = store.storage_usage(owner.principal)
    assert count == len(expected)
    report = verify_store(store)
    assert report.ok, report.problems[:10]
    store.catalog.close()
    served = sum(ledger.statuses.values())
    assert len(ledger.committed) >= 10 and served >= 200, (len(ledger.committed), served)
    add_figure("soak: checkpoints saved", len(ledger.committed))
    add_figure("soak: HTTP requests served", served)
    add_figure("soak: checkpoints deleted over HTTP", len(ledger.deleted))


def _record(ledger: Ledger, response: httpx.Response) -> None:
    with ledger.lock:
        ledger.statuses[response.status_code] += 1
        if response.status_code >= 500 or b"database is locked" in response.content:
            ledger.failures.append(
                f"{response.request.method} {response.request.url}: "
                f"{response.status_code} {response.text[:300]}"
            )
