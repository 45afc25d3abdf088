"""The catalog contract (``tinkerstore.store.catalog.base``), one suite for every implementation.

Each test runs on the memory twin, a SQLite file and PostgreSQL (see conftest). Races use real
threads, and on SQL each thread gets its own catalog handle (as separate processes would), so the
database's own locking is what is tested, not an in-process lock.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import event, insert, select

from tinkerstore.errors import (
    AlreadyExists,
    ApiKeyNotFound,
    CheckpointNotFound,
    FutureNotFound,
    InvalidInput,
    NotFound,
    RunNotFound,
    SessionNotFound,
    TinkerstoreError,
)
from tinkerstore.store.catalog import (
    Catalog,
    CheckpointRecord,
    FutureRecord,
    FutureState,
    MemoryCatalog,
    RunRecord,
    SamplerRecord,
    SessionRecord,
    VersionRecord,
    VersionState,
    open_catalog,
    sqlalchemy_url,
)
from tinkerstore.store.catalog.schema import schema_version
from tinkerstore.store.catalog.sql import SqlCatalog
from tinkerstore.types.paths import CheckpointKind

from .conftest import CatalogDB

W, S, X = CheckpointKind.WEIGHTS, CheckpointKind.SAMPLER_WEIGHTS, CheckpointKind.EXTERNAL_WEIGHTS
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
R = TypeVar("R")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_run(cat: Catalog, run_id: str, owner: str = "alice", now: datetime = T0) -> RunRecord:
    return cat.create_run(
        RunRecord(
            run_id=run_id,
            owner_id=owner,
            base_model="Qwen/Qwen3-8B",
            is_lora=True,
            lora_rank=8,
            lora_config={"rank": 8, "seed": 3, "train_mlp": True},
            user_metadata={"team": "x"},
            created_at=now,
            last_request_time=now,
            session_id="sess1",
        )
    )


def begin(
    cat: Catalog,
    run_id: str,
    name: str,
    *,
    kind: CheckpointKind = W,
    owner: str = "alice",
    overwrite: bool = False,
    now: datetime = T0,
    metadata: dict[str, str] | None = None,
) -> VersionRecord:
    vid = uuid.uuid4().hex
    return cat.begin_version(
        VersionRecord(
            version_id=vid,
            run_id=run_id,
            kind=kind,
            name=name,
            owner_id=owner,
            state=VersionState.PENDING,
            created_at=now,
            blob_prefix=f"v/{vid}/",
            overwrite=overwrite,
            user_metadata=metadata,
            ttl_seconds=None,
        )
    )


def commit(
    cat: Catalog,
    version: VersionRecord,
    *,
    now: datetime = T0,
    size: int = 10,
    expires_at: datetime | None = None,
) -> CheckpointRecord:
    return cat.commit_version(
        version.version_id,
        size_bytes=size,
        manifest_digest=f"sha256:{version.version_id}",
        now=now,
        expires_at=expires_at,
    )


def save(cat: Catalog, run_id: str, name: str, **kw: Any) -> CheckpointRecord:
    commit_kw = {k: kw.pop(k) for k in ("size", "expires_at") if k in kw}
    return commit(cat, begin(cat, run_id, name, **kw), now=kw.get("now", T0), **commit_kw)


def state_of(cat: Catalog, version_id: str) -> VersionState:
    version = cat.get_version(version_id)
    assert version is not None, version_id
    return version.state


def names(page_items: list[CheckpointRecord]) -> list[str]:
    return [c.name for c in page_items]


def race(
    db: CatalogDB, n: int, fn: Callable[[Catalog, int], R], *, migrate: bool = True
) -> list[R]:
    """Run ``fn(handle, i)`` in ``n`` threads started together, each on its own handle."""
    handles = [db.open(migrate=migrate) for _ in range(n)]
    barrier = threading.Barrier(n)

    def run(i: int) -> R:
        barrier.wait()
        return fn(handles[i], i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


# -- lifecycle, settings ---------------------------------------------------------------------------
def test_migrate_is_idempotent(catalog: Catalog) -> None:
    catalog.migrate()
    catalog.migrate()
    make_run(catalog, "r1")
    assert catalog.get_run("r1") is not None


def test_concurrent_migrate_applies_once(sql_db: CatalogDB) -> None:
    # Fresh database, fresh handles: the first connections and the DDL all happen at once.
    race(sql_db, 4, lambda cat, i: cat.migrate(), migrate=False)
    fresh = sql_db.open()
    assert isinstance(fresh, SqlCatalog)
    with fresh.read_engine.connect() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [1]
    make_run(fresh, "r1")
    assert fresh.get_run("r1") is not None


def test_settings_first_value_wins(catalog: Catalog) -> None:
    assert catalog.get_or_create_setting("secret", "a") == "a"
    assert catalog.get_or_create_setting("secret", "b") == "a"
    assert catalog.get_or_create_setting("other", "c") == "c"


def test_settings_race_agrees_on_one_value(db: CatalogDB) -> None:
    values = race(db, 6, lambda cat, i: cat.get_or_create_setting("signing", f"v{i}"))
    assert len(set(values)) == 1


# -- users and keys --------------------------------------------------------------------------------
def test_users(catalog: Catalog) -> None:
    assert catalog.count_users() == 0
    alice = catalog.create_user("alice", T0)
    assert alice.name == "alice" and alice.created_at == T0
    assert catalog.get_user(alice.user_id) == alice
    assert catalog.get_user_by_name("alice") == alice
    assert catalog.get_user_by_name("bob") is None and catalog.get_user("nope") is None
    with pytest.raises(AlreadyExists):
        catalog.create_user("alice", T0)
    catalog.create_user("bob", T0)
    assert catalog.count_users() == 2


def test_api_keys(catalog: Catalog) -> None:
    k1 = catalog.add_api_key("u1", "h1", "laptop", T0)
    k2 = catalog.add_api_key("u2", "h2", "ci", at(1))
    assert (k1.key_id, k2.key_id) == (1, 2)  # small integers, in order
    assert k1.revoked_at is None and k1.label == "laptop" and k1.user_id == "u1"
    assert catalog.find_api_key("h2") == k2 and catalog.find_api_key("h3") is None
    assert catalog.list_api_keys() == [k1, k2]
    assert catalog.list_api_keys("u2") == [k2]
    with pytest.raises(AlreadyExists):
        catalog.add_api_key("u3", "h1", "dup", T0)
    revoked = catalog.revoke_api_key(k1.key_id, at(5))
    assert revoked.revoked_at == at(5)
    assert catalog.revoke_api_key(k1.key_id, at(9)).revoked_at == at(5)  # first time kept
    assert catalog.find_api_key("h1") == revoked  # revoked keys are still found
    with pytest.raises(ApiKeyNotFound):
        catalog.revoke_api_key(999, T0)


# -- runs ------------------------------------------------------------------------------------------
def test_runs(catalog: Catalog) -> None:
    run = make_run(catalog, "r1")
    assert catalog.get_run("r1") == run
    assert run.lora_config == {"rank": 8, "seed": 3, "train_mlp": True}
    assert run.user_metadata == {"team": "x"} and run.session_id == "sess1"
    assert catalog.get_run("r2") is None
    with pytest.raises(AlreadyExists):
        make_run(catalog, "r1", owner="bob")
    catalog.touch_run("r1", at(60))
    touched = catalog.get_run("r1")
    assert touched is not None and touched.last_request_time == at(60)
    with pytest.raises(RunNotFound):
        catalog.touch_run("r2", at(60))


def test_list_runs_newest_first_with_totals(catalog: Catalog) -> None:
    for i in range(5):
        make_run(catalog, f"a{i}", "alice", at(i))
    make_run(catalog, "b0", "bob", at(10))
    page = catalog.list_runs("alice", limit=2, offset=1, include_public_of_others=False)
    assert [r.run_id for r in page.items] == ["a3", "a2"]
    assert (page.total_count, page.offset, page.limit) == (5, 1, 2)
    everyone = catalog.list_runs(None, limit=10, offset=0, include_public_of_others=False)
    assert [r.run_id for r in everyone.items] == ["b0", "a4", "a3", "a2", "a1", "a0"]
    assert everyone.total_count == 6
    assert catalog.list_runs("carol", limit=5, offset=0, include_public_of_others=True).items == []
    with pytest.raises(InvalidInput):
        catalog.list_runs("alice", limit=-1, offset=0, include_public_of_others=False)


def test_list_runs_accessible_includes_runs_with_public_checkpoints(catalog: Catalog) -> None:
    make_run(catalog, "a0", "alice")
    make_run(catalog, "b0", "bob")
    make_run(catalog, "b1", "bob")
    save(catalog, "b0", "c1", owner="bob")
    save(catalog, "b0", "c2", owner="bob")

    def accessible() -> tuple[list[str], int]:
        page = catalog.list_runs("alice", limit=10, offset=0, include_public_of_others=True)
        return [r.run_id for r in page.items], page.total_count

    assert accessible() == (["a0"], 1)
    catalog.set_public("b0", W, "c1", True)
    catalog.set_public("b0", W, "c2", True)
    catalog.set_public("b0", W, "c2", True)  # twice: still counted once
    assert accessible() == (["b0", "a0"], 2)
    owned = catalog.list_runs("alice", limit=10, offset=0, include_public_of_others=False)
    assert [r.run_id for r in owned.items] == ["a0"]
    catalog.set_public("b0", W, "c1", False)
    assert accessible() == (["b0", "a0"], 2)
    save(catalog, "b0", "c2", owner="bob", overwrite=True)  # new content is private
    assert accessible() == (["a0"], 1)
    catalog.set_public("b0", W, "c1", True)
    catalog.delete_checkpoint("b0", W, "c1", now=T0)
    assert accessible() == (["a0"], 1)


# -- the commit protocol ---------------------------------------------------------------------------
def test_pending_is_invisible_and_commit_makes_visible(catalog: Catalog) -> None:
    v = begin(catalog, "r1", "c1", metadata={"step": "10"}, now=at(-5))
    assert v.state is VersionState.PENDING and catalog.get_version(v.version_id) == v
    assert v.blob_prefix in catalog.live_blob_prefixes()
    assert catalog.get_checkpoint("r1", W, "c1") is None
    assert catalog.list_checkpoints(run_id="r1", limit=10, offset=0, now=T0).total_count == 0
    assert catalog.latest_checkpoint("r1", W, T0) is None

    ckpt = commit(catalog, v, now=T0, size=1234, expires_at=at(3600))
    assert ckpt == CheckpointRecord(
        run_id="r1",
        kind=W,
        name="c1",
        owner_id="alice",
        version_id=v.version_id,
        blob_prefix=v.blob_prefix,
        seq=ckpt.seq,
        created_at=T0,
        size_bytes=1234,
        manifest_digest=f"sha256:{v.version_id}",
        format_version=1,
        expires_at=at(3600),
        public=False,
        user_metadata={"step": "10"},
    )
    assert catalog.get_checkpoint("r1", W, "c1") == ckpt
    done = catalog.get_version(v.version_id)
    assert done is not None and done.state is VersionState.COMPLETED
    assert (done.size_bytes, done.manifest_digest) == (1234, f"sha256:{v.version_id}")
    with pytest.raises(NotFound):  # committing twice
        commit(catalog, v)


def test_failed_version_is_never_visible(catalog: Catalog) -> None:
    v = begin(catalog, "r1", "c1")
    catalog.fail_version(v.version_id, "disk full", T0)
    failed = catalog.get_version(v.version_id)
    assert (
        failed is not None and failed.state is VersionState.FAILED and failed.error == "disk full"
    )
    with pytest.raises(NotFound):
        commit(catalog, v)
    assert catalog.get_checkpoint("r1", W, "c1") is None
    with pytest.raises(NotFound):
        catalog.commit_version("nope", size_bytes=1, manifest_digest="d", now=T0, expires_at=None)
    done = begin(catalog, "r1", "c2")
    commit(catalog, done)
    catalog.fail_version(done.version_id, "late", T0)  # no-op once completed
    assert state_of(catalog, done.version_id) is VersionState.COMPLETED


def test_name_taken_without_overwrite(catalog: Catalog) -> None:
    first = save(catalog, "r1", "c1")
    with pytest.raises(AlreadyExists):
        begin(catalog, "r1", "c1")
    begin(catalog, "r1", "c1", kind=S)  # another kind is another name
    begin(catalog, "r2", "c1")  # another run too
    v = begin(catalog, "r1", "c1", overwrite=True)
    with pytest.raises(AlreadyExists):
        catalog.begin_version(v)  # same version id
    assert catalog.get_checkpoint("r1", W, "c1") == first


def test_two_pending_versions_of_one_name_exactly_one_wins(catalog: Catalog) -> None:
    a = begin(catalog, "r1", "c1")
    b = begin(catalog, "r1", "c1")
    won = commit(catalog, b, now=at(1))
    with pytest.raises(AlreadyExists):
        commit(catalog, a, now=at(2))
    lost = catalog.get_version(a.version_id)
    assert lost is not None and lost.state is VersionState.FAILED
    assert catalog.get_checkpoint("r1", W, "c1") == won
    assert a.blob_prefix not in catalog.live_blob_prefixes()


def test_commit_race_exactly_one_wins(db: CatalogDB) -> None:
    setup = db.open()
    pending = [begin(setup, "r1", "c1") for _ in range(6)]

    def try_commit(cat: Catalog, i: int) -> bool:
        try:
            commit(cat, pending[i], now=at(i))
        except AlreadyExists:
            return False
        return True

    outcomes = race(db, len(pending), try_commit)
    assert outcomes.count(True) == 1
    winner = pending[outcomes.index(True)]
    ckpt = setup.get_checkpoint("r1", W, "c1")
    assert ckpt is not None and ckpt.version_id == winner.version_id
    states = [state_of(setup, v.version_id) for v in pending]
    assert sorted(s.value for s in states) == ["completed"] + ["failed"] * 5
    page = setup.list_checkpoints(run_id="r1", limit=10, offset=0, now=T0)
    assert page.total_count == 1 and len(page.items) == 1


def test_overwrite_swaps_pointer_and_supersedes(catalog: Catalog) -> None:
    old = save(catalog, "r1", "c1", metadata={"a": "1"}, size=5)
    catalog.set_public("r1", W, "c1", True)
    new = save(catalog, "r1", "c1", overwrite=True, now=at(10), size=7)
    assert new.seq > old.seq and new.version_id != old.version_id
    assert new.user_metadata == {} and new.public is False and new.created_at == at(10)
    assert catalog.get_checkpoint("r1", W, "c1") == new
    old_version = catalog.get_version(old.version_id)
    assert old_version is not None and old_version.state is VersionState.SUPERSEDED
    assert old.blob_prefix not in catalog.live_blob_prefixes()
    page = catalog.list_checkpoints(owner_id="alice", limit=10, offset=0, now=at(10))
    assert page.items == [new] and page.total_count == 1
    assert catalog.storage_usage("alice", at(10)) == (1, 7)


def test_overwrite_never_leaves_neither(db: CatalogDB) -> None:
    writer = db.open()
    save(writer, "r1", "c1")
    stop = threading.Event()
    misses: list[int] = []

    def read(cat: Catalog) -> None:
        while not stop.is_set():
            if cat.get_checkpoint("r1", W, "c1") is None:
                misses.append(1)
            if cat.list_checkpoints(run_id="r1", limit=5, offset=0, now=T0).total_count != 1:
                misses.append(2)

    readers = [threading.Thread(target=read, args=(db.open(),)) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(8):
            save(writer, "r1", "c1", overwrite=True, now=at(i))
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert misses == []


def test_expired_name_can_be_reused(catalog: Catalog) -> None:
    old = save(catalog, "r1", "c1", expires_at=at(60))
    with pytest.raises(AlreadyExists):
        begin(catalog, "r1", "c1", now=at(30))
    new = save(catalog, "r1", "c1", now=at(61))  # the old one is logically gone
    assert catalog.get_checkpoint("r1", W, "c1") == new
    assert state_of(catalog, old.version_id) is VersionState.SUPERSEDED
    assert catalog.list_checkpoints(run_id="r1", limit=5, offset=0, now=at(62)).total_count == 1


# -- pages -----------------------------------------------------------------------------------------
def test_list_newest_first_with_offset_limit_kinds(catalog: Catalog) -> None:
    for i in range(6):
        save(catalog, "r1", f"w{i}", now=at(i))
    for i in range(3):
        save(catalog, "r2", f"s{i}", kind=S, now=at(10 + i))
    save(catalog, "r3", "other", owner="bob")
    page = catalog.list_checkpoints(owner_id="alice", limit=4, offset=0, now=at(20))
    assert names(page.items) == ["s2", "s1", "s0", "w5"]
    assert page.total_count == 9 and page.snapshot >= page.items[0].seq
    assert [c.seq for c in page.items] == sorted((c.seq for c in page.items), reverse=True)
    page2 = catalog.list_checkpoints(
        owner_id="alice", limit=4, offset=4, snapshot=page.snapshot, now=at(20)
    )
    assert names(page2.items) == ["w4", "w3", "w2", "w1"]
    only_w = catalog.list_checkpoints(owner_id="alice", kinds=[W], limit=2, offset=0, now=at(20))
    assert names(only_w.items) == ["w5", "w4"] and only_w.total_count == 6
    both = catalog.list_checkpoints(owner_id="alice", kinds=[W, S], limit=0, offset=0, now=at(20))
    assert both.items == [] and both.total_count == 9
    none = catalog.list_checkpoints(owner_id="alice", kinds=[], limit=5, offset=0, now=at(20))
    assert none.items == [] and none.total_count == 0
    run = catalog.list_checkpoints(run_id="r2", limit=10, offset=0, now=at(20))
    assert names(run.items) == ["s2", "s1", "s0"] and run.total_count == 3
    beyond = catalog.list_checkpoints(run_id="r2", limit=10, offset=10, now=at(20))
    assert beyond.items == [] and beyond.total_count == 3
    for bad in ({}, {"run_id": "r1", "owner_id": "alice"}):
        with pytest.raises(InvalidInput):
            catalog.list_checkpoints(limit=1, offset=0, now=T0, **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        catalog.list_checkpoints(run_id="r1", limit=1, offset=-1, now=T0)


def test_snapshot_keeps_pages_stable_under_inserts(db: CatalogDB) -> None:
    cat = db.open()
    for i in range(12):
        save(cat, "r1", f"c{i:02}", now=at(i))
    first = cat.list_checkpoints(owner_id="alice", limit=5, offset=0, now=at(100))
    assert names(first.items) == ["c11", "c10", "c09", "c08", "c07"]
    other = db.open()  # a concurrent writer on its own connection
    for i in range(12, 16):
        save(other, "r1", f"c{i:02}", now=at(i))
    rest = []
    for offset in (5, 10):
        page = cat.list_checkpoints(
            owner_id="alice", limit=5, offset=offset, snapshot=first.snapshot, now=at(100)
        )
        assert page.total_count == 12 and page.snapshot == first.snapshot
        rest += names(page.items)
    assert rest == [f"c{i:02}" for i in range(6, -1, -1)]
    fresh = cat.list_checkpoints(owner_id="alice", limit=2, offset=0, now=at(100))
    assert names(fresh.items) == ["c15", "c14"] and fresh.total_count == 16


def test_expired_rows_are_hidden_from_lists_and_totals(catalog: Catalog) -> None:
    save(catalog, "r1", "keep", now=at(0))
    save(catalog, "r1", "short", now=at(1), expires_at=at(100), size=3)
    save(catalog, "r1", "long", now=at(2), expires_at=at(1000), size=4)
    before = catalog.list_checkpoints(run_id="r1", limit=10, offset=0, now=at(50))
    assert names(before.items) == ["long", "short", "keep"] and before.total_count == 3
    after = catalog.list_checkpoints(run_id="r1", limit=10, offset=0, now=at(100))
    assert names(after.items) == ["long", "keep"] and after.total_count == 2
    assert catalog.storage_usage("alice", at(100)) == (2, 14)
    assert catalog.storage_usage("alice", at(50)) == (3, 17)
    assert catalog.get_checkpoint("r1", W, "short") is not None  # expired or not
    assert catalog.latest_checkpoint("r1", W, at(2000)).name == "keep"  # type: ignore[union-attr]
    assert catalog.latest_checkpoint("r1", W, at(50)).name == "long"  # type: ignore[union-attr]
    assert catalog.latest_checkpoint("r1", S, at(50)) is None


def test_public_only_listing(catalog: Catalog) -> None:
    for i in range(4):
        save(catalog, "r1", f"c{i}", now=at(i))
    catalog.set_public("r1", W, "c1", True)
    catalog.set_public("r1", W, "c3", True)
    page = catalog.list_checkpoints(run_id="r1", limit=10, offset=0, now=at(9), public_only=True)
    assert names(page.items) == ["c3", "c1"] and page.total_count == 2
    assert all(c.public for c in page.items)


def test_totals_match_the_rows_after_random_operations(catalog: Catalog) -> None:
    rng = random.Random(7)
    live: set[tuple[str, CheckpointKind, str]] = set()
    for step in range(80):
        run, kind, name = rng.choice(["r1", "r2"]), rng.choice([W, S, X]), f"n{rng.randrange(12)}"
        now = at(step)
        op = rng.random()
        if op < 0.55:
            exp = rng.choice([None, at(step + rng.randrange(1, 60))])
            try:
                save(
                    catalog,
                    run,
                    name,
                    kind=kind,
                    overwrite=rng.random() < 0.5,
                    now=now,
                    expires_at=exp,
                )
            except AlreadyExists:
                pass
        elif op < 0.7 and (run, kind, name) in live:
            catalog.delete_checkpoint(run, kind, name, now=now)
        elif op < 0.85 and (run, kind, name) in live:
            catalog.set_expiry(run, kind, name, rng.choice([None, at(step + 5), at(step - 1)]))
        else:
            for c in catalog.expired_checkpoints(now, limit=3):
                catalog.delete_if_expired(c.run_id, c.kind, c.name, now)
        live = {(c.run_id, c.kind, c.name) for c in _all(catalog, now)}
        if step % 16 == 0:
            _check_totals(catalog, now)
    _check_totals(catalog, at(200))


def _all(cat: Catalog, now: datetime) -> list[CheckpointRecord]:
    return cat.list_checkpoints(owner_id="alice", limit=10_000, offset=0, now=now).items + [
        c for c in cat.expired_checkpoints(now, limit=10_000)
    ]


def _check_totals(cat: Catalog, now: datetime) -> None:
    for scope in ({"owner_id": "alice"}, {"run_id": "r1"}, {"run_id": "r2"}):
        for kinds in (None, [W], [S, X]):
            page = cat.list_checkpoints(limit=1000, offset=0, now=now, kinds=kinds, **scope)  # type: ignore[arg-type]
            assert page.total_count == len(page.items), (scope, kinds)
            assert all(c.expires_at is None or c.expires_at > now for c in page.items)
    visible = cat.list_checkpoints(owner_id="alice", limit=1000, offset=0, now=now).items
    assert cat.storage_usage("alice", now) == (len(visible), sum(c.size_bytes for c in visible))


# -- deletes, expiry -------------------------------------------------------------------------------
def test_delete_checkpoint(catalog: Catalog) -> None:
    ckpt = save(catalog, "r1", "c1")
    assert catalog.delete_checkpoint("r1", W, "c1", now=T0) == ckpt
    assert catalog.get_checkpoint("r1", W, "c1") is None
    assert state_of(catalog, ckpt.version_id) is VersionState.SUPERSEDED
    assert catalog.list_checkpoints(run_id="r1", limit=5, offset=0, now=T0).total_count == 0
    calls: list[Callable[[], object]] = [
        lambda: catalog.delete_checkpoint("r1", W, "c1", now=T0),
        lambda: catalog.set_public("r1", W, "c1", True),
        lambda: catalog.set_expiry("r1", W, "c1", None),
    ]
    for call in calls:
        with pytest.raises(CheckpointNotFound):
            call()
    save(catalog, "r1", "c1")  # the name is free again


def test_set_public_and_expiry(catalog: Catalog) -> None:
    save(catalog, "r1", "c1")
    assert catalog.set_public("r1", W, "c1", True).public is True
    assert catalog.set_expiry("r1", W, "c1", at(10)).expires_at == at(10)
    ckpt = catalog.get_checkpoint("r1", W, "c1")
    assert ckpt is not None and ckpt.public and ckpt.expires_at == at(10)
    assert catalog.set_expiry("r1", W, "c1", None).expires_at is None


def test_expired_checkpoints_and_delete_if_expired(catalog: Catalog) -> None:
    save(catalog, "r1", "late", expires_at=at(300))
    save(catalog, "r1", "early", expires_at=at(100))
    save(catalog, "r1", "never")
    assert catalog.expired_checkpoints(at(99), limit=10) == []
    assert names(catalog.expired_checkpoints(at(400), limit=10)) == ["early", "late"]
    assert names(catalog.expired_checkpoints(at(400), limit=1)) == ["early"]
    assert names(catalog.expired_checkpoints(at(100), limit=10)) == ["early"]  # at == expired
    assert catalog.delete_if_expired("r1", W, "late", at(200)) is False  # not yet
    assert catalog.delete_if_expired("r1", W, "never", at(10**6)) is False
    assert catalog.delete_if_expired("r1", W, "missing", at(200)) is False
    assert catalog.delete_if_expired("r1", W, "early", at(200)) is True
    assert catalog.delete_if_expired("r1", W, "early", at(200)) is False
    assert catalog.get_checkpoint("r1", W, "early") is None


def test_cleared_ttl_is_never_deleted(catalog: Catalog) -> None:
    save(catalog, "r1", "c1", expires_at=at(100))
    assert names(catalog.expired_checkpoints(at(200), limit=5)) == ["c1"]
    catalog.set_expiry("r1", W, "c1", None)  # the owner cleared it before the sweeper came
    assert catalog.delete_if_expired("r1", W, "c1", at(200)) is False
    assert catalog.get_checkpoint("r1", W, "c1") is not None


def test_delete_if_expired_race_deletes_exactly_once(db: CatalogDB) -> None:
    setup = db.open()
    save(setup, "r1", "c1", expires_at=at(10))
    outcomes = race(db, 6, lambda cat, i: cat.delete_if_expired("r1", W, "c1", at(20)))
    assert outcomes.count(True) == 1
    assert setup.list_checkpoints(owner_id="alice", limit=5, offset=0, now=T0).total_count == 0


# -- the sweeper's view ----------------------------------------------------------------------------
def test_fail_stale_pending(catalog: Catalog) -> None:
    stale = begin(catalog, "r1", "a", now=at(0))
    fresh = begin(catalog, "r1", "b", now=at(100))
    done = save(catalog, "r1", "c", now=at(0))
    failed = catalog.fail_stale_pending(at(50), at(200))
    assert [v.version_id for v in failed] == [stale.version_id]
    assert failed[0].state is VersionState.FAILED and failed[0].error
    assert state_of(catalog, fresh.version_id) is VersionState.PENDING
    assert state_of(catalog, done.version_id) is VersionState.COMPLETED
    assert catalog.fail_stale_pending(at(50), at(200)) == []
    with pytest.raises(NotFound):
        commit(catalog, stale)  # the save lost its race with the sweeper


def test_garbage_versions_and_forget(catalog: Catalog) -> None:
    failed = begin(catalog, "r1", "a", now=at(0))
    catalog.fail_version(failed.version_id, "boom", at(1))
    old = save(catalog, "r1", "b", now=at(2))
    save(catalog, "r1", "b", overwrite=True, now=at(3))  # supersedes old
    deleted = save(catalog, "r1", "c", now=at(4))
    catalog.delete_checkpoint("r1", W, "c", now=at(4))
    live = save(catalog, "r1", "d", now=at(5))
    pending = begin(catalog, "r1", "e", now=at(6))
    garbage = catalog.garbage_versions(at(100), limit=10)
    assert [v.version_id for v in garbage] == [
        failed.version_id,
        old.version_id,
        deleted.version_id,
    ]
    assert [v.version_id for v in catalog.garbage_versions(at(100), limit=2)] == [
        failed.version_id,
        old.version_id,
    ]
    # By when each became garbage (inclusive): failed at 1, old superseded at 3.
    assert [v.version_id for v in catalog.garbage_versions(at(2.5), limit=10)] == [
        failed.version_id
    ]
    assert [v.version_id for v in catalog.garbage_versions(at(3), limit=10)] == [
        failed.version_id,
        old.version_id,
    ]
    prefixes = catalog.live_blob_prefixes()
    assert live.blob_prefix in prefixes and pending.blob_prefix in prefixes
    assert not {v.blob_prefix for v in garbage} & prefixes
    catalog.forget_versions([failed.version_id, old.version_id, live.version_id, "nope"])
    assert catalog.get_version(failed.version_id) is None
    assert catalog.get_version(live.version_id) is not None  # a live row is never forgotten
    assert [v.version_id for v in catalog.garbage_versions(at(100), limit=10)] == [
        deleted.version_id
    ]


def test_grace_counts_from_when_a_version_became_garbage(catalog: Catalog) -> None:
    # Every way a version stops being live, each a day after the version was created, all at
    # ``dead``: none may be due before ``dead + grace`` (the sweeper asks for
    # ``garbage_versions(sweep_time - grace)``), and all are due from then on.
    grace, eps = timedelta(minutes=15), timedelta(microseconds=1)
    dead = at(86_400)
    overwritten = save(catalog, "r1", "overwritten", now=T0)
    replacement = save(catalog, "r1", "overwritten", overwrite=True, now=dead)
    deleted = save(catalog, "r1", "deleted", now=T0)
    catalog.delete_checkpoint("r1", W, "deleted", now=dead)
    expired = save(catalog, "r1", "expired", now=T0, expires_at=at(60))
    assert catalog.delete_if_expired("r1", W, "expired", dead)
    failed = begin(catalog, "r1", "failed", now=T0)
    catalog.fail_version(failed.version_id, "boom", dead)
    winner = begin(catalog, "r1", "taken", now=T0)
    loser = begin(catalog, "r1", "taken", now=T0)
    commit(catalog, winner, now=T0)
    with pytest.raises(AlreadyExists):
        commit(catalog, loser, now=dead)  # the name taken by a concurrent save
    stale = begin(catalog, "r1", "stale", now=T0)
    assert [v.version_id for v in catalog.fail_stale_pending(at(60), dead)] == [stale.version_id]
    garbage = [overwritten.version_id, deleted.version_id, expired.version_id]
    garbage += [failed.version_id, loser.version_id, stale.version_id]
    for vid in garbage:
        version = catalog.get_version(vid)
        assert version is not None and version.garbage_since == dead, vid
    for vid in (replacement.version_id, winner.version_id):
        version = catalog.get_version(vid)
        assert version is not None and version.garbage_since is None, vid

    def due(sweep_at: datetime) -> list[str]:
        return [v.version_id for v in catalog.garbage_versions(sweep_at - grace, limit=100)]

    assert due(dead) == []
    assert due(dead + grace - eps) == []
    assert sorted(due(dead + grace)) == sorted(garbage)  # inclusive: grace 0 takes them at once
    assert sorted(due(dead + grace + eps)) == sorted(garbage)
    # Longest-dead first, whatever the creation order: created last, deleted first.
    early = save(catalog, "r1", "early", now=at(43_200))
    catalog.delete_checkpoint("r1", W, "early", now=dead - timedelta(seconds=1))
    assert due(dead + grace - eps) == [early.version_id]
    assert due(dead + grace + eps)[0] == early.version_id


# -- sessions, samplers, futures, audit ------------------------------------------------------------
def test_sessions(catalog: Catalog) -> None:
    session = catalog.create_session(
        SessionRecord(
            "s1",
            "alice",
            T0,
            T0,
            sdk_version="0.38.0",
            tags=("a", "b"),
            user_metadata={"k": "v"},
            model_seq_ids=(0, 1),
        )
    )
    assert catalog.get_session("s1") == session
    assert session.tags == ("a", "b") and session.model_seq_ids == (0, 1)
    with pytest.raises(AlreadyExists):
        catalog.create_session(SessionRecord("s1", "bob", T0, T0))
    catalog.heartbeat_session("s1", at(30))
    assert catalog.get_session("s1").last_heartbeat == at(30)  # type: ignore[union-attr]
    assert catalog.finish_session("s1", "user_closed", at(40)).finished_reason == "user_closed"
    assert catalog.finish_session("s1", "timeout", at(50)).finished_reason == "user_closed"
    assert catalog.get_session("nope") is None
    for call in (
        lambda: catalog.heartbeat_session("nope", T0),
        lambda: catalog.finish_session("nope", "x", T0),
    ):
        with pytest.raises(SessionNotFound):
            call()


def test_samplers_are_idempotent(catalog: Catalog) -> None:
    first = catalog.create_sampler(
        SamplerRecord("sm1", "alice", "s1", "base", "tinker://r/x/y", T0)
    )
    again = catalog.create_sampler(SamplerRecord("sm1", "alice", "s1", "other", None, at(5)))
    assert again == first == catalog.get_sampler("sm1")
    assert catalog.get_sampler("sm2") is None


def _future(request_id: str, model_id: str | None = "m1", seq_id: int | None = 1) -> FutureRecord:
    return FutureRecord(
        request_id, "alice", model_id, seq_id, "SaveWeights", FutureState.PENDING, T0
    )


def test_futures_dedupe_and_finish(catalog: Catalog) -> None:
    f1, created = catalog.create_future(_future("q1"))
    assert created and f1.state is FutureState.PENDING and f1.result is None
    dup, created = catalog.create_future(_future("q2"))  # a retry: same (model, seq)
    assert not created and dup == f1
    same, created = catalog.create_future(_future("q1", seq_id=2))
    assert not created and same == f1
    assert catalog.create_future(_future("q3", seq_id=2))[1]
    assert catalog.create_future(_future("q4", seq_id=None))[1]
    assert catalog.create_future(_future("q5", seq_id=None))[1]  # no seq_id: no dedupe
    assert catalog.create_future(_future("q6", model_id=None))[1]
    assert catalog.get_future("q2") is None

    payload = b'{"path": "tinker://r/weights/c"}\x00\xff'
    catalog.finish_future("q1", FutureState.DONE, payload, "application/x-protobuf", at(3))
    done = catalog.get_future("q1")
    assert done is not None and done.state is FutureState.DONE and done.result == payload
    assert done.content_type == "application/x-protobuf" and done.finished_at == at(3)
    catalog.finish_future("q1", FutureState.FAILED, b"late", "application/json", at(4))
    assert catalog.get_future("q1") == done  # the first outcome wins
    with pytest.raises(FutureNotFound):
        catalog.finish_future("nope", FutureState.DONE, b"", "application/json", T0)
    assert catalog.fail_pending_futures(b'{"error": "restarted"}', at(9)) == 4
    failed = catalog.get_future("q3")
    assert failed is not None and failed.state is FutureState.FAILED
    assert failed.result == b'{"error": "restarted"}' and failed.finished_at == at(9)
    assert catalog.fail_pending_futures(b"{}", at(10)) == 0


def test_future_race_creates_one(db: CatalogDB) -> None:
    results = race(db, 6, lambda cat, i: cat.create_future(_future(f"q{i}", "m9", 7)))
    assert [created for _, created in results].count(True) == 1
    assert len({f.request_id for f, _ in results}) == 1


def test_audit_window_newest_first(catalog: Catalog) -> None:
    for i in range(5):
        catalog.add_audit(
            "alice", "checkpoint_saved", at(i * 10), tinker_path=f"tinker://r/weights/{i}"
        )
    catalog.add_audit("alice", "checkpoint_deleted", at(20), model_id="m1", details={"size": "3"})
    catalog.add_audit("bob", "checkpoint_saved", at(20))
    rows = catalog.list_audit("alice", since=at(10), until=at(40), limit=10)
    assert [(r.timestamp, r.event) for r in rows] == [
        (at(30), "checkpoint_saved"),
        (at(20), "checkpoint_deleted"),
        (at(20), "checkpoint_saved"),
        (at(10), "checkpoint_saved"),
    ]
    assert rows[1].details == {"size": "3"} and rows[1].model_id == "m1"
    assert rows[0].tinker_path == "tinker://r/weights/3" and rows[0].details == {}
    assert len(catalog.list_audit("alice", since=None, until=None, limit=3)) == 3
    assert len(catalog.list_audit("alice", since=None, until=None, limit=100)) == 6
    assert catalog.list_audit("carol", since=None, until=None, limit=10) == []


# -- time ------------------------------------------------------------------------------------------
def test_times_come_back_aware_utc(catalog: Catalog) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2025, 3, 1, 14, 0, tzinfo=plus2)
    user = catalog.create_user("alice", local)
    assert user.created_at == local and user.created_at.utcoffset() == timedelta(0)
    ckpt = save(catalog, "r1", "c1", now=local, expires_at=local + timedelta(hours=1))
    assert ckpt.created_at.tzinfo is not None and ckpt.created_at.utcoffset() == timedelta(0)
    got = catalog.get_checkpoint("r1", W, "c1")
    assert (
        got is not None and got.created_at == local and got.expires_at == local + timedelta(hours=1)
    )
    with pytest.raises(ValueError, match="naive"):
        catalog.create_user("bob", datetime(2025, 1, 1))


# -- SQL only: concurrency, plans, migrations ------------------------------------------------------
def test_concurrent_writers_never_see_locked(sql_db: CatalogDB) -> None:
    shared = sql_db.open()

    def work(cat: Catalog, i: int) -> int:
        handle = shared if i % 2 else cat  # threads on one handle and on their own handles
        for j in range(8):
            handle.create_future(_future(f"q{i}-{j}", f"m{i}", j))
            handle.finish_future(f"q{i}-{j}", FutureState.DONE, b"{}", "application/json", T0)
            handle.add_audit("alice", "e", at(j))
            if j % 4 == 0:
                save(handle, f"r{i}", f"c{j}", now=at(j))
            handle.list_checkpoints(owner_id="alice", limit=5, offset=0, now=T0)
        return i

    assert race(sql_db, 6, work) == list(range(6))
    page = shared.list_checkpoints(owner_id="alice", limit=100, offset=0, now=T0)
    assert page.total_count == len(page.items) == 12


def test_list_checkpoints_uses_the_indexes(sql_db: CatalogDB) -> None:
    """Plans, not timings: every query of a page is an index range scan, none sorts."""
    if sql_db.kind != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL plans depend on statistics")
    cat = sql_db.open()
    assert isinstance(cat, SqlCatalog)
    for i in range(12):
        save(cat, f"r{i % 3}", f"c{i}", kind=[W, S][i % 2], expires_at=at(i) if i % 5 else None)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.startswith("SELECT") and "FROM checkpoints" in statement:
            statements.append((statement, params))

    event.listen(cat.read_engine, "before_cursor_execute", capture)
    for scope in ({"owner_id": "alice"}, {"run_id": "r1"}):
        for kinds in (None, [W], [W, S]):
            statements.clear()
            cat.list_checkpoints(limit=100, offset=0, now=at(12), kinds=kinds, **scope)  # type: ignore[arg-type]
            assert len(statements) == 2  # the page, and its total in one statement
            column = "owner_id" if "owner_id" in scope else "run_id"
            with cat.read_engine.connect() as conn:
                for statement, params in statements:
                    explain = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                    plan = [row[-1] for row in explain]
                    assert not any("TEMP B-TREE" in step for step in plan), plan
                    on_checkpoints = [step for step in plan if " checkpoints " in step]
                    assert on_checkpoints, plan
                    for step in on_checkpoints:
                        # A range inside one owner/run on the seq or expiry index, never a SCAN.
                        assert step.startswith("SEARCH checkpoints USING"), plan
                        assert f"({column}=? AND " in step, plan
                        assert "_seq " in step or "_expires " in step, plan
    event.remove(cat.read_engine, "before_cursor_execute", capture)


def test_migrate_refuses_a_newer_schema(sql_db: CatalogDB) -> None:
    cat = sql_db.open()
    assert isinstance(cat, SqlCatalog)
    with cat._write() as conn:
        conn.execute(
            insert(schema_version).values(version=999, description="future", applied_at=T0)
        )
    with pytest.raises(TinkerstoreError, match="newer"):
        cat.migrate()


def test_unmigrated_database_says_what_to_do(sql_db: CatalogDB) -> None:
    cat = sql_db.open(migrate=False)
    with pytest.raises(TinkerstoreError, match="migrated"):
        cat.get_run("r1")


# -- URLs ------------------------------------------------------------------------------------------
def test_open_catalog_urls(tmp_path: Any) -> None:
    assert isinstance(open_catalog("memory://"), MemoryCatalog)
    assert sqlalchemy_url("postgresql://u:pw@h:5/db") == "postgresql+psycopg://u:pw@h:5/db"
    assert sqlalchemy_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert sqlalchemy_url("postgresql+psycopg://h/db") == "postgresql+psycopg://h/db"
    mem = open_catalog("sqlite://")
    mem.migrate()
    make_run(mem, "r1")
    assert mem.get_run("r1") is not None
    mem.close()
    with pytest.raises(InvalidInput) as info:
        open_catalog("mysql://root:hunter2@db/x")
    assert "hunter2" not in str(info.value)
